"""Property tests of the MIME walker (hypothesis): random bytes, mutated real messages and mutated
archives inside them, cut anywhere. The walker returns a report or raises MimeError, nothing else;
it never fails inside (a MimeError chained to a cause is a bug of ours); and however the input is
cut, the report is the same."""

from __future__ import annotations

import base64
import gzip

from builders import tar_of, zip_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtaserver.filters.mime import (
    MAX_PROBLEMS,
    AttachmentLimits,
    MimeError,
    MimeReport,
    MimeWalker,
)

LIMITS = AttachmentLimits(max_depth=3, max_entries=200, max_expanded=4 << 20, max_archive_bytes=1 << 20,
                          max_header_bytes=4096, max_nesting=20, max_parts=200, max_line=512)  # fmt: skip


ARCHIVES = [
    zip_of({"a.exe": b"MZ" * 20, "dir/b.txt": b"text"}),
    zip_of({"inner.zip": zip_of({"deep.js": b"x"})}),
    tar_of({"x.scr": b"payload" * 10, "y.zip": zip_of({"z.bat": b"@"})}, "w:gz"),
    gzip.compress(b"MZ one file"),
]


def attachment(name: bytes, data: bytes) -> bytes:
    return (b"Content-Type: application/octet-stream; name=\"" + name + b"\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(data).replace(b"\n", b"\r\n"))  # fmt: skip


def message(parts: list[bytes], boundary: bytes = b"b0") -> bytes:
    out = b"From: a@client.test\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"" + boundary + b"\"\r\n\r\n"
    for p in parts:
        out += b"--" + boundary + b"\r\n" + p + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


FORWARDED = message([b"Content-Type: text/plain\r\n\r\nsee below\r\n", attachment(b"r.zip", ARCHIVES[0])], b"in")
SEEDS = [
    message([b"Content-Type: text/plain\r\n\r\nhello\r\n", attachment(b"r.zip", ARCHIVES[0])]),
    message([b"Content-Type: message/rfc822\r\n\r\n" + FORWARDED, attachment(b"t.tgz", ARCHIVES[2])]),
    message([b"Content-Disposition: attachment;\r\n filename*0*=utf-8''%E2%82%AC%20ra;\r\n filename*1=tes.exe\r\n\r\nx\r\n",
             b"Content-Type: text/plain; name=\"=?utf-8?B?ZXZpbC5leGU=?=\"\r\n\r\ny\r\n",
             b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nFrom: x\r\n\r\nz\r\n--d--\r\n"]),
    message([attachment(b"n.zip", ARCHIVES[1]), attachment(b"g.gz", ARCHIVES[3])]),
]  # fmt: skip
TOKENS = [
    b"--b0\r\n", b"--b0--\r\n", b"--in\r\n", b"\r\n\r\n", b"\n", b"\r", b"Content-Type: multipart/mixed; boundary=b0\r\n",
    b"Content-Type: message/rfc822\r\n\r\n", b"Content-Transfer-Encoding: base64\r\n",
    b"Content-Transfer-Encoding: quoted-printable\r\n", b"=?utf-8?B?", b"?=", b"filename*0*=", b"name=\"a.zip\"",
    b"PK\x03\x04", b"\x1f\x8b\x08", b"=", b"\x00", b"\xff", b" " * 600, b"boundary*0*=utf-8''",
]  # fmt: skip


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "delete", "insert", "duplicate", "truncate"]))
        if op == "flip" and pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 64))]
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(TOKENS) | st.binary(max_size=16))
        elif op == "duplicate":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 200))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


@st.composite
def with_mutated_archive(draw) -> bytes:
    archive = draw(mutated(ARCHIVES))
    name = draw(st.sampled_from([b"a.zip", b"a.tgz", b"a.gz", b"a.tar", b"plain.bin"]))
    return message([b"Content-Type: text/plain\r\n\r\nhi\r\n", attachment(name, archive)])


def run(data: bytes, cuts: list[int]) -> MimeReport | MimeError:
    w = MimeWalker(LIMITS)
    try:
        last = 0
        for c in sorted({c % (len(data) + 1) for c in cuts}) + [len(data)]:
            w.feed(data[last:c])
            last = c
        return w.close()
    except MimeError as exc:
        return exc


def check(data: bytes, cuts: list[int]) -> None:
    whole = run(data, [])
    if isinstance(whole, MimeError):
        assert whole.__cause__ is None, f"walker failed inside: {whole.__cause__!r}"
        return
    assert len(whole.problems) <= MAX_PROBLEMS
    assert all(isinstance(f.name, str) and f.path.endswith(f.name) for f in whole.names)
    assert run(data, cuts) == whole


CUTS = st.lists(st.integers(min_value=0, max_value=20_000), max_size=12)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=3000), CUTS)
def test_random_bytes(data, cuts):
    check(data, cuts)


@FUZZ
@given(mutated(SEEDS), CUTS)
def test_mutated_messages(data, cuts):
    check(data, cuts)


@FUZZ
@given(with_mutated_archive(), CUTS)
def test_mutated_archives(data, cuts):
    check(data, cuts)
