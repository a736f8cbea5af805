"""The MIME walker: every file name a message carries, in its parts, forwarded messages and archives.

DESCRIPTION
    `MimeWalker(limits)` is fed the message in chunks of any size (`feed`), CRLF or LF lines,
    and `close()` returns a `MimeReport`. It never holds the message whole: it reads it line
    by line, keeping a stack of the multipart boundaries it is inside; only a part's header
    block, and the decoded bytes of a part that is an archive, are kept (both bounded).

    For every part (the message itself included) the header block is parsed with the stdlib
    `email` package, and the file names it declares are reported, raw and decoded:
      Content-Disposition filename, Content-Type name (and either parameter in either header)
      RFC 2231 continuations and charsets (filename*0*=utf-8''%E2%82%AC...; email.utils)
      RFC 2047 encoded words, also inside quotes where RFC 2047 forbids them (mail clients
      send them; Amavis decodes them)
    A message/rfc822 (or message/global) part is a forwarded message: its header and parts
    are walked too, under the path label "forwarded message" (base64 or quoted-printable
    encoded ones are decoded first). multipart/digest parts default to message/rfc822.

    Archives. The first 512 decoded bytes of every leaf part are looked at; a part whose name
    or magic bytes say zip, tar, gzip (tar.gz, tgz, gz), bzip2 or xz is decoded (base64,
    quoted-printable, 7bit/8bit/binary) into a buffer of at most limits.max_archive_bytes and
    its member names are listed with zipfile / tarfile (source "archive"); archives inside
    archives are opened in turn, up to limits.max_depth levels. The declared expanded size
    of a zip (its central directory) above limits.max_expanded is a zip bomb: refused, never
    expanded. Compressed tar and gzip streams are decompressed as a stream, at most
    limits.max_expanded bytes a message in all; a nested member is read only when it is an
    archive (by name or magic) of at most limits.max_archive_bytes. Encrypted zip members
    (general purpose flag bit 0) are listed in `encrypted`.

    What could not be inspected is a problem (`MimeReport.problems`): "archive too deep",
    "zip bomb: <path> expands to N bytes", "too many archive entries", "archive over N bytes
    not inspected", "damaged archive", "too many MIME parts", "MIME nesting too deep", "MIME
    header over N bytes". After a MIME limit the rest of the message is not walked. The
    caller (attachments.py) refuses a message with a problem: what was not inspected may
    hide a blocked name.

    Paths name where a file sits: "forwarded message > report.zip > a.exe".

SECURITY
    Every input byte is the sender's. Everything is bounded: line length (longer lines are
    handled in pieces and never taken for a boundary), a header block, nesting of multiparts
    and forwarded messages, the number of parts, archive size, levels, entries and expanded
    bytes. The email, zipfile and tarfile parsers see hostile input: whatever they raise
    becomes "damaged archive" or a skipped name, never an exception out of the walker.
    `feed` and `close` either work or raise MimeError (misuse, or a bug of ours, chained to
    its cause). Pure: no I/O, no clock, no global mutable state (safe in worker threads).

STANDARDS
    RFC 2045 (headers, transfer encodings), RFC 2046 (multipart, boundaries, message/rfc822,
    digest), RFC 2047 (encoded words), RFC 2183 (Content-Disposition), RFC 2231 (parameter
    continuations and charsets), RFC 6532 (message/global); PKZIP APPNOTE (central
    directory, flag bit 0), POSIX ustar, RFC 1952 (gzip header FNAME).

CONFIG
    None read here: attachments.AttachmentLimits comes from inbound.attachment_limits.
"""

from __future__ import annotations

import binascii
import bz2
import email.header
import email.utils
import gzip
import io
import lzma
import re
import struct
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from email import policy
from email.message import Message
from email.parser import BytesHeaderParser

PROBE = 512  # decoded bytes of a leaf part looked at for archive magic (ustar's is at 257)
MAX_PROBLEMS = 50  # one message cannot fill a log line with thousands


@dataclass(frozen=True, slots=True, kw_only=True)
class AttachmentLimits:
    max_depth: int = 3  # archive levels: an archive in an archive in an archive; a fourth level is a problem
    max_entries: int = 1000  # archive members listed, all archives of one message together
    max_expanded: int = 100 << 20  # declared expanded size of one zip; bytes decompressed for one message in all
    max_archive_bytes: int = 20 << 20  # one archive's decoded bytes held to list it (a part or a nested member)
    max_header_bytes: int = 256 << 10  # one part's header block (the message's own is bounded by SMTP first)
    max_nesting: int = 50  # multiparts and forwarded messages inside each other
    max_parts: int = 1_000  # MIME parts (headers walked) per message (Amavis: ~1,000); each costs ~1 ms of CPU at worst
    max_line: int = 64 << 10  # a longer line is handled in pieces (never a boundary)


@dataclass(frozen=True, slots=True)
class FoundName:
    name: str
    path: str  # "forwarded message > report.zip > a.exe" (ends with the name)
    source: str  # "filename" | "name" | "archive"


@dataclass(slots=True)
class MimeReport:
    names: list[FoundName] = field(default_factory=list)
    encrypted: list[str] = field(default_factory=list)  # paths of encrypted archive members
    problems: list[str] = field(default_factory=list)
    parts: int = 0


class MimeError(Exception):
    """The walker was misused, or failed (then chained to the cause)."""


class _TooBig(Exception):
    """The message's decompression budget ran out."""


# ---------------------------------------------------------------------------------------------
# One walk's shared state: the report and the budgets of every part, forwarded message and archive.


class _Walk:
    def __init__(self, limits: AttachmentLimits) -> None:
        self.limits = limits
        self.report = MimeReport()
        self.entries = 0
        self.inflated = 0  # bytes decompressed so far (tar/gzip streams, nested members)
        self.dead = False  # a MIME limit was hit: the rest is not walked

    def problem(self, text: str) -> None:
        p = self.report.problems
        if text not in p and len(p) < MAX_PROBLEMS:
            p.append(text)

    def name(self, name: str, path: tuple[str, ...], source: str) -> None:
        self.report.names.append(FoundName(name, " > ".join((*path, name)), source))

    def stop(self, text: str) -> None:
        self.problem(text)
        self.dead = True


# ---------------------------------------------------------------------------------------------
# Header blocks


_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t]")
_NAME_HEADERS = (b"content-type", b"content-disposition")
_PARAMS = (("filename", "filename"), ("name", "name"))  # (parameter, FoundName.source)
_DEFAULT_PARSER = BytesHeaderParser(policy=policy.default)  # parsers keep no state between calls
_COMPAT_PARSER = BytesHeaderParser(policy=policy.compat32)


@dataclass(slots=True)
class _Head:
    ctype: str = "text/plain"
    boundary: bytes = b""
    cte: str = ""
    names: list[tuple[str, str]] = field(default_factory=list)  # (name, source), first occurrence kept


def _fields(block: bytes) -> list[tuple[bytes, bytes]]:
    """(name, raw value) of each header field. Lines that are neither a field nor a folded
    continuation are skipped rather than ending the block, so no field hides behind one."""
    out: list[tuple[bytes, bytes]] = []
    for line in block.splitlines(keepends=True):
        if not _HEADER_LINE.match(line):
            continue
        if line[:1] in (b" ", b"\t"):
            if out:
                out[-1] = (out[-1][0], out[-1][1] + line)
            continue
        name, _, value = line.partition(b":")
        out.append((name.strip(), value))
    return out


def _decode_2047(value: str) -> str | None:
    if "=?" not in value:
        return None
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:  # noqa: BLE001 - hostile input into the stdlib decoder: no decoded form
        return None


def _parse(parser: BytesHeaderParser, mini: bytes) -> Message | None:
    try:
        return parser.parsebytes(mini)
    except Exception:  # noqa: BLE001 - the stdlib's parsers on hostile input: no names from this one
        return None


def _param_values(decoded: Message | None, compat: Message | None, header: str, param: str) -> list[str]:
    """The parameter as policy.default decodes it, raw (compat32), and the raw value's RFC 2047 decoding."""
    out: list[str] = []
    try:
        v = decoded.get_param(param, header=header) if decoded is not None else None
    except Exception:  # noqa: BLE001 - the new header parser is lazy: it may fail here
        v = None
    if isinstance(v, str):
        out.append(v)
    try:
        raw = compat.get_param(param, header=header) if compat is not None else None
        if isinstance(raw, tuple):  # RFC 2231 (charset, language, value)
            raw = email.utils.collapse_rfc2231_value(raw)
    except Exception:  # noqa: BLE001
        raw = None
    if isinstance(raw, str):
        out.append(raw)
        decoded_raw = _decode_2047(raw)
        if decoded_raw is not None:
            out.append(decoded_raw)
    return out


def _boundary(m: Message | None) -> tuple[str, bytes]:
    if m is None:
        return "text/plain", b""
    try:
        ctype = m.get_content_type()
        b = m.get_boundary() if ctype.startswith("multipart/") else None
    except Exception:  # noqa: BLE001
        return "text/plain", b""
    if not b:
        return ctype, b""
    try:
        return ctype, b.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:  # an RFC 2231 boundary decoded to non-ASCII
        return ctype, b.encode("utf-8", "surrogateescape")


def parse_header(block: bytes, default_type: str = "text/plain") -> _Head:
    head = _Head(ctype=default_type)
    seen: set[str] = set()
    typed = False
    for name, value in _fields(block):
        key = name.lower()
        if key == b"content-transfer-encoding" and not head.cte:
            head.cte = value.strip().lower().decode("latin-1")
        if key not in _NAME_HEADERS:
            continue
        mini = name + b":" + value.rstrip(b"\r\n") + b"\r\n\r\n"
        named = b"name" in value.lower()  # filename, name, and their RFC 2231 forms
        compat = _parse(_COMPAT_PARSER, mini) if named or (key == b"content-type" and not typed) else None
        if key == b"content-type" and not typed:  # the first Content-Type rules, as in Python's parser
            typed = True
            head.ctype, head.boundary = _boundary(compat)
        if not named:
            continue
        decoded = _parse(_DEFAULT_PARSER, mini)
        header = key.decode("ascii", "replace")
        for param, source in _PARAMS:
            for v in _param_values(decoded, compat, header, param):
                if v and v not in seen:
                    seen.add(v)
                    head.names.append((v, source))
    return head


# ---------------------------------------------------------------------------------------------
# Transfer decodings, line by line. The line break before a boundary belongs to the boundary
# (RFC 2046 5.1.1), so the last line's break is held back until another line follows.


_NOT_B64 = bytes(b for b in range(256) if not (chr(b).isascii() and (chr(b).isalnum() or chr(b) in "+/=")))


def _a2b_base64(data: bytes) -> bytes:
    try:
        return binascii.a2b_base64(data)
    except binascii.Error:  # padding in the middle, a lone trailing character: keep what decodes
        t = data.replace(b"=", b"")
        return binascii.a2b_base64(t[: len(t) // 4 * 4])


class _Decoder:
    def __init__(self, cte: str) -> None:
        self.kind = cte if cte in ("base64", "quoted-printable") else "identity"
        self.rest = b""
        self.pending = b""

    def decode(self, content: bytes, ending: bytes) -> bytes:
        if self.kind == "base64":
            s = self.rest + content.translate(None, _NOT_B64)
            n = len(s) // 4 * 4
            self.rest = s[n:]
            return _a2b_base64(s[:n]) if n else b""
        if self.kind == "quoted-printable":
            out = self.pending
            if not ending:  # a piece of a long line
                self.pending = b""
                return out + binascii.a2b_qp(content)
            c = content.rstrip(b" \t")
            if c.endswith(b"="):  # soft line break
                self.pending = b""
                return out + binascii.a2b_qp(c[:-1])
            self.pending = b"\r\n"
            return out + binascii.a2b_qp(c)
        out = self.pending + content
        self.pending = ending
        return out

    def flush(self) -> bytes:
        if self.kind == "base64" and self.rest:
            t = self.rest.replace(b"=", b"")
            self.rest = b""
            return _a2b_base64(t[: len(t) // 4 * 4])
        return b""


# ---------------------------------------------------------------------------------------------
# Archives


_ARCHIVE_SUFFIXES = (
    (".tar.gz", "gzip"), (".tar.bz2", "bzip2"), (".tar.xz", "xz"), (".tgz", "gzip"), (".taz", "gzip"),
    (".tbz", "bzip2"), (".tbz2", "bzip2"), (".txz", "xz"), (".gz", "gzip"), (".bz2", "bzip2"), (".xz", "xz"),
    (".zip", "zip"), (".tar", "tar"),
)  # fmt: skip
_COMPRESSED: dict[str, Callable[[io.BytesIO], io.BufferedIOBase]] = {  # over BytesIO: nothing to close
    "gzip": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    "bzip2": lambda f: bz2.BZ2File(f, mode="rb"),
    "xz": lambda f: lzma.LZMAFile(f, mode="rb"),  # noqa: SIM115
}
_BZ2_MAGIC = re.compile(rb"BZh[1-9]1AY&SY")


def kind_by_name(name: str) -> str | None:
    n = name.rstrip().lower()
    for suffix, kind in _ARCHIVE_SUFFIXES:
        if n.endswith(suffix) and len(n) > len(suffix) - 1:
            return kind
    return None


def kind_by_magic(head: bytes) -> str | None:
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"):
        return "zip"
    if head[:3] == b"\x1f\x8b\x08":
        return "gzip"
    if _BZ2_MAGIC.match(head):
        return "bzip2"
    if head[:6] == b"\xfd7zXZ\x00":
        return "xz"
    if head[257:262] == b"ustar":
        return "tar"
    return None


def _inner_name(name: str) -> str:
    """report.tar.gz -> report.tar, logs.tgz -> logs.tar, a.gz -> a."""
    low = name.lower()
    for suffix, repl in ((".tgz", ".tar"), (".taz", ".tar"), (".tbz2", ".tar"), (".tbz", ".tar"), (".txz", ".tar")):
        if low.endswith(suffix):
            return name[: -len(suffix)] + repl
    for suffix in (".gz", ".bz2", ".xz"):
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _gzip_fname(data: bytes) -> str | None:
    """The FNAME field of a gzip header (RFC 1952 2.3.1), if any."""
    if len(data) < 10 or not data[3] & 0x08:
        return None
    pos = 10
    if data[3] & 0x04:  # FEXTRA
        if len(data) < 12:
            return None
        pos = 12 + struct.unpack_from("<H", data, 10)[0]
    end = data.find(b"\x00", pos, pos + 1024)
    return data[pos:end].decode("latin-1") if end > pos else None


def _gzip_isize(data: bytes) -> int:
    return struct.unpack_from("<I", data, len(data) - 4)[0] if len(data) >= 18 else 0


class _Bounded(io.RawIOBase):
    """A decompressing reader charged to the walk's budget; raises _TooBig past it."""

    def __init__(self, inner: io.BufferedIOBase, walk: _Walk) -> None:
        self.inner, self.walk = inner, walk

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        room = self.walk.limits.max_expanded - self.walk.inflated
        if n is None or n < 0 or n > room + 1:
            n = room + 1
        data = self.inner.read(n)
        self.walk.inflated += len(data)
        if self.walk.inflated > self.walk.limits.max_expanded:
            raise _TooBig
        return data

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


class _Archives:
    """Lists one archive's members, and the archives inside it, into the walk's report."""

    def __init__(self, walk: _Walk) -> None:
        self.walk = walk
        self.limits = walk.limits

    def inspect(self, data: bytes, path: tuple[str, ...], level: int, named: str | None) -> None:
        """`data`: the archive's bytes; `path` ends with its own name; `named`: the kind its name says."""
        where = " > ".join(path)
        if level > self.limits.max_depth:
            self.walk.problem(f"archive too deep: {where}")
            return
        kind = kind_by_magic(data[:PROBE]) or named
        try:
            if kind == "zip":
                self._zip(data, path, level)
            elif kind == "tar":
                self._tar(io.BytesIO(data), path, level)
            elif kind in _COMPRESSED:
                self._compressed(data, kind, path, level)
            else:
                self.walk.problem(f"damaged archive: {where}")
        except _TooBig:
            self.walk.problem(f"zip bomb: {where} expands to more than {self.limits.max_expanded} bytes")
        except Exception:  # noqa: BLE001 - zipfile/tarfile/zlib/lzma on hostile bytes raise many kinds
            self.walk.problem(f"damaged archive: {where}")

    def _count(self, path: tuple[str, ...]) -> bool:
        self.walk.entries += 1
        if self.walk.entries > self.limits.max_entries:
            self.walk.problem(f"too many archive entries: {' > '.join(path)}")
            return False
        return True

    def _zip(self, data: bytes, path: tuple[str, ...], level: int) -> None:
        eocd = data.rfind(b"PK\x05\x06", max(0, len(data) - 65_557))
        if eocd >= 0 and len(data) >= eocd + 22:  # the entry count, before zipfile builds an object per entry
            declared = struct.unpack_from("<H", data, eocd + 10)[0]
            if declared != 0xFFFF and self.walk.entries + declared > self.limits.max_entries:
                self.walk.problem(f"too many archive entries: {' > '.join(path)}")
                return
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
            expanded = sum(i.file_size for i in infos)
            bomb = expanded > self.limits.max_expanded
            for info in infos:
                if not self._count(path):
                    return
                self.walk.name(info.filename, path, "archive")
                member = (*path, info.filename)
                if info.flag_bits & 0x1:
                    self.walk.report.encrypted.append(" > ".join(member))
                elif not bomb and not info.is_dir():
                    self._zip_member(zf, info, member, level)
            if bomb:
                self.walk.problem(f"zip bomb: {' > '.join(path)} expands to {expanded} bytes")

    def _zip_member(self, zf: zipfile.ZipFile, info: zipfile.ZipInfo, member: tuple[str, ...], level: int) -> None:
        named = kind_by_name(info.filename)
        if info.file_size > self.limits.max_archive_bytes:
            if named:
                self.walk.problem(f"archive over {self.limits.max_archive_bytes} bytes not inspected: {' > '.join(member)}")
            return
        try:
            with zf.open(info) as f:
                head = f.read(PROBE)
                kind = kind_by_magic(head) or named
                if kind is None:
                    return
                body = head + f.read(max(0, info.file_size - len(head)) + 1)  # +1: a member larger than it says
        except Exception:  # noqa: BLE001 - unsupported method, bad data: only a problem for an archive
            if named:
                self.walk.problem(f"damaged archive: {' > '.join(member)}")
            return
        self.walk.inflated += len(body)
        if self.walk.inflated > self.limits.max_expanded:
            raise _TooBig
        if len(body) > info.file_size:
            self.walk.problem(f"damaged archive: {' > '.join(member)} is larger than it declares")
            return
        self.inspect(body, member, level + 1, named)

    def _tar(self, stream: io.IOBase, path: tuple[str, ...], level: int) -> None:
        with tarfile.open(fileobj=stream, mode="r|") as tf:  # streaming: members in order, no seeking back
            for m in tf:
                if not self._count(path):
                    return
                self.walk.name(m.name, path, "archive")
                if m.isfile():
                    self._tar_member(tf, m, (*path, m.name), level)

    def _tar_member(self, tf: tarfile.TarFile, m: tarfile.TarInfo, member: tuple[str, ...], level: int) -> None:
        named = kind_by_name(m.name)
        if m.size > self.limits.max_archive_bytes:
            if named:
                self.walk.problem(f"archive over {self.limits.max_archive_bytes} bytes not inspected: {' > '.join(member)}")
            return
        f = tf.extractfile(m)
        if f is None:
            return
        head = f.read(PROBE)
        kind = kind_by_magic(head) or named
        if kind is None:
            return
        self.inspect(head + f.read(), member, level + 1, named)

    def _compressed(self, data: bytes, kind: str, path: tuple[str, ...], level: int) -> None:
        """gzip, bzip2, xz: a tar inside (one archive, one level), or one compressed file."""
        isize = _gzip_isize(data) if kind == "gzip" else 0
        if isize > self.limits.max_expanded:
            if isize > len(data) * 1032:  # past deflate's best ratio: cut short (or 4 GiB more, as ISIZE is mod 2**32)
                self.walk.problem(f"damaged archive: {' > '.join(path)}")
            else:
                self.walk.problem(f"zip bomb: {' > '.join(path)} expands to {isize} bytes")
            return
        stream = io.BufferedReader(_Bounded(_COMPRESSED[kind](io.BytesIO(data)), self.walk), 64 << 10)
        head = stream.peek(PROBE)[:PROBE]
        if kind_by_magic(head) == "tar":
            self._tar(stream, path, level)
            return
        inner = (_gzip_fname(data) if kind == "gzip" else None) or _inner_name(path[-1])
        if not self._count(path):
            return
        self.walk.name(inner, path, "archive")
        member = (*path, inner)
        named = kind_by_name(inner)
        nested = kind_by_magic(head) or named
        if nested is None:
            return
        body = stream.read(self.limits.max_archive_bytes + 1)
        if len(body) > self.limits.max_archive_bytes:
            self.walk.problem(f"archive over {self.limits.max_archive_bytes} bytes not inspected: {' > '.join(member)}")
            return
        self.inspect(body, member, level + 1, named)


# ---------------------------------------------------------------------------------------------
# Parts


class _Leaf:
    """A part that is not multipart or a message: probed for an archive, captured if one."""

    def __init__(self, walk: _Walk, head: _Head, path: tuple[str, ...]) -> None:
        self.walk = walk
        self.decoder = _Decoder(head.cte)
        plain = [n for n, _ in head.names if "=?" not in n] or [n for n, _ in head.names]
        self.label = plain[0] if plain else f"unnamed {head.ctype} part"
        self.named = next((k for k in (kind_by_name(n) for n, _ in head.names) if k), None)
        self.path = path
        self.buf: bytearray | None = bytearray()
        self.probing = True

    def line(self, content: bytes, ending: bytes) -> None:
        if self.buf is None:
            return
        self.buf += self.decoder.decode(content, ending)
        if self.probing and len(self.buf) >= PROBE:
            self._probe()
        if self.buf is not None and len(self.buf) > self.walk.limits.max_archive_bytes:
            self.buf = None
            where = " > ".join((*self.path, self.label))
            self.walk.problem(f"archive over {self.walk.limits.max_archive_bytes} bytes not inspected: {where}")

    def _probe(self) -> None:
        self.probing = False
        if self.buf is not None and not (self.named or kind_by_magic(bytes(self.buf[:PROBE]))):
            self.buf = None  # not an archive: decode no further

    def finish(self) -> None:
        if self.buf is None:
            return
        self.buf += self.decoder.flush()
        if self.probing:
            self._probe()
        if self.buf is not None and (self.buf or self.named):
            data, self.buf = bytes(self.buf), None
            _Archives(self.walk).inspect(data, (*self.path, self.label), 1, self.named)


class _Message:
    """A forwarded message (message/rfc822): its lines go to a walker of its own."""

    def __init__(self, walk: _Walk, head: _Head, path: tuple[str, ...], nesting: int) -> None:
        self.stream = _Stream(walk, (*path, "forwarded message"), nesting)
        self.decoder = _Decoder(head.cte) if head.cte in ("base64", "quoted-printable") else None
        self.splitter = _Splitter(self.stream, walk.limits.max_line) if self.decoder else None

    def line(self, content: bytes, ending: bytes, whole: bool) -> None:
        if self.decoder is None:
            self.stream.line(content, ending, whole)
        else:
            assert self.splitter is not None
            self.splitter.feed(self.decoder.decode(content, ending))

    def finish(self) -> None:
        if self.decoder is not None:
            assert self.splitter is not None
            self.splitter.feed(self.decoder.flush())
            self.splitter.close()
        else:
            self.stream.finish()


@dataclass(slots=True)
class _Frame:
    boundary: bytes
    digest: bool
    closed: bool = False


class _Stream:
    """One message (the outer one or a forwarded one), line by line."""

    def __init__(self, walk: _Walk, path: tuple[str, ...], nesting: int) -> None:
        self.walk = walk
        self.path = path
        self.nesting = nesting  # multiparts and messages this message is inside
        self.frames: list[_Frame] = []
        self.in_header = True
        self.header = bytearray()
        self.header_full = False
        self.default_type = "text/plain"
        self.leaf: _Leaf | _Message | None = None

    def line(self, content: bytes, ending: bytes, whole: bool = True) -> None:
        if self.walk.dead:
            return
        if whole and self.frames and content[:2] == b"--" and self._boundary(content):
            return
        if self.in_header:
            if whole and not content:
                self._header_done()
            elif not self.header_full:
                self.header += content + ending
                if len(self.header) > self.walk.limits.max_header_bytes:
                    self.header_full = True
                    self.walk.problem(f"MIME header over {self.walk.limits.max_header_bytes} bytes")
        elif isinstance(self.leaf, _Message):
            self.leaf.line(content, ending, whole)
        elif self.leaf is not None:
            self.leaf.line(content, ending)

    def _boundary(self, content: bytes) -> bool:
        for i in range(len(self.frames) - 1, -1, -1):  # the innermost first; an outer one closes the inner ones
            frame = self.frames[i]
            if not content.startswith(frame.boundary, 2):
                continue
            rest = content[2 + len(frame.boundary) :]
            close = rest[:2] == b"--"
            if (rest[2:] if close else rest).strip(b" \t"):
                continue
            self._end_leaf()
            if self.in_header and self.header:
                self._header_done()  # a part with a header and no body
                self._end_leaf()
            del self.frames[i + 1 :]
            if close:
                frame.closed, self.in_header = True, False  # the epilogue: nothing to walk
            else:  # a part (also after a close delimiter: RFC 2046 has none, some mail clients show it)
                frame.closed, self.in_header = False, True
                self.default_type = "message/rfc822" if frame.digest else "text/plain"
            self.header.clear()
            self.header_full = False
            return True
        return False

    def _header_done(self) -> None:
        self.in_header = False
        block, self.header = bytes(self.header), bytearray()
        self.header_full = False
        report, limits = self.walk.report, self.walk.limits
        report.parts += 1
        if report.parts > limits.max_parts:
            self.walk.stop(f"too many MIME parts (over {limits.max_parts})")
            return
        head = parse_header(block, self.default_type)
        for name, source in head.names:
            self.walk.name(name, self.path, source)
        depth = self.nesting + len(self.frames) + 1
        if head.ctype.startswith("multipart/") and head.boundary:
            if depth > limits.max_nesting:
                self.walk.stop(f"MIME nesting too deep (over {limits.max_nesting})")
                return
            self.frames.append(_Frame(head.boundary, head.ctype == "multipart/digest"))
        elif head.ctype in ("message/rfc822", "message/global"):
            if depth > limits.max_nesting:
                self.walk.stop(f"MIME nesting too deep (over {limits.max_nesting})")
                return
            self.leaf = _Message(self.walk, head, self.path, depth)
        else:
            self.leaf = _Leaf(self.walk, head, self.path)

    def _end_leaf(self) -> None:
        leaf, self.leaf = self.leaf, None
        if leaf is not None and not self.walk.dead:
            leaf.finish()

    def finish(self) -> None:
        if self.walk.dead:
            return
        if self.in_header and self.header:
            self._header_done()  # a message that is all header, or cut short
        self._end_leaf()


class _Splitter:
    """Bytes in, lines out: (content, ending, whole). A line longer than max_line goes out in
    pieces (whole=False), except that a boundary candidate's trailing blanks are squeezed."""

    def __init__(self, stream: _Stream, max_line: int) -> None:
        self.stream = stream
        self.max_line = max_line
        self.buf = bytearray()
        self.piece = False  # the next line continues a piece already sent

    def feed(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        while (nl := buf.find(b"\n", start)) >= 0:
            end, ending = nl, b"\n"
            if end > start and buf[end - 1] == 0x0D:
                end, ending = end - 1, b"\r\n"
            self.stream.line(bytes(buf[start:end]), ending, not self.piece)
            self.piece = False
            start = nl + 1
        del buf[:start]
        if len(buf) > self.max_line:
            squeezed = bytes(buf).rstrip(b" \t")
            if not self.piece and buf[:2] == b"--" and len(squeezed) <= 1024:
                self.buf = bytearray(squeezed + b" ")  # "--boundary" padded with blanks: still one
            else:
                self.stream.line(bytes(buf), b"", False)
                self.piece = True
                buf.clear()

    def close(self) -> None:
        if self.buf:
            self.stream.line(bytes(self.buf), b"", not self.piece)
            self.buf.clear()
        self.stream.finish()


class MimeWalker:
    """feed(chunk) any number of times, then close() -> MimeReport. One message per walker."""

    def __init__(self, limits: AttachmentLimits | None = None) -> None:
        self._walk = _Walk(limits or AttachmentLimits())
        self._splitter = _Splitter(_Stream(self._walk, (), 0), self._walk.limits.max_line)
        self._closed = False

    def feed(self, chunk: bytes) -> None:
        if self._closed:
            raise MimeError("feed after close")
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise MimeError(f"feed takes bytes, not {type(chunk).__name__}")
        try:
            self._splitter.feed(bytes(chunk))
        except Exception as exc:
            self._closed = True
            raise MimeError(f"MIME walker failed: {exc!r}") from exc

    def close(self) -> MimeReport:
        if self._closed:
            raise MimeError("close after close")
        self._closed = True
        try:
            self._splitter.close()
        except Exception as exc:
            raise MimeError(f"MIME walker failed: {exc!r}") from exc
        return self._walk.report
