"""`mtaserver sendmail` for real: a subprocess reading stdin, the queue file it commits, the
queue manager delivering it to a sink; exit statuses; as root with server.user."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

from conftest import Mta
from helpers import Sink, as_root, delivering, open_dir_fixture, queue_empty, wait_for  # noqa: F401  (the fixture open_dir)

from mtaserver.queue.store import split_queue_file


def sendmail(mta: Mta, args: list[str], stdin: bytes, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mtaserver", "sendmail", "-C", str(mta.config_path), *args],
                          input=stdin, capture_output=True, timeout=30, **kw)  # type: ignore[call-overload]  # fmt: skip


def only_queued(mta: Mta) -> tuple[object, bytes, os.stat_result]:
    [qid] = mta.queued("incoming")
    path = mta.queue / "incoming" / qid
    env, content = split_queue_file(path.read_bytes())
    return env, bytes(content), path.stat()


def test_t_with_bcc_f_and_dot_handling_lands_in_incoming(make_mta):
    mta = make_mta()  # queue.manager false: the message stays in incoming/
    text = (b"To: Ann <ann@example.test>\nCc: cc@remote.test\nBcc: hidden@remote.test\nSubject: cron\n\n"
            b"line\n..two dots stay\n.\nafter the dot: not read\n")  # fmt: skip
    out = sendmail(mta, ["-t", "-f", "robot@example.test", "extra@remote.test"], text)
    assert out.returncode == 0, out.stderr
    env, content, _ = only_queued(mta)
    assert env.sender == "robot@example.test"
    want = ["extra@remote.test", "ann@example.test", "cc@remote.test", "hidden@remote.test"]
    assert [r.address for r in env.recipients] == want
    assert env.client.protocol == "local" and env.size == len(content)
    login = pwd.getpwuid(os.getuid()).pw_name
    assert content.startswith(f"Received: by mx.example.test (mtaserver, from userid {os.getuid()} ({login}))\r\n"
                              f"\tid {env.queue_id}; ".encode())  # fmt: skip
    assert b"Bcc" not in content and b"hidden" not in content
    assert b"\r\nSubject: cron\r\n" in content and b"\r\nMessage-ID: <" in content and b"\r\nDate: " in content
    assert content.endswith(b"\r\n\r\nline\r\n..two dots stay\r\n")  # stored as given: no unstuffing, CRLF
    assert b"not read" not in content


def test_i_keeps_a_lone_dot(make_mta):
    mta = make_mta()
    out = sendmail(mta, ["-i", "r@example.test"], b"Subject: x\n\na\n.\nb\n")
    assert out.returncode == 0, out.stderr
    _, content, _ = only_queued(mta)
    assert content.endswith(b"\r\n\r\na\r\n.\r\nb\r\n")


def test_the_queue_manager_delivers_it(make_mta):
    with Sink() as sink:
        mta = make_mta(delivering(relay=sink.port))
        out = sendmail(mta, ["-f", "cron@example.test", "ops@remote.test"], b"Subject: nightly\r\n\r\nall good\r\n")
        assert out.returncode == 0, out.stderr
        wait_for(lambda: sink.messages, what="delivery to the sink")
        sender, rcpts, content = sink.messages[0]
        assert sender == "cron@example.test" and rcpts == ["ops@remote.test"]
        assert content.startswith(b"Received: by mx.example.test (mtaserver, from userid ")
        assert b"\tfor <ops@remote.test>; " in content and content.endswith(b"all good\r\n")
        wait_for(lambda: queue_empty(mta), what="an empty queue")


def test_exit_statuses(make_mta):
    mta = make_mta({"advanced": {"max_message_size": 2000}}, start=False)
    assert sendmail(mta, ["-t"], b"Subject: no one\n\nx\n").returncode == 64  # EX_USAGE
    assert sendmail(mta, ["-bs"], b"").returncode == 64
    assert sendmail(mta, ["bad@@example.test"], b"x\n").returncode == 65  # EX_DATAERR
    big = sendmail(mta, ["r@example.test"], b"Subject: big\n\n" + b"x" * 3000 + b"\n")
    assert big.returncode == 65 and b"too large" in big.stderr
    out = subprocess.run([sys.executable, "-m", "mtaserver", "sendmail", "-C", str(mta.tmp / "missing.yaml"), "r@example.test"],
                         input=b"x\n", capture_output=True, timeout=30)  # fmt: skip
    assert out.returncode == 78  # EX_CONFIG
    assert mta.queued("incoming") == [] and mta.queued("tmp") == []


def test_as_root_it_writes_as_server_user_and_others_get_ex_noperm(open_dir):
    as_root()
    nobody, other = pwd.getpwnam("nobody"), pwd.getpwnam("daemon")
    mta = Mta(open_dir, {"server": {"user": "nobody"}})
    mta.config_path.chmod(0o644)
    try:
        mta.start()  # prepares data_dir for nobody
        out = sendmail(mta, ["r@example.test"], b"Subject: root\n\nx\n")
        assert out.returncode == 0, out.stderr
        _, content, st = only_queued(mta)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
        assert content.startswith(b"Received: by mx.example.test (mtaserver, from userid 0 (root))\r\n")

        def become_daemon() -> None:
            os.setgid(other.pw_gid)
            os.setuid(other.pw_uid)

        out = sendmail(mta, ["r@example.test"], b"Subject: not allowed\n\nx\n", preexec_fn=become_daemon)
        assert out.returncode == 77 and b"run as root or nobody" in out.stderr  # EX_NOPERM
    finally:
        mta.stop()
