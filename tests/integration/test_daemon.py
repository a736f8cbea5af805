"""Running as a daemon: the instance lock, the privilege drop to server.user, log targets
(file reopened on SIGUSR1, syslog), log_level on reload, --version (mtaserver/supervisor.py)."""

from __future__ import annotations

import os
import pwd
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import Mta, _children, deep_merge
from helpers import as_root, open_dir_fixture  # noqa: F401  (the fixture open_dir)
from smtpclient import TRUSTED, SmtpClient, queue_id_of, restart, wait_for, wait_for_log

from mtaserver.supervisor import holder_pid


def one_message_sent(port: int) -> str:
    with SmtpClient(port, TRUSTED).hello() as c:
        qid = queue_id_of(c.send_message("s@client.test", ["a@example.test"], b"Subject: t\r\n\r\nx\r\n"))
        c.expect("QUIT", 221)
    return qid


def banner(port: int) -> str:
    with SmtpClient(port, TRUSTED) as c:
        return c.greeting().line


def run_second(mta: Mta, **kw: object) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "mtaserver", "run", "-c", str(mta.config_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=mta.tmp, **kw)  # type: ignore[call-overload]


def gone(pid: int) -> bool:
    """Exited (a zombie waiting for init counts: it holds no file and serves nothing)."""
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def uid_of(pid: int) -> list[int]:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("Uid:"))
    return [int(x) for x in line.split()[1:]]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_instance_on_the_same_data_dir_is_refused_naming_the_pid(make_mta, workers):
    mta = make_mta({"server": {"workers": workers}})
    second = run_second(mta)
    assert second.returncode == 1
    assert f"mtaserver: already running (pid {mta.proc.pid}) on data_dir {mta.data_dir}" in second.stderr
    assert holder_pid(mta.data_dir) == mta.proc.pid
    assert mta.proc.poll() is None and "ready:" in mta.log()  # the first one still serves
    one_message_sent(mta.port)


def test_after_kill9_of_the_whole_tree_a_new_start_works(make_mta):
    mta = make_mta({"server": {"workers": 2}})
    workers = _children(mta.proc.pid)
    mta.kill9()
    wait_for(lambda: all(gone(p) for p in workers), 10, "the killed workers to go")
    assert holder_pid(mta.data_dir) is None  # the kernel dropped the lock with the processes
    restart(mta)
    assert holder_pid(mta.data_dir) == mta.proc.pid
    one_message_sent(mta.port)


def test_workers_stop_when_the_supervisor_is_killed_and_hold_the_lock_until_then(make_mta):
    mta = make_mta({"server": {"workers": 2}})
    workers = _children(mta.proc.pid)
    assert len(workers) == 3  # two SMTP workers and the queue manager's process
    # One worker is stopped (SIGSTOP): the SIGTERM its parent's death sends it waits for SIGCONT.
    os.kill(workers[0], signal.SIGSTOP)
    os.kill(mta.proc.pid, signal.SIGKILL)
    mta.proc.wait()
    wait_for(lambda: all(gone(p) for p in workers[1:]), 40, "the orphaned workers to stop (SIGTERM on parent death)")
    # The one left holds the lock: nothing else may serve this data_dir beside it.
    second = run_second(mta)
    assert second.returncode == 1 and "already running" in second.stderr
    assert holder_pid(mta.data_dir) is not None
    os.kill(workers[0], signal.SIGCONT)
    wait_for(lambda: gone(workers[0]), 40, "the last orphaned worker to stop")
    assert holder_pid(mta.data_dir) is None
    log = mta.log()
    for pid in workers:
        assert re.search(rf"\[{pid}\]: (worker \d+ stopping|queue manager stopped)", log), pid
    mta.proc = None
    restart(mta)
    one_message_sent(mta.port)


@pytest.mark.parametrize("workers", [1, 2])
def test_server_user_workers_run_as_it_and_own_the_queue(open_dir, workers):
    as_root()
    nobody = pwd.getpwnam("nobody")
    mta = Mta(open_dir, {"server": {"workers": workers, "user": "nobody"}})
    try:
        mta.start()
        serving = _children(mta.proc.pid)  # under server.user a supervisor even with workers: 1 (it writes the config)
        assert len(serving) == workers + 1  # the SMTP workers and the queue manager's process
        for pid in serving:
            assert uid_of(pid) == [nobody.pw_uid] * 4, pid
        assert uid_of(mta.proc.pid)[0] == 0  # the supervisor stays root: it forks, signals, writes the config file
        qid = one_message_sent(mta.port)
        st = os.stat(mta.queue / "incoming" / qid)
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
        for p in (mta.data_dir, mta.queue, mta.data_dir / "mtaserver.lock"):
            assert os.stat(p).st_uid == nobody.pw_uid, p
        # A root-owned file left in data_dir (a previous run as root) is given to the user at start.
        stray = mta.queue / "deferred" / "stray"
        stray.write_bytes(b"x")
        mta.stop()
        restart(mta)
        assert os.stat(stray).st_uid == nobody.pw_uid
    finally:
        mta.stop()


def test_server_user_needs_root_and_an_existing_user(open_dir):
    as_root()
    mta = Mta(open_dir, {"server": {"user": "nobody"}})
    nobody = pwd.getpwnam("nobody")
    other = pwd.getpwnam("daemon")

    def become_daemon() -> None:
        os.setgid(other.pw_gid)
        os.setuid(other.pw_uid)

    mta.config_path.chmod(0o644)
    out = run_second(mta, preexec_fn=become_daemon)
    assert out.returncode == 1
    assert f"running as uid {other.pw_uid}, not root: cannot switch to nobody (uid {nobody.pw_uid})" in out.stderr
    mta.write_config({**mta.config, "server": {**mta.config["server"], "user": "no-such-user-here"}})
    out = subprocess.run([sys.executable, "-m", "mtaserver", "check-config", "-c", str(mta.config_path)],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 1 and re.search(r":\d+: server\.user: no such user: 'no-such-user-here'", out.stderr)


def test_started_as_a_plain_user_with_user_null_it_works(open_dir):
    as_root()
    other = pwd.getpwnam("daemon")
    mta = Mta(open_dir, {})
    os.chown(open_dir, other.pw_uid, other.pw_gid)  # its data_dir and log are created there
    mta.config_path.chmod(0o644)

    def become_daemon() -> None:
        os.setgid(other.pw_gid)
        os.setuid(other.pw_uid)

    logf = open(mta.log_path, "ab")
    mta.proc = subprocess.Popen([sys.executable, "-m", "mtaserver", "run", "-c", str(mta.config_path)],
                                stdout=logf, stderr=subprocess.STDOUT, cwd=mta.tmp, preexec_fn=become_daemon)  # fmt: skip
    try:
        wait_for_log(mta, "ready:", 15)
        qid = one_message_sent(mta.port)
        assert os.stat(mta.queue / "incoming" / qid).st_uid == other.pw_uid
    finally:
        mta.stop()
        logf.close()


def test_log_file_is_reopened_on_sigusr1_in_every_process(make_mta):
    mta = make_mta({"server": {"workers": 2}}, start=False)
    logfile = mta.tmp / "logs" / "mta.log"
    logfile.parent.mkdir()
    mta.config["advanced"] = {"log_target": "file", "log_file": "logs/mta.log"}  # relative to the config file
    mta.write_config()
    mta.log_path = logfile  # Mta.start waits for "ready:" there
    mta.start()
    pids = {mta.proc.pid, *_children(mta.proc.pid)}
    rotated = logfile.with_name("mta.log.1")
    logfile.rename(rotated)
    mta.signal(signal.SIGUSR1)
    wait_for(logfile.exists, 5, "the supervisor to open a new log file")
    mta.signal(signal.SIGHUP)  # every process logs its reload (after its reopen): each must write to the new file
    log = wait_for_log(mta, re.compile(r"(?s)(reload: applied.*){3}"), 10)
    writers = {int(m) for m in re.findall(r"mtaserver/\w+\[(\d+)\]: reload: applied", log)}
    assert writers == pids - {mta.proc.pid}  # both SMTP workers and the queue manager
    assert "reload: applied" not in rotated.read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} mtaserver/\w+\[\d+\]: ", log, re.MULTILINE)


def test_syslog_target_sends_mail_facility_datagrams(make_mta):
    path = tempfile.mktemp(prefix="mtaserver-syslog-", dir="/tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        sock.settimeout(10)
        mta = make_mta({"advanced": {"log_target": "syslog", "syslog_socket": path}}, start=False)
        mta.proc = subprocess.Popen([sys.executable, "-m", "mtaserver", "run", "-c", str(mta.config_path)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=mta.tmp)  # fmt: skip
        lines = []
        while not any("ready:" in x for x in lines):
            lines.append(sock.recv(65536).decode())
        # <22>: facility mail (2) * 8 + info (6); tagged like Postfix's "postfix/smtpd[pid]: "
        assert any(re.fullmatch(rf"<22>mtaserver/master\[{mta.proc.pid}\]: worker 0 ready: .*\x00", x) for x in lines), lines
    finally:
        sock.close()
        os.unlink(path)


def test_log_level_applies_on_reload(make_mta):
    mta = make_mta()
    config = mta.config
    quiet = deep_merge(config, {"advanced": {"log_level": "error"}, "server": {"banner": "{hostname} ESMTP quiet"}})
    mta.write_config(quiet)
    mta.signal(signal.SIGHUP)  # its own "reload: applied" (info) is already below the new level
    wait_for(lambda: "quiet" in banner(mta.port), 10, "the first reload")
    mta.write_config({**config, "advanced": {"log_level": "info"}})
    mta.signal(signal.SIGHUP)
    log = wait_for_log(mta, "reload: applied", 10)
    assert log.count("reload: applied") == 1 and re.search(r"changed .*advanced\.log_level", log)


def test_version():
    out = subprocess.run([sys.executable, "-m", "mtaserver", "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and re.fullmatch(r"mtaserver \d+\.\d+\S*\n", out.stdout)
