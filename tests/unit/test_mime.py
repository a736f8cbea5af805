"""The MIME walker (mtaserver/filters/mime.py): file names in every encoding, forwarded messages,
archives and archives inside them, the bounds (zip bombs, depth, entries, sizes, MIME limits), and
the same report however the message is cut into chunks."""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import random
import struct
import zipfile

import builders
import pytest
from builders import b64, encrypted_flag, tar_of, zip_of

from mtaserver.filters.mime import (
    AttachmentLimits,
    FoundName,
    MimeError,
    MimeReport,
    MimeWalker,
)

# ---------------------------------------------------------------------------------------------
# Builders (CRLF messages; `lf` turns them into LF ones)


def part(headers: list[str] | list[bytes], body: bytes = b"hello\r\n") -> bytes:
    head = b"".join((h if isinstance(h, bytes) else h.encode()) + b"\r\n" for h in headers)
    return head + b"\r\n" + body


def attachment(filename: str, data: bytes, ctype: str = "application/octet-stream") -> bytes:
    return part([f"Content-Type: {ctype}", f'Content-Disposition: attachment; filename="{filename}"',
                 "Content-Transfer-Encoding: base64"], b64(data))  # fmt: skip


def multipart(parts: list[bytes], boundary: str = "b0", subtype: str = "mixed", headers: list[str] | None = None) -> bytes:
    out = "".join(h + "\r\n" for h in (headers or ["From: a@client.test", "To: r@example.test", "Subject: s",
                                                   "MIME-Version: 1.0"]))  # fmt: skip
    out += f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\nThis is a multipart message.\r\n'
    data = out.encode()
    for p in parts:
        data += f"--{boundary}\r\n".encode() + p + b"\r\n"
    return data + f"--{boundary}--\r\n".encode()


def forwarded(inner: bytes, cte: str | None = None) -> bytes:
    headers = ["Content-Type: message/rfc822", "Content-Disposition: inline"]
    if cte == "base64":
        return part([*headers, "Content-Transfer-Encoding: base64"], b64(inner))
    return part(headers, inner)


def walk(data: bytes, limits: AttachmentLimits | None = None, chunk: int = 0) -> MimeReport:
    w = MimeWalker(limits)
    if chunk:
        for i in range(0, len(data), chunk):
            w.feed(data[i : i + chunk])
    else:
        w.feed(data)
    return w.close()


def names(report: MimeReport) -> list[str]:
    return [f.name for f in report.names]


def paths(report: MimeReport) -> list[str]:
    return [f.path for f in report.names]


def lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


# ---------------------------------------------------------------------------------------------
# Names in every encoding


def test_plain_filename_and_name():
    r = walk(multipart([part(["Content-Type: text/plain"]),
                        part(['Content-Type: application/x-msdownload; name="setup.exe"',
                              'Content-Disposition: attachment; filename="Setup.EXE"'], b"MZ\r\n")]))  # fmt: skip
    assert [(f.name, f.source) for f in r.names] == [("setup.exe", "name"), ("Setup.EXE", "filename")]
    assert r.problems == [] and r.encrypted == [] and r.parts == 3


def test_rfc2231_continuations_and_charset():
    r = walk(multipart([part(["Content-Type: application/octet-stream",
                              "Content-Disposition: attachment;",
                              " filename*0*=utf-8''%E2%82%AC%20ra;",
                              " filename*1*=tes.e;",
                              " filename*2=xe"])]))  # fmt: skip
    assert "\u20ac rates.exe" in names(r)


def test_rfc2231_latin1_name_in_content_type():
    r = walk(multipart([part(["Content-Type: application/octet-stream; name*=iso-8859-1'fr'f%E9vrier.scr"])]))
    assert "f\xe9vrier.scr" in names(r)
    assert all(f.source == "name" for f in r.names)


def test_rfc2047_base64_word_raw_and_decoded():
    r = walk(multipart([part(['Content-Type: application/octet-stream; name="=?utf-8?B?ZXZpbC5leGU=?="'])]))
    assert names(r) == ["evil.exe", "=?utf-8?B?ZXZpbC5leGU=?="]  # decoded first, then the raw form


def test_rfc2047_quoted_printable_word():
    r = walk(multipart([part(['Content-Disposition: attachment; filename="=?iso-8859-1?Q?f=E9vrier_2026.bat?="'])]))
    assert "f\xe9vrier 2026.bat" in names(r)


def test_rfc2047_unquoted_word_decoded_from_the_raw_value():
    """policy.default gives up on an unquoted encoded word; the raw value is decoded instead."""
    r = walk(multipart([part(["Content-Type: text/plain; name==?utf-8?B?ZXZpbC5leGU=?="])]))
    assert "evil.exe" in names(r)


def test_raw_utf8_filename():
    r = walk(multipart([part(['Content-Disposition: attachment; filename="caf\xc3\xa9.exe"'.encode("latin-1")])]))
    assert "caf\xe9.exe" in names(r)


def test_every_content_header_counts_and_a_garbage_line_hides_nothing():
    r = walk(multipart([part(["Content-Type: text/plain", "this line is not a header",
                              'Content-Disposition: attachment; filename="first.txt"',
                              'Content-Disposition: attachment; filename="second.js"'])]))  # fmt: skip
    assert names(r) == ["first.txt", "second.js"]


def test_single_part_message_with_a_name():
    msg = (b'From: a@b\r\nContent-Type: application/octet-stream; name="x.vbs"\r\n'
           b"Content-Transfer-Encoding: base64\r\n\r\nQUJD\r\n")
    assert names(walk(msg)) == ["x.vbs"]


def test_lf_only_lines_give_the_same_names():
    msg = multipart([part(["Content-Disposition: attachment;", " filename*0*=utf-8''%E2%82%AC.e;", " filename*1=xe"]),
                     attachment("r.zip", zip_of({"in.exe": b"MZ"}))])  # fmt: skip
    assert walk(lf(msg)).names == walk(msg).names
    assert "in.exe" in names(walk(lf(msg)))


# ---------------------------------------------------------------------------------------------
# Structure


def test_forwarded_message_is_walked():
    inner = multipart([part(["Content-Type: text/plain"]), attachment("payload.exe", b"MZ")], boundary="inner")
    r = walk(multipart([part(["Content-Type: text/plain"]), forwarded(inner)], boundary="outer"))
    assert FoundName("payload.exe", "forwarded message > payload.exe", "filename") in r.names


def test_forwarded_message_inside_a_forwarded_message_base64():
    innermost = multipart([attachment("deep.cmd", b"@echo off")], boundary="c")
    middle = multipart([forwarded(innermost, cte="base64")], boundary="b")
    r = walk(multipart([forwarded(middle)], boundary="a"))
    assert "forwarded message > forwarded message > deep.cmd" in paths(r)


def test_digest_parts_default_to_message_rfc822():
    inner = b"From: x@y\r\nContent-Type: application/octet-stream; name=\"d.pif\"\r\n\r\nxx\r\n"
    r = walk(multipart([b"\r\n" + inner], subtype="digest"))
    assert "forwarded message > d.pif" in paths(r)


def test_an_outer_boundary_closes_the_inner_multipart():
    inner_open = b'Content-Type: multipart/alternative; boundary="in"\r\n\r\n--in\r\nContent-Type: text/plain\r\n\r\nx\r\n'
    msg = multipart([inner_open, part(['Content-Type: application/octet-stream; name="after.hta"'])])
    assert "after.hta" in names(walk(msg))


def test_a_part_after_the_close_delimiter_is_still_seen():
    msg = multipart([part(["Content-Type: text/plain"])]) + b"--b0\r\nContent-Type: text/plain; name=\"late.lnk\"\r\n\r\nx\r\n"
    assert "late.lnk" in names(walk(msg))


def test_a_boundary_padded_with_a_huge_run_of_blanks_is_a_boundary():
    msg = multipart([part(["Content-Type: text/plain"]), part(['Content-Type: text/plain; name="pad.exe"'])])
    tail = b"\r\nContent-Type: text/plain; name"
    padded = msg.replace(b"--b0" + tail, b"--b0" + b" " * 200_000 + tail)
    assert "pad.exe" in names(walk(padded, chunk=4096))


def test_a_base64_attachment_on_one_huge_line():
    data = zip_of({"one-line.exe": b"MZ" * 10})
    body = base64.b64encode(data + b"\x00" * 100_000) + b"\r\n"  # one line of ~133 KB
    msg = multipart([part(["Content-Type: application/zip", 'Content-Disposition: attachment; filename="l.zip"',
                           "Content-Transfer-Encoding: base64"], body)])  # fmt: skip
    r = walk(msg, chunk=8192)
    assert "one-line.exe" in names(r) or r.problems  # zip with trailing junk: listed or damaged, never missed
    assert "one-line.exe" in names(walk(multipart([attachment("l.zip", data)]), chunk=7))


def test_too_deep_multipart_nesting_stops_the_walk():
    msg = b"Content-Type: text/plain\r\n\r\n"
    for i in range(60):
        msg = f'Content-Type: multipart/mixed; boundary="n{i}"\r\n\r\n--n{i}\r\n'.encode() + msg + f"\r\n--n{i}--\r\n".encode()
    r = walk(msg)
    assert r.problems == ["MIME nesting too deep (over 50)"]


def test_too_many_parts():
    msg = multipart([part(["Content-Type: text/plain"]) for _ in range(30)])
    r = walk(msg, AttachmentLimits(max_parts=10))
    assert r.problems == ["too many MIME parts (over 10)"]
    assert r.parts == 11


def test_header_block_over_the_limit():
    big = part(["Content-Type: text/plain", "X-Junk: " + "j" * 5000, 'Content-Disposition: attachment; filename="h.exe"'])
    r = walk(multipart([big]), AttachmentLimits(max_header_bytes=1000))
    assert r.problems == ["MIME header over 1000 bytes"]


# ---------------------------------------------------------------------------------------------
# Archives


def test_zip_attachment_members():
    r = walk(multipart([attachment("report.zip", zip_of({"docs/a.txt": b"x", "b.exe": b"MZ"}))]))
    assert [(f.path, f.source) for f in r.names] == [("report.zip", "filename"), ("report.zip > docs/a.txt", "archive"),
                                                   ("report.zip > b.exe", "archive")]  # fmt: skip


def test_zip_inside_a_forwarded_message():
    inner = multipart([part(["Content-Type: text/plain"]), attachment("report.zip", zip_of({"a.exe": b"MZ"}))], boundary="in")
    r = walk(multipart([part(["Content-Type: text/plain"]), forwarded(inner)]))
    assert "forwarded message > report.zip > a.exe" in paths(r)


def test_zip_found_by_magic_under_an_innocent_name():
    r = walk(multipart([attachment("invoice.pdf", zip_of({"invoice.pdf.exe": b"MZ"}), "application/pdf")]))
    assert "invoice.pdf > invoice.pdf.exe" in paths(r)


def test_unnamed_zip_part():
    unnamed = part(["Content-Type: application/zip", "Content-Transfer-Encoding: base64"], b64(zip_of({"u.scr": b""})))
    r = walk(multipart([unnamed]))
    assert paths(r) == ["unnamed application/zip part > u.scr"]


def test_quoted_printable_and_8bit_archives():
    data = tar_of({"qp.exe": b"MZ\x00\xff"})
    import quopri

    qp = part(["Content-Type: application/x-tar; name=\"q.tar\"", "Content-Transfer-Encoding: quoted-printable"],
              quopri.encodestring(data).replace(b"\n", b"\r\n"))  # fmt: skip
    raw = part(["Content-Type: application/octet-stream; name=\"b.zip\"", "Content-Transfer-Encoding: binary"],
               zip_of({"bin.exe": b"MZ"}, zipfile.ZIP_STORED).replace(b"\r\n", b"\r\n"))  # fmt: skip
    r = walk(multipart([qp, raw]))
    assert "q.tar > qp.exe" in paths(r)
    assert "b.zip > bin.exe" in paths(r) or any("b.zip" in p for p in r.problems)


@pytest.mark.parametrize("mode,name", [("w", "t.tar"), ("w:gz", "t.tar.gz"), ("w:gz", "t.tgz"), ("w:bz2", "t.tar.bz2"),
                                       ("w:xz", "t.txz"), ("w:gz", "disguised.dat")])  # fmt: skip
def test_tar_archives(mode, name):
    r = walk(multipart([attachment(name, tar_of({"dir/x.exe": b"MZ", "y.txt": b"y"}, mode))]))
    assert paths(r) == [name, f"{name} > dir/x.exe", f"{name} > y.txt"]
    assert r.problems == []


def test_gzip_of_one_file_names_it():
    data = gzip.compress(b"MZ payload")  # no FNAME: the name without .gz
    assert "tool.exe.gz > tool.exe" in paths(walk(multipart([attachment("tool.exe.gz", data)])))
    buf = io.BytesIO()
    with gzip.GzipFile(filename="inner.scr", mode="wb", fileobj=buf) as g:
        g.write(b"x")
    assert "blob.gz > inner.scr" in paths(walk(multipart([attachment("blob.gz", buf.getvalue())])))


def test_zip_in_zip_in_tgz():
    inner = zip_of({"deep.exe": b"MZ"})
    middle = zip_of({"inner.zip": inner, "note.txt": b"n"})
    outer = tar_of({"middle.zip": middle}, "w:gz")
    r = walk(multipart([attachment("outer.tgz", outer)]))
    assert "outer.tgz > middle.zip > inner.zip > deep.exe" in paths(r)
    assert r.problems == []


def test_zip_in_gz_and_zip_found_by_magic_inside_an_archive():
    data = gzip.compress(zip_of({"z.exe": b"MZ"}))
    assert "a.zip.gz > a.zip > z.exe" in paths(walk(multipart([attachment("a.zip.gz", data)])))
    inside = zip_of({"renamed.dat": zip_of({"hidden.exe": b"MZ"})})
    assert "o.zip > renamed.dat > hidden.exe" in paths(walk(multipart([attachment("o.zip", inside)])))


def test_archive_too_deep():
    data = zip_of({"l4.exe": b"MZ"})
    for level in (3, 2, 1):
        data = zip_of({f"l{level}.zip": data})
    r = walk(multipart([attachment("l0.zip", data)]))
    assert "l0.zip > l1.zip > l2.zip > l3.zip" in paths(r)
    assert r.problems == ["archive too deep: l0.zip > l1.zip > l2.zip > l3.zip"]
    assert "l4.exe" not in names(r)
    assert not walk(multipart([attachment("l0.zip", data)]), AttachmentLimits(max_depth=4)).problems


def huge_declared(data: bytes, size: int) -> bytes:
    """The zip with its one member's declared (uncompressed) size changed in both headers."""
    out = bytearray(data)
    cd = out.find(b"PK\x01\x02")
    struct.pack_into("<I", out, cd + 24, size)
    struct.pack_into("<I", out, 22, size)  # the local header's
    return bytes(out)


def test_zip_bomb_by_declared_size():
    bomb = huge_declared(zip_of({"big.bin": b"0" * 1000}), 0xFFFF0000)
    r = walk(multipart([attachment("bomb.zip", bomb)]))
    assert r.problems == [f"zip bomb: bomb.zip expands to {0xFFFF0000} bytes"]
    assert "bomb.zip > big.bin" in paths(r)  # names are still listed, nothing is expanded


@pytest.fixture(scope="session")
def zeros_zip() -> bytes:
    """200 MB of zeros deflate to ~200 KB: built once per test session."""
    return builders.zeros_zip()


def test_zip_bomb_highly_compressible(zeros_zip):
    assert len(zeros_zip) < 1 << 20
    r = walk(multipart([attachment("zeros.zip", zeros_zip)]))
    assert r.problems == [f"zip bomb: zeros.zip expands to {200 << 20} bytes"]


def test_zip_bomb_nested_is_not_opened(zeros_zip):
    r = walk(multipart([attachment("outer.zip", zip_of({"zeros.zip": zeros_zip}))]))
    assert r.problems == [f"zip bomb: outer.zip > zeros.zip expands to {200 << 20} bytes"]


def test_compressed_tar_bomb_stops_at_the_budget():
    data = tar_of({"zeros.bin": bytes(3 << 20), "after.exe": b"MZ"}, "w:gz")
    r = walk(multipart([attachment("z.tgz", data)]), AttachmentLimits(max_expanded=1 << 20))
    assert r.problems == [f"zip bomb: z.tgz expands to {len(tar_of({'zeros.bin': bytes(3 << 20), 'after.exe': b'MZ'}))} bytes"]
    lying = bytearray(data)
    struct.pack_into("<I", lying, len(lying) - 4, 100)  # gzip's ISIZE says 100 bytes: decompressed as a stream, bounded
    r = walk(multipart([attachment("z.tgz", bytes(lying))]), AttachmentLimits(max_expanded=1 << 20))
    assert r.problems == [f"zip bomb: z.tgz expands to more than {1 << 20} bytes"]
    assert "z.tgz > after.exe" not in paths(r)
    bz = bz2.compress(tar_of({"zeros.bin": bytes(3 << 20)}))
    r = walk(multipart([attachment("z.tar.bz2", bz)]), AttachmentLimits(max_expanded=1 << 20))
    assert r.problems == [f"zip bomb: z.tar.bz2 expands to more than {1 << 20} bytes"]


def test_gzip_declaring_a_huge_size():
    data = gzip.compress(bytes(3 << 20))
    r = walk(multipart([attachment("g.gz", data)]), AttachmentLimits(max_expanded=1 << 20))
    assert r.problems == [f"zip bomb: g.gz expands to {3 << 20} bytes"]
    lying = bytearray(gzip.compress(b"x"))
    struct.pack_into("<I", lying, len(lying) - 4, 0xFFFFFFF0)  # more than deflate can reach from 21 bytes
    assert walk(multipart([attachment("g.gz", bytes(lying))])).problems == ["damaged archive: g.gz"]


def test_encrypted_zip_member():
    data = encrypted_flag(zip_of({"secret.doc": b"x" * 50}))
    r = walk(multipart([attachment("locked.zip", data)]))
    assert r.encrypted == ["locked.zip > secret.doc"]
    assert "locked.zip > secret.doc" in paths(r)
    assert r.problems == []
    inner = walk(multipart([attachment("o.zip", zip_of({"locked.zip": data}))]))
    assert inner.encrypted == ["o.zip > locked.zip > secret.doc"]


def test_too_many_archive_entries():
    data = zip_of({f"f{i}.txt": b"" for i in range(20)})
    r = walk(multipart([attachment("many.zip", data)]), AttachmentLimits(max_entries=10))
    assert r.problems == ["too many archive entries: many.zip"]
    two = walk(multipart([attachment("a.zip", zip_of({f"a{i}": b"" for i in range(6)})),
                          attachment("b.tar", tar_of({f"b{i}": b"" for i in range(6)}))]),
               AttachmentLimits(max_entries=10))  # fmt: skip
    assert two.problems == ["too many archive entries: b.tar"]  # counted across the message's archives


def test_archive_over_the_size_limit():
    data = zip_of({"big.bin": bytes(range(256)) * 400}, zipfile.ZIP_STORED)
    r = walk(multipart([attachment("big.zip", data)]), AttachmentLimits(max_archive_bytes=50_000))
    assert r.problems == ["archive over 50000 bytes not inspected: big.zip"]
    nested = zip_of({"inner.zip": data})  # deflated: the outer one is small, its member is not
    assert len(nested) < 50_000
    r = walk(multipart([attachment("n.zip", nested)]), AttachmentLimits(max_archive_bytes=50_000))
    assert r.problems == ["archive over 50000 bytes not inspected: n.zip > inner.zip"]


def test_damaged_archives():
    r = walk(multipart([attachment("broken.zip", b"this is not a zip file at all" * 30)]))
    assert r.problems == ["damaged archive: broken.zip"]
    cut = zip_of({"a.exe": b"MZ" * 1000})[:-30]
    assert walk(multipart([attachment("cut.zip", cut)])).problems == ["damaged archive: cut.zip"]
    bad_gz = gzip.compress(tar_of({"x": random.Random(1).randbytes(5000)}))[:2000]
    assert walk(multipart([attachment("t.tgz", bad_gz)])).problems == ["damaged archive: t.tgz"]


def test_plain_attachments_are_not_archives():
    r = walk(multipart([attachment("notes.txt", b"just text\r\n" * 1000), attachment("img.png", b"\x89PNG" + bytes(5000))]))
    assert names(r) == ["notes.txt", "img.png"]
    assert r.problems == []


# ---------------------------------------------------------------------------------------------
# Chunking and the interface


def small_message() -> bytes:
    inner = multipart([part(["Content-Type: text/plain"]), attachment("r.zip", zip_of({"a.exe": b"MZ"}))], boundary="in")
    return multipart([
        part(["Content-Type: text/plain"], b"Hi\r\n"),
        part(["Content-Disposition: attachment;", " filename*0*=utf-8''%E2%82%AC%20ra;", " filename*1=tes.vbs"]),
        part(['Content-Type: application/octet-stream; name="=?utf-8?B?ZXZpbC5leGU=?="']),
        forwarded(inner),
        attachment("t.tgz", tar_of({"x.js": b"alert(1)"}, "w:gz")),
    ])  # fmt: skip


def test_feed_split_at_every_byte_gives_the_same_report():
    msg = small_message()
    whole = walk(msg)
    assert "forwarded message > r.zip > a.exe" in paths(whole) and "t.tgz > x.js" in paths(whole)
    for cut in range(len(msg) + 1):
        w = MimeWalker()
        w.feed(msg[:cut])
        w.feed(msg[cut:])
        assert w.close() == whole, cut
    assert walk(msg, chunk=1) == whole
    assert walk(lf(msg), chunk=1).names == whole.names


def test_misuse_raises_mime_error():
    w = MimeWalker()
    w.feed(b"Subject: x\r\n\r\nbody\r\n")
    w.close()
    with pytest.raises(MimeError):
        w.feed(b"more")
    with pytest.raises(MimeError):
        w.close()
    with pytest.raises(MimeError):
        MimeWalker().feed("text")  # type: ignore[arg-type]


def test_empty_and_headerless_input():
    assert walk(b"") == MimeReport()
    assert walk(b"\r\n\r\nbody only").names == []
