"""DATA is streamed to the spool file: a 50 MB message costs the server little memory."""

from __future__ import annotations

import hashlib

from smtpclient import TRUSTED, SmtpClient, queue_id_of

from mtaserver.queue.store import read_envelope_only

MB = 1024 * 1024


def _lines(total: int):
    """Chunks of a message of `total` bytes: a header, then numbered 78-octet lines."""
    head = b"Subject: big\r\n\r\n"
    yield head
    n = len(head)
    i = 0
    chunk = []
    size = 0
    while n < total:
        line = b"%010d " % i + b"x" * 64 + b"\r\n"  # 78 octets with the CRLF
        if i % 1000 == 0:
            line = b"." + line[1:]  # some lines need dot-stuffing
        chunk.append(line)
        size += len(line)
        n += len(line)
        i += 1
        if size >= 1 << 20:
            yield b"".join(chunk)
            chunk, size = [], 0
    if chunk:
        yield b"".join(chunk)


def test_50mb_message_is_streamed_to_disk(make_mta):
    mta = make_mta({"advanced": {"max_message_size": "100M"}, "server": {"limits": {"data_timeout": "20s"}}})
    with SmtpClient(mta.port, TRUSTED, timeout=60) as c:
        c.greeting()
        c.ehlo()
        # warm up: one small message, so the baseline includes everything a session allocates
        queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: small\r\n\r\nx\r\n"))
        before = mta.rss_kib()["VmHWM"]
        c.expect("MAIL FROM:<s@client.test> SIZE=52428800", 250)
        c.expect("RCPT TO:<a@example.test>", 250)
        c.expect("DATA", 354)
        digest = hashlib.sha256()
        sent = 0
        for chunk in _lines(50 * MB):
            digest.update(chunk)  # the content; what goes on the wire is dot-stuffed
            sent += len(chunk)
            c.send(_stuff(chunk))
        c.send(b".\r\n")
        r = c.reply()
        qid = queue_id_of(r)
        after = mta.rss_kib()["VmHWM"]
    assert sent >= 50 * MB
    path = mta.queue / "incoming" / qid
    env, content_size = read_envelope_only(path)
    assert env.size == content_size
    with open(path, "rb") as f:
        start = f.read(4096)
        assert start.startswith(b"Received: from ")
        offset = start.index(b"\r\nSubject: big\r\n") + 2  # the content starts after our trace header
        f.seek(offset)
        h = hashlib.sha256()
        n = 0
        while n < content_size - offset:
            block = f.read(min(1 << 20, content_size - offset - n))
            h.update(block)
            n += len(block)
    assert n == sent
    assert h.hexdigest() == digest.hexdigest()
    growth_mb = (after - before) / 1024
    assert growth_mb < 20, f"peak RSS grew by {growth_mb:.1f} MB for a 50 MB message"


def _stuff(chunk: bytes) -> bytes:
    # Every chunk starts at a line start and lines never start with a dot except the stuffed ones.
    out = chunk.replace(b"\r\n.", b"\r\n..")
    return b"." + out if out.startswith(b".") else out
