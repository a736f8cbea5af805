"""Outbound PIPELINING against real servers: Postfix's smtp-sink, and a second mtaserver.

Both offer PIPELINING (RFC 2920), so the client sends MAIL, the RCPTs and DATA in one write.
That the client really pipelines is proven in tests/integration/test_smtp_client_sessions.py (a server that
will not answer MAIL before it has DATA); here the point is that real servers get every
message intact: many messages over cached connections, several recipients each, lines that
start with a dot, a large message, and a recipient refused in the middle of a group.
"""

from __future__ import annotations

import email
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import delivering, maildir_messages, queue_empty, wait_for

from conftest import free_port, require_tool


class SmtpSink:
    """Postfix's smtp-sink on 127.0.0.1, dumping every transaction to a file of its own."""

    def __init__(self) -> None:
        self.binary = require_tool("smtp-sink")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="smtp-sink-"))  # not under tmp_path: nobody must write here
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> SmtpSink:
        args = [self.binary, "-c", "-d", f"{self.dir}/%M.", f"127.0.0.1:{self.port}", "100"]
        if os.geteuid() == 0:
            os.chown(self.dir, pwd.getpwnam("nobody").pw_uid, -1)
            args[1:1] = ["-u", "nobody"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"smtp-sink exited: {self.proc.stderr.read().decode(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # by PID: the one we started
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def dumps(self) -> list[tuple[str, list[str], bytes]]:
        """(sender, recipients, content) for each complete dump (one file per transaction)."""
        out = []
        for p in sorted(self.dir.iterdir()):
            data = p.read_bytes()
            head, sep, content = data.partition(b"Received: from ")
            if not sep or not data.endswith(b"\n\n"):
                continue  # still being written
            # smtp-sink's Received: is three lines; the message follows it
            content = content.split(b"\n", 3)[3]
            fields = [line.split(b": ", 1) for line in head.splitlines() if b": " in line]
            sender = next(v.decode() for k, v in fields if k == b"X-Mail-Args").split()[0].strip("<>")
            rcpts = [v.decode().split()[0].strip("<>") for k, v in fields if k == b"X-Rcpt-Args"]
            out.append((sender, rcpts, content[:-1]))  # the dump ends with an empty line
        return out


def message(i: int, extra: bytes = b"") -> bytes:
    return (
        b"Subject: m%d\r\nMessage-ID: <m%d@client.test>\r\n\r\n"
        b".a line that starts with a dot\r\n..two dots\r\n.\r\nafter a lone dot\r\n%s" % (i, i, extra)
    )


def send_many(mta, count: int, rcpts: list[str], sender: str = "s@client.test") -> None:
    import smtplib

    with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.1", 0)) as c:
        for i in range(count):
            assert c.sendmail(sender, rcpts, message(i)) == {}


def test_relay_to_smtp_sink(make_mta):
    n = 30
    rcpts = ["a@remote.test", "b@remote.test", "c@remote.test"]
    with SmtpSink() as sink:
        mta = make_mta(delivering(relay=sink.port, destination_concurrency=2))
        send_many(mta, n, rcpts)
        got = wait_for(lambda: (d := sink.dumps()) and len(d) >= n and d, timeout=30, what=f"{n} messages at smtp-sink")
        wait_for(lambda: queue_empty(mta), what="empty queue")
        assert len(got) == n
        subjects = set()
        for sender, rs, content in got:
            assert sender == "s@client.test" and sorted(rs) == rcpts
            msg = email.message_from_bytes(content)
            subjects.add(msg["Subject"])
            # smtp-sink undoes the dot-stuffing and writes LF line endings
            assert content.endswith(b"\n\n.a line that starts with a dot\n..two dots\n.\nafter a lone dot\n")
        assert subjects == {f"m{i}" for i in range(n)}
        log = mta.log()
        assert log.count("status=sent (250 2.0.0 Ok") == n * len(rcpts)
        assert "protocol error" not in log and "lost connection" not in log


def test_large_message_to_smtp_sink(make_mta):
    body = b"".join(b"line %07d: " % i + b"x" * 60 + b"\r\n" for i in range(30_000))  # about 2 MB
    with SmtpSink() as sink:
        mta = make_mta(delivering(relay=sink.port))
        import smtplib

        with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.1", 0)) as c:
            c.sendmail("s@client.test", ["big@remote.test"], b"Subject: big\r\n\r\n" + body)
        [(_, rcpts, content)] = wait_for(lambda: sink.dumps(), timeout=30, what="the large message")
        assert rcpts == ["big@remote.test"]
        assert content.endswith(body.replace(b"\r\n", b"\n"))


def test_relay_to_another_mtaserver(make_mta):
    """A -> B, both mtaserver: B offers PIPELINING and delivers to its maildirs; a recipient that
    B refuses (relay access denied) in the middle of a pipelined group bounces back at A."""
    cfg_b = delivering()
    cfg_b["outbound"]["mynetworks"] = []  # B relays for no one
    b = make_mta(cfg_b)
    cfg_a = delivering(relay=b.port)
    cfg_a["domains"] = {"local": ["a.test"], "relay": []}  # example.test is B's
    a = make_mta(cfg_a)
    n = 10
    rcpts = ["x@example.test", "nobody@elsewhere.test", "y@example.test"]
    send_many(a, n, rcpts, sender="s@a.test")
    for r in ("x@example.test", "y@example.test"):
        wait_for(lambda r=r: len(maildir_messages(b, r)) >= n, timeout=30, what=f"{n} messages for {r} at B")
    dsns = wait_for(lambda: len(maildir_messages(a, "s@a.test")) >= n and maildir_messages(a, "s@a.test"), timeout=30, what="the DSNs at A")
    wait_for(lambda: queue_empty(a) and queue_empty(b), what="empty queues")
    for r in ("x@example.test", "y@example.test"):
        got = maildir_messages(b, r)
        assert len(got) == n
        assert {email.message_from_bytes(m)["Subject"] for m in got} == {f"m{i}" for i in range(n)}
        for m in got:
            assert m.endswith(b"\n.a line that starts with a dot\n..two dots\n.\nafter a lone dot\n")  # maildir: LF lines
    assert len(dsns) == n
    for d in dsns:
        assert b"Final-Recipient: rfc822; nobody@elsewhere.test" in d and b"Status: 5.7.1" in d
        assert b"x@example.test" not in d.split(b"Content-Description: Undelivered Message")[0].split(b"Delivery report")[1]
    relayed = [line for line in a.log().splitlines() if f"relay=127.0.0.1[127.0.0.1]:{b.port}" in line]
    assert sum("status=sent" in line for line in relayed) == 2 * n
    assert sum("status=bounced" in line and "Relay access denied" in line for line in relayed) == n
    assert "protocol error" not in a.log() and "lost connection" not in a.log()
