import pytest

from mtaserver.datastream import BareNewline, DataDeadline, DataProblem, DataScanner


def run(data: bytes, chunks: int | None = None, **kw):
    """Feed data whole, or byte by byte (chunks=1), or in pieces of `chunks` bytes."""
    s = DataScanner(**kw)
    out = []
    step = chunks or len(data) or 1
    for i in range(0, max(len(data), 1), step):
        r = s.feed(data[i : i + step])
        out.append(r.content)
        if r.done:
            return s, b"".join(out), r.leftover + data[i + step :]
    return s, b"".join(out), None


@pytest.mark.parametrize("chunks", [None, 1, 2, 3, 7, 64])
def test_end_of_data_and_leftover_at_any_chunking(chunks):
    s, content, rest = run(b"Subject: x\r\n\r\nhello\r\n..dot\r\n.\r\nQUIT\r\n", chunks)
    assert content == b"Subject: x\r\n\r\nhello\r\n.dot\r\n"
    assert rest == b"QUIT\r\n"
    assert not s.problems


@pytest.mark.parametrize("chunks", [None, 1])
def test_empty_message(chunks):
    s, content, rest = run(b".\r\nNOOP\r\n", chunks)
    assert content == b"" and rest == b"NOOP\r\n"


def test_transparency_removes_first_dot_of_each_line():
    _, content, _ = run(b"..\r\n...\r\n.x\r\nx.\r\n.\r\n")
    assert content == b".\r\n..\r\nx\r\nx.\r\n"


SMUGGLING = [b"\n.\n", b"\n.\r\n", b"\r.\r", b"\r\n.\n", b"\r\n.\r", b"\r\n\x00.\r\n", b"\r\r\n.\r\r\n", b"\n.\r"]


@pytest.mark.parametrize("fake_end", SMUGGLING)
@pytest.mark.parametrize("chunks", [None, 1, 5])
def test_smuggling_forms_never_end_data(fake_end, chunks):
    smuggled = b"MAIL FROM:<evil@x.test>\r\nRCPT TO:<v@example.test>\r\nDATA\r\nevil\r\n"
    data = b"Subject: a\r\n\r\nbody" + fake_end + smuggled + b".\r\nQUIT\r\n"
    for policy in BareNewline:
        s, content, rest = run(data, chunks, bare_newline=policy)
        assert rest == b"QUIT\r\n", (policy, fake_end)
        has_bare = fake_end.replace(b"\r\n", b"").strip(b".\x00") != b""
        if policy is BareNewline.REJECT and has_bare:
            assert s.problems and s.problems[0] in (DataProblem.BARE_LF, DataProblem.BARE_CR)
            assert content == b"" or b"evil" not in content
        else:
            assert not s.problems
            assert b"MAIL FROM:<evil@x.test>" in content  # it stayed content
            body = content.replace(b"\r\n", b"")
            assert b"\r" not in body and b"\n" not in body, "no bare CR/LF may remain"


def test_normalize_makes_crlf():
    _, content, _ = run(b"a\nb\rc\r\n.\r\n", bare_newline=BareNewline.NORMALIZE)
    assert content == b"a\r\nb\r\nc\r\n"


def test_line_too_long_drains_to_the_end():
    s, content, rest = run(b"x" * 5000 + b"\r\nok\r\n.\r\nQUIT\r\n", 100, max_line=1000)
    assert s.problems == [DataProblem.LINE_TOO_LONG]
    assert rest == b"QUIT\r\n"


def test_line_at_the_limit_is_fine():
    s, _, _ = run(b"x" * 998 + b"\r\n.\r\n", max_line=1000)
    assert not s.problems
    s, _, _ = run(b"x" * 999 + b"\r\n.\r\n", max_line=1000)
    assert s.problems == [DataProblem.LINE_TOO_LONG]


def test_size_limit():
    s, content, rest = run(b"y" * 100 + b"\r\n" + b"z" * 100 + b"\r\n.\r\n", 10, max_size=150)
    assert DataProblem.TOO_BIG in s.problems and rest == b""


def test_header_limit():
    hdr = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 50) for i in range(100))
    s, _, _ = run(hdr + b"\r\nbody\r\n.\r\n", 33, max_header=1000)
    assert s.problems == [DataProblem.HEADER_TOO_BIG]
    s, _, _ = run(b"Subject: a\r\n\r\n" + b"b" * 5000 + b"\r\n.\r\n", 33, max_header=1000, max_line=10000)
    assert not s.problems


@pytest.mark.parametrize("chunks", [None, 1, 5, 13])
def test_received_headers_are_counted_in_the_header_only(chunks):
    """A mail loop: more Received: header fields than max_received is TOO_MANY_HOPS, found as
    the header streams by; the same lines in the body, or folded, do not count."""
    hops = b"".join(b"Received: from h%d by h%d; Mon, 1 Jan 2026 00:00:00 +0000\r\n" % (i, i + 1) for i in range(4))
    msg = hops + b"RECEIVED : odd case\r\nX-Note: x\r\n\treceived: folded, not a field\r\n\r\n" + hops + b".\r\n"
    s, _, _ = run(msg, chunks, max_received=5)
    assert s.received == 5 and not s.problems
    s, _, _ = run(msg, chunks, max_received=4)
    assert s.problems == [DataProblem.TOO_MANY_HOPS]
    s, _, _ = run(msg, chunks)  # not counted unless asked
    assert not s.problems


def _first_expiry(deadline: DataDeadline, gap: float, size: int, until: float) -> float | None:
    """A sender writing `size` bytes every `gap` seconds: when it first finds the deadline passed."""
    now = 0.0
    while now < until:
        now += gap
        if deadline.expired(now):
            return now
        deadline.progress(size, now)
    return None


def test_a_trickling_sender_meets_the_data_deadline():
    """Postfix smtpd_min_data_rate 500: one byte every two seconds gets about one timeout
    (300 s) however long it goes on; every read used to restart the timeout."""
    assert _first_expiry(DataDeadline(0.0, 300.0, 500), 2.0, 1, 10_000) == pytest.approx(302, abs=2)
    assert _first_expiry(DataDeadline(0.0, 300.0, 0), 2.0, 1, 10_000) is None  # 0: the old rule


def test_a_sender_at_the_minimum_rate_never_meets_it():
    assert _first_expiry(DataDeadline(0.0, 300.0, 500), 1.0, 500, 100_000) is None
    assert _first_expiry(DataDeadline(0.0, 300.0, 500), 10.0, 5000, 100_000) is None
    # a fast burst buys no more than one timeout: then silence times out after data_timeout
    d = DataDeadline(0.0, 300.0, 500)
    assert d.progress(10_000_000, 1.0) == 301.0 and not d.expired(300.9) and d.expired(301.0)


def _bdat(chunks: list[bytes], **kw) -> tuple[DataScanner, bytes]:
    s = DataScanner(**kw)
    out = b"".join(s.feed_bdat(c, i == len(chunks) - 1) for i, c in enumerate(chunks))
    return s, out


@pytest.mark.parametrize("cut", [1, 2, 5, 1000])
def test_bdat_content_is_taken_as_is(cut):
    """RFC 3030: no end of data and no transparency in a chunk; a bare LF is no reason to refuse
    (Postfix takes BDAT content as is) and is stored as CRLF, as Postfix's line records do."""
    msg = b"Subject: x\r\n\r\n..two dots\r\n.\r\nafter the dot\nbare\rcr\r\nno end"
    pieces = [msg[i : i + cut] for i in range(0, len(msg), cut)]
    s, out = _bdat(pieces + [b""], bare_newline=BareNewline.REJECT)
    assert out == b"Subject: x\r\n\r\n..two dots\r\n.\r\nafter the dot\r\nbare\r\ncr\r\nno end\r\n"
    assert not s.problems and s.size == len(out)


def test_bdat_content_has_the_data_limits():
    s, _ = _bdat([b"Subject: x\r\n\r\n" + b"a" * 3000 + b"\r\n"], max_line=1000)
    assert s.problems == [DataProblem.LINE_TOO_LONG]
    s, _ = _bdat([b"Received: x\r\n" * 3, b"\r\nbody\r\n"], max_received=2)
    assert s.problems == [DataProblem.TOO_MANY_HOPS]
    s, _ = _bdat([b"Subject: x\r\n\r\n", b"b" * 60 + b"\r\n", b""], max_size=50)
    assert s.problems == [DataProblem.TOO_BIG]
