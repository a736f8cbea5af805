"""logutil.sanitize shows UTF-8 as UTF-8 and escapes only what could forge or hide log text
(controls, format characters, separators, backslashes, bytes that are not UTF-8);
sanitize_ascii, for the wire, escapes every non-ASCII byte."""

from __future__ import annotations

import logging
import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from mtaserver.logutil import LineFormatter, sanitize, sanitize_ascii


def test_utf8_stays_readable():
    assert sanitize("jos\u00e9@b\u00fccher.example") == "jos\u00e9@b\u00fccher.example"
    assert sanitize("\u4f8b\u3048@\u4f8b\u3048.\u30c6\u30b9\u30c8".encode()) == "\u4f8b\u3048@\u4f8b\u3048.\u30c6\u30b9\u30c8"
    assert sanitize("caf\u00e9 \U0001f600") == "caf\u00e9 \U0001f600"


def test_what_could_forge_or_hide_text_is_escaped():
    assert sanitize("a\r\nb\tc\x00d\\e\x7f") == "a\\r\\nb\\tc\\x00d\\\\e\\x7f"
    assert sanitize("\u202eexe.txt") == "\\xe2\\x80\\xaeexe.txt"  # bidi override
    assert sanitize("a\u200bb\u2028c\u00a0d\x85e") == "a\\xe2\\x80\\x8bb\\xe2\\x80\\xa8c\\xc2\\xa0d\\xc2\\x85e"
    assert sanitize(b"caf\xc3\xa9 \xff\xc3") == "caf\u00e9 \\xff\\xc3"  # bytes that are not UTF-8


def test_the_limit_never_splits_a_character():
    assert sanitize("\u00e9" * 150, 200) == "\u00e9" * 100 + "..."
    assert sanitize("x" + "\u00e9" * 150, 200) == "x" + "\u00e9" * 99 + "..."
    assert sanitize("x" * 199 + "\u20ac", 200) == "x" * 199 + "..."
    assert sanitize("x" * 300) == "x" * 200 + "..."


def test_ascii_for_the_wire():
    assert sanitize_ascii("jos\u00e9\r\n") == "jos\\xc3\\xa9\\r\\n"
    assert sanitize_ascii("x" * 300, 10) == "x" * 10 + "..."


def test_a_log_line_shows_the_utf8_address():
    rec = logging.LogRecord("smtpd", logging.INFO, "", 0, "%s: from=<%s>", ("4ZxQ", sanitize("j\u00f6rg@\u00e9x.test\n")), None)
    assert LineFormatter("mtaserver").format(rec).endswith("mtaserver/smtpd[%d]: 4ZxQ: from=<j\u00f6rg@\u00e9x.test\\n>" % __import__("os").getpid())


_BAD = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


@given(st.one_of(st.binary(max_size=400), st.text(max_size=300)), st.integers(min_value=1, max_value=300))
def test_sanitized_text_is_one_safe_line(data, limit):
    out = sanitize(data, limit)
    assert all(unicodedata.category(c) not in _BAD and c not in "\r\n" for c in out), out
    assert len(out.encode("utf-8")) <= 4 * limit + 3  # each input byte at most \xNN
    wire = sanitize_ascii(data, limit)
    assert wire.isascii() and wire.isprintable()
