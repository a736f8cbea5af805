"""A full spool: 452 4.3.1 (temporary, the client retries later), nothing half-written left."""

from __future__ import annotations

import os
import subprocess

import pytest
from smtpclient import IN_CI, TRUSTED, SmtpClient, queue_id_of, restart, wait_for_log

MB = 1024 * 1024


def _cannot(why: str) -> None:
    if IN_CI:
        pytest.fail(f"{why} (CI runs as root)")
    pytest.skip(why)


@pytest.fixture
def small_disk(make_mta, tmp_path):
    """An mtaserver whose data_dir is a 3 MB tmpfs with 200 inodes."""
    if os.geteuid() != 0:
        _cannot("mounting a tmpfs needs root")
    d = tmp_path / "small"
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,nr_inodes=200,mode=0700", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        _cannot(f"cannot mount a tmpfs: {r.stderr.strip()}")
    mta = None
    try:
        mta = make_mta(start=False)
        mta.data_dir = d
        mta.config["server"]["data_dir"] = str(d)
        mta.write_config()
        yield mta.start()
    finally:
        if mta is not None:
            mta.stop()
        subprocess.run(["umount", str(d)], check=False)


def _free(path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _big(size: int) -> bytes:
    line = b"y" * 76 + b"\r\n"
    return b"Subject: big\r\n\r\n" + line * (size // len(line))


def test_message_bigger_than_the_free_space(small_disk):
    mta = small_disk
    assert _free(mta.queue) <= 3 * MB
    with SmtpClient(mta.port, TRUSTED, timeout=20).hello() as c:
        c.expect("MAIL FROM:<s@client.test>", 250)  # no SIZE declared: found out while writing
        c.expect("RCPT TO:<a@example.test>", 250)
        c.expect("DATA", 354)
        c.send(_big(4 * MB) + b".\r\n")
        assert c.reply().line == "452 4.3.1 Insufficient system storage"
        # nothing half-written is left, and the space is back
        assert mta.queued("tmp") == [] and mta.queued() == []
        assert _free(mta.queue) > 2 * MB
        # the session goes on, and a small message fits
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: small\r\n\r\nfits\r\n"))
    assert mta.queued() == [qid]
    assert mta.body(qid).endswith(b"Subject: small\r\n\r\nfits\r\n")
    wait_for_log(mta, "queue file write error")


def test_message_that_fills_the_disk_exactly_while_committing(small_disk):
    """Bodies of every size around the free space: each is either queued whole or refused
    with 452, and the spool never keeps a partial file."""
    mta = small_disk
    free = _free(mta.queue)
    with SmtpClient(mta.port, TRUSTED, timeout=20).hello() as c:
        for size in (free - 64 * 1024, free - 8192, free - 4096, free, free + 4096):
            c.expect("MAIL FROM:<s@client.test>", 250)
            c.expect("RCPT TO:<a@example.test>", 250)
            c.expect("DATA", 354)
            c.send(_big(size) + b".\r\n")
            r = c.reply()
            assert r.code in (250, 452), r
            if r.code == 452:
                assert r.line == "452 4.3.1 Insufficient system storage"
            else:
                qid = queue_id_of(r)
                assert mta.body(qid).endswith(_big(size))
                os.unlink(mta.queue / "incoming" / qid)
            assert mta.queued("tmp") == [] and mta.queued() == []


def test_declared_size_over_the_free_space_is_refused_at_mail(small_disk):
    mta = small_disk
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        assert c.cmd("MAIL FROM:<s@client.test> SIZE=4000000").line == "452 4.3.1 Insufficient system storage"
        assert c.cmd("MAIL FROM:<s@client.test> SIZE=1000").line == "250 2.1.0 Ok"
    wait_for_log(mta, "NOQUEUE: reject: MAIL from unknown[127.0.0.1]: 452 4.3.1 Insufficient system storage")


def test_min_free_on_a_small_disk(make_mta, small_disk):
    small_disk.stop()
    small_disk.config["queue"]["min_free"] = "10M"
    small_disk.write_config()
    restart(small_disk)
    with SmtpClient(small_disk.port, TRUSTED).hello() as c:
        assert c.cmd("MAIL FROM:<s@client.test>").line == "452 4.3.1 Insufficient system storage"


def test_min_free_above_the_free_space(make_mta, tmp_path):
    """queue.min_free: refuse MAIL while the spool has less free space (no root needed)."""
    free = _free(tmp_path)
    mta = make_mta({"queue": {"min_free": free + 1024 * MB}})
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        assert c.cmd("MAIL FROM:<s@client.test>").line == "452 4.3.1 Insufficient system storage"
        assert c.cmd("NOOP").line == "250 2.0.0 Ok"
    mta2 = make_mta({"queue": {"min_free": "1M"}})
    with SmtpClient(mta2.port, TRUSTED).hello() as c:
        assert c.cmd("MAIL FROM:<s@client.test>").line == "250 2.1.0 Ok"


def test_no_inode_left_for_the_spool_file(small_disk):
    """ENOSPC when the queue file cannot even be created (no inode left): the same 452 4.3.1.

    A small message is held in memory until the commit creates its file, so the refusal comes
    after the content, and the session goes on."""
    mta = small_disk
    fill = mta.data_dir / "fill"
    fill.mkdir()
    n = 0
    try:
        while True:
            (fill / str(n)).touch()
            n += 1
    except OSError:
        pass
    with SmtpClient(mta.port, TRUSTED).hello() as c:
        c.open_data()
        c.send(b"Subject: t\r\n\r\nx\r\n.\r\n")
        assert c.reply().line == "452 4.3.1 Insufficient system storage"
        assert mta.queued("tmp") == [] and mta.queued() == []
        for i in range(n):  # space again: the same session goes on
            (fill / str(i)).unlink()
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: t\r\n\r\nx\r\n"))
    assert mta.queued() == [qid]
    wait_for_log(mta, "queue file write error: [Errno 28] No space left on device")
