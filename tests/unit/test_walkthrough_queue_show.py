"""`mtaserver queue show`: a folded header reads as folded (postcat shows the tab as an indent).

Found by walking README.md: the Received: header's continuation lines printed as "\\tby ...".
Control characters inside a line stay escaped.
"""

from __future__ import annotations

from mtaserver.queue.ops import format_show


def _show(headers: list[str]) -> list[str]:
    m = {"queue_id": "1K1KPKAB1N005GZ04", "queue_name": "deferred", "arrival_time": 0, "message_size": 443,
         "envelope": {"sender": "you@example.test", "client": {"ip": "127.0.0.1"}}, "recipients": [], "headers": headers}
    out = format_show(m).splitlines()
    return out[out.index("headers:") + 1:]


def test_a_folded_header_shows_its_indent_and_escapes_what_is_inside():
    assert _show(["Received: from vm (localhost [127.0.0.1])", "\tby mail.example.test (mtaserver)", "    for <a@b>;",
                  "Subject: a\tb\x1b[2J"]) == [
        "  Received: from vm (localhost [127.0.0.1])",
        "          by mail.example.test (mtaserver)",
        "      for <a@b>;",
        "  Subject: a\\tb\\x1b[2J",
    ]  # fmt: skip


def test_a_long_indent_is_shown_escaped_past_its_first_characters():
    [line] = _show(["\t" * 20 + "x"])
    assert line == "  " + " " * 64 + "\\t" * 12 + "x"
