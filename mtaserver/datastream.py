"""The DATA phase as a sans-IO scanner: bytes in, message content out, end of data found.

DESCRIPTION
    `DataScanner.feed(chunk)` takes whatever the socket delivered and returns the message
    content ready to spool (dot-unstuffed, line endings per policy) plus, once the end of
    data has been seen, the bytes that followed it (pipelined commands). It works on whole
    lines of each chunk at a time with C-speed searches, not on one line per call: DATA is
    the hot path of an MTA (profile evidence in bench/RESULTS.md).

    Only <CRLF>.<CRLF> ends DATA (RFC 5321 4.1.1.4). Every other end-of-data look-alike of
    the SMTP smuggling research (<LF>.<LF>, <LF>.<CRLF>, <CR>.<CR>, <CRLF>.<LF>, <CRLF>.<CR>,
    NUL and extra-CR forms) is content. What happens to the bare <LF> / bare <CR> in it is
    the `bare_newline` policy:

      reject     the message is refused after the end of data (550 5.5.2) and the
                 session closed; nothing of it is queued
      normalize  a bare <LF> or <CR> becomes <CRLF>, so no line ending is ambiguous for
                 any later hop (Postfix 3.9 smtpd_forbid_bare_newline = normalize)
      note       as normalize, and the session logs that it happened

    Limits are found while reading and reported after the end of data, once the client is
    listening again ("drain, then reply"): over-long lines, size, header size, and the
    Received: header fields counted as the header streams by (a mail loop: Postfix
    hopcount_limit), so a looping message is refused, never queued and bounced.

    `DataDeadline` is the slow-sender rule (Postfix smtpd_per_request_deadline with
    smtpd_min_data_rate): DATA starts with a deadline one timeout ahead; every N bytes read
    push it N / min_rate seconds later, never more than one timeout ahead of now. A client
    trickling a byte every few seconds therefore reaches it after about one timeout, while
    any sender faster than min_rate never does. The shell's timer waits for `at`.

SECURITY
    Reads untrusted bytes. Memory is bounded: at most one unfinished line (capped at the
    line limit) is kept between chunks; content is handed out as it is scanned.

STANDARDS
    RFC 5321 4.1.1.4 (DATA), 4.5.2 (transparency), 4.5.3.1.6 (text line length), 2.3.8 (CRLF).

CONFIG
    none directly; the session passes inbound.bare_newline, server.limits.{text_line,header_size,
    hop_count,data_timeout,min_data_rate}, advanced.max_message_size
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

_ANY_EOL = re.compile(rb"\r\n|\n|\r")
_RECEIVED = re.compile(rb"(?im)^received[ \t]*:")  # a Received: header field's start (RFC 5322 3.6.7)


class BareNewline(str, Enum):
    REJECT = "reject"
    NORMALIZE = "normalize"
    NOTE = "note"


class DataProblem(str, Enum):
    BARE_LF = "bare <LF>"
    BARE_CR = "bare <CR>"
    LINE_TOO_LONG = "line too long"
    TOO_BIG = "message too big"
    HEADER_TOO_BIG = "header too big"
    TOO_MANY_HOPS = "too many hops"


_PROBLEM_ORDER = list(DataProblem)


class DataDeadline:
    """When a DATA transfer times out, by bytes read and `now` (a monotonic clock)."""

    __slots__ = ("_rate", "_timeout", "at")

    def __init__(self, now: float, timeout: float, min_rate: int) -> None:
        self._timeout = timeout
        self._rate = min_rate  # bytes/s; 0: every read starts a new timeout (no rate asked)
        self.at = now + timeout

    def progress(self, n: int, now: float) -> float:
        """`n` bytes were read at `now`: the new deadline."""
        if self._rate:
            self.at = min(self.at + n / self._rate, now + self._timeout)
        else:
            self.at = now + self._timeout
        return self.at

    def expired(self, now: float) -> bool:
        return now >= self.at


@dataclass(slots=True)
class FeedResult:
    content: bytes  # to append to the spool file
    done: bool  # the end of data was seen
    leftover: bytes  # bytes after <CRLF>.<CRLF>: the next pipelined commands


class DataScanner:
    def __init__(
        self,
        *,
        bare_newline: BareNewline = BareNewline.REJECT,
        max_line: int = 1000,
        max_size: int = 0,
        max_header: int = 0,
        max_received: int = -1,
    ) -> None:
        self._policy = bare_newline
        self._max_line = max_line
        self._max_size = max_size
        self._max_header = max_header
        self._max_received = max_received  # more Received: headers than this: TOO_MANY_HOPS; -1: not counted
        self.received = 0  # Received: header fields seen in the header section
        self._pending = b""  # an unfinished line
        self._crlf_start = True  # the next byte starts a line after a CRLF (or starts DATA)
        self._line_start_after_bare = False  # normalize/note: the last line ended in a bare LF
        self._in_header = True
        self._header_bytes = 0
        self.size = 0  # content bytes accepted so far (after unstuffing)
        self.problems: list[DataProblem] = []
        self.normalized = False  # a bare newline was turned into CRLF
        self.bare_seen = False

    @property
    def rejected(self) -> bool:
        return bool(self.problems)

    def _problem(self, p: DataProblem) -> None:
        if p not in self.problems:
            self.problems.append(p)
            # In DataProblem's order, not in the order found: which comes first (the session
            # answers problems[0]) must not depend on how the client's bytes were cut into reads.
            self.problems.sort(key=_PROBLEM_ORDER.index)

    def feed(self, chunk: bytes) -> FeedResult:
        buf = self._pending + chunk if self._pending else chunk
        # 1. The end of data: <CRLF>.<CRLF>, where the first CRLF may be the one that ended
        #    the DATA command (an empty message) or the last line of the previous chunk.
        if self._crlf_start and buf.startswith(b".\r\n"):
            seg, leftover, done = b"", buf[3:], True
        else:
            idx = buf.find(b"\r\n.\r\n")
            if idx >= 0:
                seg, leftover, done = buf[: idx + 2], buf[idx + 5 :], True
            else:
                cut = buf.rfind(b"\n") + 1  # scan whole lines only; keep the unfinished one
                seg, self._pending, leftover, done = buf[:cut], buf[cut:], b"", False
                if len(self._pending) >= self._max_line:
                    # One line longer than the limit: keep only its last byte, which may be
                    # the CR of a CRLF that ends it. A CR in what is dropped is a bare CR (no LF
                    # follows it): noted as if the line had been scanned whole.
                    self._problem(DataProblem.LINE_TOO_LONG)
                    if b"\r" in self._pending[:-1]:
                        self.bare_seen = True
                        if self._policy is BareNewline.REJECT:
                            self._problem(DataProblem.BARE_CR)
                    self._pending = self._pending[-1:]
                    self._crlf_start = False
        if done:
            self._pending = b""
        content = self._scan(seg) if seg else b""
        if done and self._in_header:
            self._in_header = False
        return FeedResult(content, done, leftover)

    def feed_bdat(self, chunk: bytes, last: bool) -> bytes:
        """RFC 3030 BDAT content: taken as is, as Postfix does: no end of data to find, no
        transparency dots, and a bare <LF> or <CR> is no reason to refuse (inbound.bare_newline
        is about DATA's end-of-data look-alikes, which BDAT does not have): it is stored as
        <CRLF>, as Postfix's line records store it. The limits are DATA's. `last`: the final
        chunk (the content ends; an unfinished last line gets its <CRLF>)."""
        buf = self._pending + chunk if self._pending else chunk
        if last:
            seg, self._pending = buf, b""
            if seg and not seg.endswith(b"\n"):
                seg += b"\n" if seg.endswith(b"\r") else b"\r\n"
        else:
            cut = buf.rfind(b"\n") + 1
            seg, self._pending = buf[:cut], buf[cut:]
            if len(self._pending) >= self._max_line:
                self._problem(DataProblem.LINE_TOO_LONG)
                self._pending = self._pending[-1:]
                self._crlf_start = False
        content = self._scan(seg, raw=True) if seg else b""
        if last:
            self._in_header = False
        return content

    def _scan(self, seg: bytes, raw: bool = False) -> bytes:
        at_line_start = self._crlf_start or self._line_start_after_bare
        self._crlf_start = seg.endswith(b"\r\n")
        self._line_start_after_bare = not self._crlf_start  # seg always ends with "\n"
        # Counting is memchr-fast; a regex or a per-line loop costs ten times more here.
        if len(seg) > self._max_line and len(max(seg.split(b"\n"), key=len)) >= self._max_line:
            self._problem(DataProblem.LINE_TOO_LONG)
        crlf = seg.count(b"\r\n")
        bare_lf = seg.count(b"\n") != crlf
        bare_cr = seg.count(b"\r") != crlf
        if bare_lf or bare_cr:
            self.bare_seen = True
            if self._policy is BareNewline.REJECT and not raw:
                self._problem(DataProblem.BARE_LF if bare_lf else DataProblem.BARE_CR)
            else:
                seg = _ANY_EOL.sub(b"\r\n", seg)
                self.normalized = True
        if self.problems:
            return b""  # refused anyway: scan on for the end, keep nothing
        if not raw:
            # Transparency (RFC 5321 4.5.2): drop the first '.' of every line that starts with one.
            if at_line_start and seg[:1] == b".":
                seg = seg[1:]
            if b"\n." in seg:
                seg = seg.replace(b"\n.", b"\n")
        if self._in_header:
            self._track_header(seg, at_line_start)
        self.size += len(seg)
        if self._max_size and self.size > self._max_size:
            self._problem(DataProblem.TOO_BIG)
            return b""
        return seg

    def _track_header(self, seg: bytes, at_line_start: bool) -> None:
        if at_line_start and seg.startswith(b"\r\n"):
            end = 0
        else:
            end = seg.find(b"\n\r\n")
            end = end + 1 if end >= 0 else -1
        if end >= 0:
            self._in_header = False
            self._header_bytes += end
        else:
            self._header_bytes += len(seg)
        if self._max_received >= 0:
            head = seg if end < 0 else seg[:end]
            if b":" in head:
                n = len(_RECEIVED.findall(head))
                if n and not at_line_start and _RECEIVED.match(head):
                    n -= 1  # the rest of a line that began in an earlier piece
                self.received += n
                if self.received > self._max_received:
                    self._problem(DataProblem.TOO_MANY_HOPS)
        if self._max_header and self._header_bytes > self._max_header:
            self._problem(DataProblem.HEADER_TOO_BIG)
