#!/usr/bin/env python3
"""Benchmark: mtaserver against a throwaway Postfix doing the same job, driven by smtp-source.

DESCRIPTION
    Sets up, in a throwaway directory under bench/out/, a Postfix instance of its own
    (`postfix -c DIR`, own queue_directory and data_directory, loopback port, relaying
    bench.test to an smtp-sink) and an mtaserver (`.venv/bin/mtaserver run -c FILE`, relaying
    bench.test to a second smtp-sink), exactly as shared/BENCH-NOTES.md describes. Then, for
    each scenario (message size x concurrent sessions x messages per session) and each
    repetition, it drives both servers in turn, interleaved, with Postfix's smtp-source and
    measures:

      accepted/s   messages / wall time of the load generator (every message got its 250)
      e2e/s        messages / time until the server's sink has counted them all
      CPU          user+sys seconds of all the server's processes per 1,000 messages, from the
                   start of the load to the end state (sink count for a delivering server,
                   last 250 otherwise); a cgroup v2 directory when writable, else /proc sums

    mtaserver is started before and stopped after every run, and its data dir emptied, so
    its queue never grows past one run even when it does not deliver. Whether it delivers is
    detected on its first warm-up (its sink counts the messages; delivery landed in
    bd40457) and then e2e is measured for it the same way as for Postfix; before that, or
    with --mta-delivery no (queue.manager: false), e2e is "n/a" and the numbers are
    accept-only.

    Medians over the repetitions go to a Markdown table, printed and written with the
    machine description to bench/out/results-<time>.md (raw runs in a .json next to it).

    Stdlib only; run with the project's venv python (`make bench` does). Needs root: it
    installs missing packages (postfix with the "No configuration" preseed, swaks) and
    runs Postfix. Network traffic is loopback only; every process it starts it stops by PID
    (Postfix with `postfix -c DIR stop`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
REPO = BENCH.parent
SBIN = Path("/usr/sbin")
SMTP_SOURCE = str(SBIN / "smtp-source")
SMTP_SINK = str(SBIN / "smtp-sink")
POSTFIX = str(SBIN / "postfix")
SENDER = "sender@client.test"
RCPT = "rcpt@bench.test"
HELO = "client.test"
PRESEED = "postfix postfix/main_mailer_type select No configuration\n"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Scenarios.


@dataclass(frozen=True)
class Scenario:
    size_kb: int
    sessions: int
    per_conn: int
    messages: int

    @property
    def name(self) -> str:
        return f"{self.size_kb}k-s{self.sessions}-m{self.per_conn}"

    @property
    def size(self) -> int:
        return self.size_kb * 1024


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    out = []
    for size_kb, count in ((1, args.messages_1k), (100, args.messages_100k)):
        for per_conn in (1, 10):
            for sessions in (1, 10, 50):
                n = count - count % per_conn  # whole sessions only
                out.append(Scenario(size_kb, sessions, per_conn, n))
    if args.scenario:
        pats = [p.strip() for x in args.scenario for p in x.split(",") if p.strip()]
        out = [s for s in out if any(fnmatch.fnmatchcase(s.name, p) for p in pats)]
        if not out:
            raise BenchError(f"--scenario {args.scenario} matches none of the scenarios (names like 1k-s10-m1, 100k-s50-m10)")
    return out


# ---------------------------------------------------------------------------------------------
# Small helpers.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def fill(template: Path, dest: Path, values: dict[str, str]) -> None:
    text = template.read_text()
    for k, v in values.items():
        text = text.replace(f"@{k}@", v)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise BenchError(f"{template}: unfilled placeholders {sorted(set(left))}")
    dest.write_text(text)


def proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, user+sys+cutime+cstime seconds) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            raw = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        # fields after "(comm)": state ppid ... utime(14) stime(15) cutime(16) cstime(17)
        ppid = int(rest[1])
        ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
        out[int(d)] = (ppid, ticks / CLK_TCK)
    return out


def tree_pids(root: int, table: dict[int, tuple[int, float]] | None = None) -> list[int]:
    table = table if table is not None else proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out, todo = [], [root] if root in table else []
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def kill_pids(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------------------------
# CPU accounting: a cgroup v2 directory per server, or /proc sums of the process tree.


def cgroup2_mount() -> Path | None:
    try:
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) > 2 and parts[2] == "cgroup2":
                return Path(parts[1])
    except OSError:
        pass
    return None


class CpuMeter:
    """CPU seconds of everything one server runs. `preexec` goes into its launcher's Popen."""

    def __init__(self, name: str, method: str) -> None:
        self.name = name
        self.cgroup: Path | None = None
        self.root_pid: int | None = None  # proc method: the tree's root
        if method in ("auto", "cgroup"):
            mnt = cgroup2_mount()
            try:
                if mnt is None:
                    raise OSError("no cgroup2 mount")
                path = mnt / f"mtabench-{os.getpid()}-{name}"
                path.mkdir()
                (path / "cpu.stat").read_text()
                self.cgroup = path
            except OSError as exc:
                if method == "cgroup":
                    raise BenchError(f"cannot create a cgroup v2 directory: {exc}") from exc
        self.method = "cgroup" if self.cgroup else "proc"

    def preexec(self) -> None:
        if self.cgroup is not None:
            with open(self.cgroup / "cgroup.procs", "w") as f:
                f.write("0")

    def seconds(self) -> float:
        if self.cgroup is not None:
            for line in (self.cgroup / "cpu.stat").read_text().splitlines():
                k, _, v = line.partition(" ")
                if k == "usage_usec":
                    return int(v) / 1e6
            raise BenchError("cpu.stat has no usage_usec")
        if self.root_pid is None:
            return 0.0
        table = proc_table()
        return sum(table[p][1] for p in tree_pids(self.root_pid, table))

    def pids(self) -> list[int]:
        if self.cgroup is not None:
            try:
                return [int(x) for x in (self.cgroup / "cgroup.procs").read_text().split()]
            except OSError:
                return []
        return tree_pids(self.root_pid) if self.root_pid else []

    def close(self) -> None:
        """Every process we started in here must be gone; stragglers are killed by PID."""
        if self.cgroup is None:
            return
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            deadline = time.monotonic() + 5
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.1)
            left = self.pids()
            if not left:
                break
            if sig is not None:
                log(f"{self.name}: {len(left)} leftover process(es) {left}: sending {signal.Signals(sig).name}")
                kill_pids(left, sig)
        try:
            self.cgroup.rmdir()
        except OSError as exc:
            log(f"warning: cannot remove {self.cgroup}: {exc}")


# ---------------------------------------------------------------------------------------------
# smtp-sink: one per server, counting the messages it receives.


class Sink:
    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.out_path = workdir / f"sink-{name}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        out = open(self.out_path, "wb")
        # -c: running counters on stdout ("sess=N quit=N mesg=N\r"), updated at every ".".
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-c", "-u", "nobody", "-m", "1000", f"127.0.0.1:{self.port}", "1024"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        out.close()
        if not wait_port(self.port, 10):
            raise BenchError(f"smtp-sink for {self.name} did not listen on {self.port}")

    def count(self) -> int:
        try:
            with open(self.out_path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - 400))
                tail = f.read()
        except OSError:
            return 0
        found = re.findall(rb"mesg=(\d+)", tail)
        return int(found[-1]) if found else 0

    def wait_count(self, target: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count() < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---------------------------------------------------------------------------------------------
# Log parsing: connections, messages accepted, messages per connection.


@dataclass
class LogStats:
    connections: int = 0
    accepted: int = 0
    per_conn: dict[int, int] = field(default_factory=dict)  # data= count -> number of sessions

    def describe(self) -> str:
        hist = ", ".join(f"{k}x{v}" for k, v in sorted(self.per_conn.items()))
        return f"conns={self.connections} accepted={self.accepted} msgs/conn={{{hist}}}"


def parse_log(text: str, program: str) -> LogStats:
    """`program` is the syslog-style tag: "postfix/smtpd" or "mtaserver/smtpd"."""
    tag = re.escape(program) + r"\[\d+\]: "
    st = LogStats()
    st.connections = len(re.findall(tag + r"connect from ", text))
    st.accepted = len(re.findall(tag + r"[0-9A-Z]+: client=", text))
    for m in re.finditer(tag + r"disconnect from .*?\bdata=(\d+)(?:/\d+)?", text):
        n = int(m.group(1))
        st.per_conn[n] = st.per_conn.get(n, 0) + 1
    return st


def read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---------------------------------------------------------------------------------------------
# The load: smtp-source.


LOADS: set[subprocess.Popen[bytes]] = set()  # smtp-source processes started by lane threads


def stop_loads() -> None:
    """After an interrupt: the lanes' smtp-source processes, by PID."""
    for p in list(LOADS):
        if p.poll() is None:
            p.kill()
            p.wait()


def source_cmd(port: int, size: int, sessions: int, messages: int, *, keep: bool) -> list[str]:
    cmd = [SMTP_SOURCE, "-l", str(size), "-f", SENDER, "-t", RCPT, "-M", HELO, "-s", str(sessions), "-m", str(messages)]
    if keep:
        cmd.append("-d")
    return cmd + [f"127.0.0.1:{port}"]


@dataclass
class LoadResult:
    seconds: float
    errors: list[str]
    client_cpu: float  # smtp-source user+sys


def drive(port: int, sc: Scenario, messages: int | None = None, sessions: int | None = None) -> LoadResult:
    """Send the scenario's load and return when the last message got its reply.

    One message per session: one `smtp-source -s S -m N` (it reconnects for every message).
    K messages per session: smtp-source -d spreads -m over its -s sessions unevenly (each
    session takes the next message while any is left), so instead S lanes each run
    `smtp-source -d -s 1 -m K` (one connection, exactly K messages, then QUIT) again and
    again until N/K connections have been made. The server logs confirm K per connection.
    """
    n = sc.messages if messages is None else messages
    s = sc.sessions if sessions is None else sessions
    errors: list[str] = []
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    if sc.per_conn == 1:
        p = subprocess.run(source_cmd(port, sc.size, s, n, keep=False), stdin=subprocess.DEVNULL, capture_output=True)
        if p.returncode != 0:
            errors.append(f"exit {p.returncode}: {p.stderr.decode(errors='replace').strip()[-500:]}")
    else:
        jobs = n // sc.per_conn
        lock = threading.Lock()
        state = {"next": 0}
        cmd = source_cmd(port, sc.size, 1, sc.per_conn, keep=True)

        def lane() -> None:
            while True:
                with lock:
                    if state["next"] >= jobs or len(errors) > 10:
                        return
                    state["next"] += 1
                p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                LOADS.add(p)
                try:
                    _, err = p.communicate()
                finally:
                    LOADS.discard(p)
                if p.returncode != 0:
                    with lock:
                        errors.append(f"exit {p.returncode}: {err.decode(errors='replace').strip()[-300:]}")

        threads = [threading.Thread(target=lane, daemon=True) for _ in range(min(s, jobs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    seconds = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return LoadResult(seconds, errors, client_cpu)


# ---------------------------------------------------------------------------------------------
# --filters: one spamd and one clamd for both servers; Postfix reaches them through milters.


class Scanners:
    """spamd and clamd as the test suite runs them (tests/integration/scanners.py: stock
    SpamAssassin rules without network tests, a clamd with a one-signature database), shared by
    both servers, plus spamass-milter and clamav-milter for Postfix. Stopped by PID."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "scanners"
        self.dir.mkdir()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.spamd = self.clamd = None
        self.spamass_port = free_port()
        self.clamav_milter_port = free_port()

    def start(self, milter_preexec: Callable[[], None] | None) -> None:
        """`milter_preexec` puts the milters in Postfix's CPU accounting: they do for it what
        mtaserver's chain does in its own processes (spamd and clamd are counted for neither)."""
        self.milter_preexec = milter_preexec
        sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
        from scanners import Clamd, Spamd  # noqa: PLC0415  (the test suite's own launchers)

        self.spamd = Spamd(children=5).start()  # spamd's default --max-children
        self.clamd = Clamd().start()
        conf = self.dir / "clamav-milter.conf"
        conf.write_text(
            f"MilterSocket inet:{self.clamav_milter_port}@127.0.0.1\nClamdSocket tcp:{self.clamd.host}:{self.clamd.port}\n"
            f"Foreground yes\nOnInfected Reject\nOnFail Defer\nAddHeader No\nLogFile {self.dir}/clamav-milter.log\n"
            f"PidFile {self.dir}/clamav-milter.pid\nTemporaryDirectory {self.dir}\nMaxFileSize 25M\n"
        )  # fmt: skip
        self._spawn("clamav-milter", [str(SBIN / "clamav-milter"), f"--config-file={conf}"])
        self._spawn("spamass-milter", [str(SBIN / "spamass-milter"), "-p", f"inet:{self.spamass_port}@127.0.0.1", "-r", "15",
                                       "--", "-d", self.spamd.host, "-p", str(self.spamd.port)])  # fmt: skip
        for port in (self.clamav_milter_port, self.spamass_port):
            if not wait_port(port, 20):
                raise BenchError(f"a milter did not listen on 127.0.0.1:{port}; see {self.dir}")
        log(f"scanners: spamd {self.spamd.address}, clamd {self.clamd.address}; milters for Postfix on "
            f"{self.spamass_port} (spamass-milter) and {self.clamav_milter_port} (clamav-milter)")  # fmt: skip

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.dir / f"{name}.out", "wb")
        self.procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir,
                                           preexec_fn=self.milter_preexec))  # fmt: skip
        out.close()

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        for d in (self.spamd, self.clamd):
            if d is not None:
                d.stop(keep_log_in=self.dir)


# ---------------------------------------------------------------------------------------------
# The servers.


class Server:
    name = "?"
    log_program = "?"
    delivers = True

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = workdir / self.name
        self.dir.mkdir(parents=True)
        self.sink = Sink(self.name, workdir)
        self.cpu = CpuMeter(self.name, args.cpu_method)
        self.port = free_port()
        self.scanners: Scanners | None = None  # --filters

    # Per-run life cycle; Postfix runs throughout, mtaserver is restarted around each run.
    def setup(self) -> None: ...
    def before_run(self, sc: Scenario) -> None: ...
    def after_run(self, sc: Scenario) -> dict: return {}
    def teardown(self) -> None: ...
    def log_path(self) -> Path: raise NotImplementedError

    def smoke_test(self) -> None:
        """One message with swaks: the relay setup accepts bench.test before we time anything."""
        swaks = shutil.which("swaks")
        if swaks is None:
            return
        p = subprocess.run(
            [swaks, "--server", f"127.0.0.1:{self.port}", "--from", SENDER, "--to", RCPT, "--helo", HELO,
             "--header", "Subject: bench smoke test", "--timeout", "20"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
        )  # fmt: skip
        if p.returncode != 0:
            raise BenchError(f"{self.name}: swaks smoke test failed (exit {p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-1000:]}")
        log(f"{self.name}: swaks smoke test ok ({p.stdout.count(chr(10))} lines of SMTP dialogue)")


class Postfix(Server):
    name = "postfix"
    log_program = "postfix/smtpd"

    def setup(self) -> None:
        conf, queue, data = self.dir / "conf", self.dir / "queue", self.dir / "data"
        for d in (conf, queue, data):
            d.mkdir()
        self.conf = conf
        self.queue = queue
        self.maillog = self.dir / "maillog"
        values = {
            "QUEUE_DIR": str(queue), "DATA_DIR": str(data), "SINK_PORT": str(self.sink.port),
            "MAILLOG": str(self.maillog), "WORK_DIR": str(self.dir), "LISTEN": f"127.0.0.1:{self.port}",
        }  # fmt: skip
        fill(BENCH / "postfix" / "main.cf", conf / "main.cf", values)
        fill(BENCH / "postfix" / "master.cf", conf / "master.cf", values)
        if self.args.postscreen:
            # postscreen takes the port and hands clients that pass to smtpd ("smtpd pass").
            master = (conf / "master.cf").read_text()
            listen = f"127.0.0.1:{self.port} inet n       -       n       -       -       smtpd"
            if listen not in master:
                raise BenchError(f"bench/postfix/master.cf: no line {listen!r} to put postscreen in front of")
            master = master.replace(listen, "\n".join([
                f"127.0.0.1:{self.port} inet  n       -       n       -       1       postscreen",
                "smtpd     pass  -       -       n       -       -       smtpd",
                "dnsblog   unix  -       -       n       -       0       dnsblog",
                "tlsproxy  unix  -       -       n       -       0       tlsproxy",
            ]))  # fmt: skip
            (conf / "master.cf").write_text(master)
            with open(conf / "main.cf", "a") as f:
                f.write("\n" + (BENCH / "postfix" / "postscreen.cf").read_text())
        if self.scanners is not None:
            with open(conf / "main.cf", "a") as f:
                f.write("\n" + (BENCH / "postfix" / "filters.cf").read_text()
                        .replace("@SPAMASS_PORT@", str(self.scanners.spamass_port))
                        .replace("@CLAMAV_MILTER_PORT@", str(self.scanners.clamav_milter_port)))  # fmt: skip
        self.sink.start()
        self._postfix("set-permissions")
        self._postfix("check")
        self.started = True  # from here on teardown runs `postfix stop`, whatever happens next
        self._postfix("start", cgroup=True)
        pidfile = queue / "pid" / "master.pid"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not (pidfile.exists() and pidfile.read_text().strip()):
            time.sleep(0.05)
        self.master_pid = int(pidfile.read_text().strip())
        self.cpu.root_pid = self.master_pid
        if not wait_port(self.port, 15):
            raise BenchError(f"postfix did not listen on 127.0.0.1:{self.port}; see {self.maillog}")
        log(f"postfix: master pid {self.master_pid}, smtpd on 127.0.0.1:{self.port}, sink on {self.sink.port}, config {conf}")

    def _postfix(self, command: str, *, cgroup: bool = False) -> None:
        cmd = [POSTFIX, "-c", str(self.conf), command]
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           preexec_fn=self.cpu.preexec if cgroup else None)  # fmt: skip
        if p.returncode != 0:
            # postfix(1) prints its fatal message only to a terminal (or syslog); get it from a pty.
            why = ""
            if shutil.which("script"):
                q = subprocess.run(["script", "-qec", shlex.join([POSTFIX, "-c", str(self.conf), "check"]), "/dev/null"],
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True)  # fmt: skip
                why = q.stdout.strip()
            raise BenchError(f"{shlex.join(cmd)} failed (exit {p.returncode}): {p.stdout}{p.stderr}{why}")

    def log_path(self) -> Path:
        return self.maillog

    def teardown(self) -> None:
        if getattr(self, "started", False):
            try:
                self._postfix("stop")
            except BenchError as exc:
                log(f"postfix stop: {exc}")
            self.started = False
        if getattr(self, "master_pid", 0):
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and Path(f"/proc/{self.master_pid}").exists():
                time.sleep(0.1)
            if Path(f"/proc/{self.master_pid}").exists():
                left = tree_pids(self.master_pid)
                log(f"postfix: still running after stop, killing {left}")
                kill_pids(left, signal.SIGKILL)
            self.master_pid = 0


class Mtaserver(Server):
    name = "mtaserver"
    log_program = "mtaserver/smtpd"

    def __init__(self, workdir: Path, args: argparse.Namespace) -> None:
        super().__init__(workdir, args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.delivers = {"yes": True, "no": False}.get(args.mta_delivery, None)  # None: detect
        self.runs = 0
        self._log: Path | None = None
        self.last_log: Path | None = None

    @property
    def workers(self) -> int:
        w = self.args.workers
        return (os.cpu_count() or 1) if w in (None, "auto") else int(w)

    def setup(self) -> None:
        self.data = self.dir / "var"
        self.config = self.dir / "mtaserver.yaml"
        fill(BENCH / "mtaserver.yaml", self.config, {
            "DATA_DIR": str(self.data), "WORKERS": str(self.args.workers or "auto"), "PORT": str(self.port),
            "SINK_PORT": str(self.sink.port), "ADMIN_PORT": str(free_port()),
            "POSTSCREEN": "true" if self.args.postscreen else "false",
            # With --filters, the same scanners as the Postfix side's milters (bench/postfix/filters.cf).
            "ANTISPAM": f'{{enabled: true, spamd: {{address: "{self.scanners.spamd.address}"}}, blocked_spam_action: reject}}'
            if self.scanners else "{enabled: false}",
            "ANTIVIRUS": f'{{enabled: true, clamd: {{address: "{self.scanners.clamd.address}"}}}}' if self.scanners else "{enabled: false}",
        })  # fmt: skip
        if self.args.postscreen:
            # The same screening as the Postfix side (bench/postfix/postscreen.cf).
            with open(self.config, "a") as f:
                f.write("postscreen:\n  access_list: []\n  greet: {wait: 6s, action: enforce}\n")
        if self.args.mta_delivery == "no":
            # Receive and queue only (queue.manager: false): the accept-only numbers.
            with open(self.config, "a") as f:
                f.write("queue:\n  manager: false\n")
        p = subprocess.run([*mtaserver_cmd(), "check-config", "-c", str(self.config)], capture_output=True, text=True)
        if p.returncode != 0:
            raise BenchError(f"mtaserver check-config -c {self.config} failed:\n{p.stdout}{p.stderr}")
        self.sink.start()
        log(f"mtaserver: {self.workers} worker(s), smtpd on 127.0.0.1:{self.port}, sink on {self.sink.port}, config {self.config}")

    def start(self, tag: str) -> None:
        self.runs += 1
        self._log = self.dir / f"mtaserver-{self.runs:03d}-{tag}.log"
        out = open(self._log, "wb")
        self.proc = subprocess.Popen(
            [*mtaserver_cmd(), "run", "-c", str(self.config)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir,
            preexec_fn=self.cpu.preexec,
        )  # fmt: skip
        out.close()
        self.cpu.root_pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            text = read_from(self._log, 0)
            if text.count(" ready: ") >= self.workers:
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"mtaserver did not start (exit {self.proc.poll()}):\n{text[-3000:]}")
            time.sleep(0.05)
        if not wait_port(self.port, 10):
            raise BenchError("mtaserver logged ready but does not accept connections")

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = tree_pids(self.proc.pid)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(45)
            except subprocess.TimeoutExpired:
                log("mtaserver: no exit 45 s after SIGTERM, killing its processes")
                kill_pids(tree_pids(self.proc.pid) or pids, signal.SIGKILL)
                self.proc.wait()
        # Workers forked by the supervisor must be gone too.
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{p}").exists() and p != self.proc.pid for p in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        kill_pids([p for p in pids if p != self.proc.pid and Path(f"/proc/{p}").exists()], signal.SIGKILL)
        self.proc = None

    def log_path(self) -> Path:
        assert self._log is not None
        return self._log

    def before_run(self, sc: Scenario) -> None:
        # An empty queue for every run; the postscreen cache (data_dir) stays warm.
        shutil.rmtree(self.data / "queue", ignore_errors=True)
        self.start(sc.name)

    def after_run(self, sc: Scenario) -> dict:
        self.stop()
        self.last_log = self._log
        q = self.data / "queue"
        left = {st: len(os.listdir(q / st)) for st in ("incoming", "active", "deferred", "hold", "corrupt") if (q / st).is_dir()}
        # Every run starts with an empty queue: without delivery it would only grow.
        shutil.rmtree(q, ignore_errors=True)
        return {"queue_at_stop": left}

    def teardown(self) -> None:
        self.stop()
        shutil.rmtree(getattr(self, "data", self.dir / "var"), ignore_errors=True)


MTA_SRC: Path | None = None  # --src: run mtaserver from this source tree instead of the installed one


def mtaserver_cmd() -> list[str]:
    if MTA_SRC is not None:
        return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(MTA_SRC)!r}); "
                "from mtaserver.cli import main; sys.exit(main())"]  # fmt: skip
    exe = REPO / ".venv" / "bin" / "mtaserver"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mtaserver"]


# ---------------------------------------------------------------------------------------------
# One measured run.


@dataclass
class Run:
    server: str
    scenario: str
    rep: int
    messages: int
    accept_s: float
    accepted_rate: float
    e2e_s: float | None
    e2e_rate: float | None
    cpu_s: float
    cpu_per_1000: float
    cpu_window: str
    client_cpu_s: float
    log: dict
    errors: list[str]
    extra: dict
    profiled: bool = False


def prime_postscreen(server: Server) -> None:
    """One session that sits through the greet wait, so that every timed client is PASS OLD."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        f = s.makefile("rb")
        while True:
            line = f.readline()
            if not line:
                raise BenchError(f"{server.name}: postscreen closed the priming session")
            if line.startswith(b"220 "):
                break
        s.sendall(b"QUIT\r\n")
        f.readline()
    server.primed = True
    log(f"{server.name}: postscreen cache primed (first session waited {time.monotonic() - t0:.1f} s)")


def measure(server: Server, sc: Scenario, rep: int, args: argparse.Namespace) -> Run:
    server.before_run(sc)
    if args.postscreen and not getattr(server, "primed", False):
        prime_postscreen(server)
    # Warm-up (not timed): as many sessions as the scenario, two messages per session.
    warm = 2 * sc.sessions
    sink_before = server.sink.count()
    warm_off = file_size(server.log_path())
    w = drive(server.port, Scenario(sc.size_kb, sc.sessions, 1, warm))
    if w.errors:
        raise BenchError(f"{server.name}: warm-up failed: {w.errors[:3]}")
    wait_log(server, warm_off, warm, warm)  # so that no warm-up line lands in the run's part of the log
    delivers = server.delivers
    if delivers is None:  # mtaserver, first run: find out whether it delivers at all
        delivers = server.sink.wait_count(sink_before + 1, args.detect_wait)
        server.delivers = delivers
        log(f"{server.name}: delivery {'detected (its sink counted the warm-up)' if delivers else 'not detected: e2e is n/a (no delivery yet)'}")
    if delivers and not server.sink.wait_count(sink_before + warm, 60):
        raise BenchError(f"{server.name}: warm-up not delivered in 60 s (sink {server.sink.count()}/{sink_before + warm})")
    os.sync()  # earlier runs' queue files and deletes hit the disk now, not during this run
    time.sleep(0.3)

    log_off = file_size(server.log_path())
    sink0 = server.sink.count()
    cpu0 = server.cpu.seconds()
    t0 = time.monotonic()
    profiler = start_profiler(server, sc, args) if args.profile and isinstance(server, Mtaserver) else None
    load = drive(server.port, sc)
    accept_s = load.seconds
    e2e_s = None
    if delivers:
        timeout = 60 + sc.messages / 20
        if server.sink.wait_count(sink0 + sc.messages, timeout):
            e2e_s = time.monotonic() - t0
        else:
            load.errors.append(f"sink counted {server.sink.count() - sink0}/{sc.messages} after {timeout:.0f} s")
    cpu_s = server.cpu.seconds() - cpu0
    if profiler is not None:
        finish_profiler(profiler)
    stats = wait_log(server, log_off, sc.messages, sc.messages // sc.per_conn)
    expected_conns = sc.messages // sc.per_conn
    screened = None
    if args.postscreen:
        # Every timed session must find its client in the cache (no greet wait). Postfix's
        # postscreen drops some of its log records under load (postlogd's datagram socket
        # queue is net.unix.max_dgram_qlen = 10 deep here), so its PASS OLD count is a floor;
        # a PASS NEW in the window would mean a client that waited.
        text = read_from(server.log_path(), log_off)
        screened = {"pass_old": text.count("PASS OLD"), "pass_new": text.count("PASS NEW")}
        if screened["pass_new"] or (isinstance(server, Mtaserver) and screened["pass_old"] != expected_conns):
            load.errors.append(f"postscreen: {screened} for {expected_conns} connections (cache not warm?)")
    extra = server.after_run(sc)
    if screened is not None:
        extra["postscreen"] = screened
    if stats.accepted != sc.messages:
        load.errors.append(f"server log shows {stats.accepted} accepted, expected {sc.messages}")
    if stats.connections != expected_conns or stats.per_conn != {sc.per_conn: expected_conns}:
        load.errors.append(f"expected {expected_conns} connections of {sc.per_conn} message(s), log shows {stats.describe()}")
    left = extra.get("queue_at_stop")
    if left is not None:
        waiting = left.get("incoming", 0) + left.get("active", 0) + left.get("deferred", 0)
        if not delivers and waiting != sc.messages + warm:
            load.errors.append(f"queue held {left} at stop, expected {sc.messages + warm} messages")
        if delivers and (left.get("deferred") or left.get("hold") or left.get("corrupt")):
            load.errors.append(f"queue held {left} at stop: deliveries deferred or failed")
    return Run(
        server=server.name, scenario=sc.name, rep=rep, messages=sc.messages,
        accept_s=accept_s, accepted_rate=sc.messages / accept_s,
        e2e_s=e2e_s, e2e_rate=(sc.messages / e2e_s) if e2e_s else None,
        cpu_s=cpu_s, cpu_per_1000=cpu_s * 1000 / sc.messages,
        cpu_window="load start to last delivery" if delivers else "load start to last 250",
        client_cpu_s=load.client_cpu, log=asdict(stats), errors=load.errors, extra=extra,
        profiled=profiler is not None,
    )  # fmt: skip


def wait_log(server: Server, offset: int, messages: int, sessions: int, timeout: float = 10) -> LogStats:
    """The server's log from `offset` once it shows `messages` accepted and `sessions` ended.

    Postfix's postlogd writes asynchronously, and a server may log "disconnect" just after
    the client has its 221, so the log can lag the load by a moment.
    """
    deadline = time.monotonic() + timeout
    while True:
        stats = parse_log(read_from(server.log_path(), offset), server.log_program)
        if stats.accepted >= messages and sum(stats.per_conn.values()) >= sessions or time.monotonic() > deadline:
            return stats
        time.sleep(0.05)


# ---------------------------------------------------------------------------------------------
# Profiling mtaserver with py-spy (optional, --profile SECONDS).


def start_profiler(server: Server, sc: Scenario, args: argparse.Namespace) -> dict | None:
    pyspy = REPO / ".venv" / "bin" / "py-spy"
    if not pyspy.exists():
        pyspy = Path(shutil.which("py-spy") or "")
    if not pyspy.name:
        log("py-spy not found: .venv/bin/pip install py-spy")
        return None
    assert isinstance(server, Mtaserver) and server.proc is not None
    outdir = BENCH / "profiles"
    outdir.mkdir(exist_ok=True)
    stem = f"mtaserver-{sc.name}-w{server.workers}"
    raw = outdir / f"{stem}.collapsed.txt"
    # --nonblocking: sampling without pausing the processes (blocking mode halved throughput).
    cmd = [str(pyspy), "record", "--pid", str(server.proc.pid), "--subprocesses", "--threads", "--nonblocking",
           "--rate", "100", "--duration", str(args.profile), "--format", "raw", "--output", str(raw)]  # fmt: skip
    errf = open(args.out / f"{stem}.py-spy.log", "wb")
    proc = subprocess.Popen(cmd, stdout=errf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    errf.close()
    log(f"py-spy recording {args.profile} s of pid {server.proc.pid} and its workers -> {raw}")
    return {"proc": proc, "raw": raw, "summary": outdir / f"{stem}.summary.txt", "cmd": cmd}


def finish_profiler(p: dict) -> None:
    try:
        p["proc"].wait(120)
    except subprocess.TimeoutExpired:
        log("py-spy still running after 120 s, stopping it")
        p["proc"].terminate()
        p["proc"].wait()
    if p["raw"].exists():
        text = summarize_profile(p["raw"].read_text(errors="replace"), shlex.join(p["cmd"]))
        p["summary"].write_text(text)
        log(f"profile summary -> {p['summary']}")
        print(text)


def _clean_frame(f: str) -> str:
    f = re.sub(r":\d+\)$", ")", f)  # line numbers off: per function
    f = re.sub(r"\(/.*?/(?:site|dist)-packages/", "(", f)
    f = re.sub(r"\(/.*?/lib/python3\.\d+/", "(", f)
    return f.replace(str(REPO) + "/", "")


def summarize_profile(collapsed: str, cmd: str, top: int = 20) -> str:
    """Where the samples are, from py-spy's collapsed stacks (--subprocesses --threads).

    Samples are grouped by process role (smtp worker, queue manager) and thread (the event
    loop's MainThread, the qsync fsync pool); for each group the functions with the most
    self (leaf) and inclusive samples. py-spy leaves out idle threads, but a thread blocked
    in a syscall such as fsync(2) counts as busy: the pool's samples are mostly waiting.
    """
    rows = []  # (pid, thread, frames, count)
    for line in collapsed.splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        pid, thread, frames = "?", "?", []
        pieces: list[str] = []
        for piece in stack.split(";"):  # a process frame quotes its command line, which may hold ";"
            if pieces and pieces[-1].startswith("process ") and pieces[-1].count('"') % 2:
                pieces[-1] += ";" + piece
            else:
                pieces.append(piece)
        for f in pieces:
            if f.startswith("process "):
                pid = f.split()[1].rstrip(":").split(":")[0]
            elif f.startswith("thread ("):
                thread = re.sub(r"_\d+$", "", f.split(": ", 1)[1] if ": " in f else f)
            else:
                frames.append(_clean_frame(f))
        if frames:
            rows.append((pid, thread, frames, int(n)))
    total = sum(r[3] for r in rows)
    kinds: dict[str, set[str]] = {}
    for pid, _, frames, _ in rows:
        text = " ".join(frames)
        k = kinds.setdefault(pid, set())
        if "SmtpSession" in text or "smtpd.py" in text:
            k.add("smtp")
        if "QueueManager." in text:
            k.add("qmgr")
    role = {pid: "+".join(sorted(k)) or "other" for pid, k in kinds.items()}
    groups: dict[tuple[str, str], list[tuple[list[str], int]]] = {}
    for pid, thread, frames, n in rows:
        groups.setdefault((role[pid], thread), []).append((frames, n))
    out = [f"# py-spy profile summary: {total} samples over {len(role)} process(es), idle threads excluded",
           f"# {cmd}", "", "## samples by process role and thread", ""]  # fmt: skip
    order = sorted(groups, key=lambda g: -sum(n for _, n in groups[g]))
    for g in order:
        c = sum(n for _, n in groups[g])
        out.append(f"{100 * c / max(total, 1):5.1f}%  {c:6d}  {g[0]} process(es), thread {g[1]}")
    for g in order:
        c_all = sum(n for _, n in groups[g])
        if c_all < total * 0.02:
            continue
        self_c: dict[str, int] = {}
        incl: dict[str, int] = {}
        for frames, n in groups[g]:
            self_c[frames[-1]] = self_c.get(frames[-1], 0) + n
            for f in set(frames):
                incl[f] = incl.get(f, 0) + n
        out += ["", f"## {g[0]} process(es), thread {g[1]}: {c_all} samples ({100 * c_all / max(total, 1):.1f}% of all)", "",
                "self (leaf), % of all samples:"]  # fmt: skip
        for f, c in sorted(self_c.items(), key=lambda x: -x[1])[:top]:
            out.append(f"{100 * c / max(total, 1):5.1f}%  {c:6d}  {f}")
        out += ["", "inclusive, % of all samples:"]
        for f, c in sorted(incl.items(), key=lambda x: -x[1])[:top]:
            out.append(f"{100 * c / max(total, 1):5.1f}%  {c:6d}  {f}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Packages, machine description, report.


def ensure_packages(*, filters: bool = False) -> None:
    if filters and not all(os.access(SBIN / p, os.X_OK) for p in ("spamd", "clamd", "spamass-milter", "clamav-milter")):
        # The test suite's installer brings spamd and clamd and keeps their services from starting;
        # the two milters go in under the same guard.
        subprocess.run(["bash", str(ROOT / "scripts" / "test-services.sh")], check=True)
        guard = Path("/usr/sbin/policy-rc.d")
        made = not guard.exists()
        if made:
            guard.write_text("#!/bin/sh\nexit 101\n")
            guard.chmod(0o755)
        try:
            env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
            subprocess.run(["apt-get", "install", "-y", "-qq", "spamass-milter", "clamav-milter"], env=env, check=True)
        finally:
            if made:
                guard.unlink()
    need = []
    if not all(os.access(p, os.X_OK) for p in (POSTFIX, SMTP_SOURCE, SMTP_SINK)):
        need.append("postfix")
    if shutil.which("swaks") is None:
        need.append("swaks")
    if not need:
        return
    if os.geteuid() != 0:
        raise BenchError(f"missing packages {need}; run as root so the script can install them")
    log(f"installing {need} (postfix with the 'No configuration' debconf answer: no system Postfix is set up or started)")
    subprocess.run(["debconf-set-selections"], input=PRESEED, text=True, check=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", *need], env=env).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(["apt-get", "install", "-y", *need], env=env, check=True)


def cmd_out(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine(workdir: Path) -> dict[str, str]:
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    src, fstype = (cmd_out(["findmnt", "-no", "SOURCE,FSTYPE", "-T", str(workdir)]).split() + ["?", "?"])[:2]
    dev = re.sub(r"^/dev/", "", src)
    base = re.sub(r"p?\d+$", "", dev) if not Path(f"/sys/block/{dev}").exists() else dev

    def sysblock(name: str) -> str:
        try:
            return Path(f"/sys/block/{base}/{name}").read_text().strip()
        except OSError:
            return "?"

    rot = sysblock("queue/rotational")
    disk = f"{src} ({fstype}), {'rotational' if rot == '1' else 'non-rotational' if rot == '0' else 'rotational ?'} per /sys"
    model = sysblock("device/model")
    if model != "?":
        disk += f", model {model}"
    sched = re.search(r"\[(.*?)\]", sysblock("queue/scheduler"))
    disk += f", I/O scheduler {sched.group(1) if sched else '?'}"
    mem_kb = next((int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")), 0)
    mem = f"{mem_kb / 1024 / 1024:.1f} GiB"
    if MTA_SRC is not None:
        commit, dirty = f"from --src {MTA_SRC}", ""
    else:
        commit = "working tree at " + cmd_out(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"])
        dirty = cmd_out(["git", "-C", str(REPO), "status", "--porcelain", "--", "mtaserver"])
    return {
        "date": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "nproc": cmd_out(["nproc"]) or str(os.cpu_count()),
        "cpu": cpu,
        "memory": mem,
        "kernel": platform.release(),
        "disk": disk,
        "postfix": cmd_out(["postconf", "-dh", "mail_version"]),
        "python": platform.python_version(),
        "mtaserver": commit + (" + uncommitted changes in mtaserver/" if dirty else ""),
    }


def med(xs: list[float | None]) -> float | None:
    vals = [x for x in xs if x is not None]
    return statistics.median(vals) if vals else None


def fmt(x: float | None, nd: int = 0, none: str = "-") -> str:
    if x is None:
        return none
    return f"{x:,.{nd}f}"


def table(runs: list[Run], scs: list[Scenario], servers: list[str], mta_delivers: bool | None, delivery_off: bool = False) -> str:
    by: dict[tuple[str, str], list[Run]] = {}
    for r in runs:
        by.setdefault((r.server, r.scenario), []).append(r)
    head = ["scenario", "size", "sessions", "msgs/conn", "msgs", "reps"]
    for s in servers:
        head.append(f"{s} accepted/s")
    if len(servers) == 2:
        head.append("ratio mta/pfx")
    for s in servers:
        head.append(f"{s} e2e/s")
    for s in servers:
        head.append(f"{s} CPU s/1000")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc in scs:
        rs = {s: by.get((s, sc.name), []) for s in servers}
        if not any(rs.values()):
            continue
        row = [sc.name, f"{sc.size_kb} KB", str(sc.sessions), str(sc.per_conn), f"{sc.messages:,}",
               "/".join(str(len(rs[s])) for s in servers)]  # fmt: skip
        acc = {s: med([r.accepted_rate for r in rs[s]]) for s in servers}
        for s in servers:
            bad = any(r.errors for r in rs[s])
            row.append(fmt(acc[s]) + (" (!)" if bad else ""))
        if len(servers) == 2:
            a, b = acc.get("mtaserver"), acc.get("postfix")
            row.append(f"{a / b:.2f}" if a and b else "-")
        for s in servers:
            e = med([r.e2e_rate for r in rs[s]])
            if s == "mtaserver" and e is None and rs[s] and not mta_delivers:
                row.append("n/a (delivery off)" if delivery_off else "n/a (no delivery yet)")
            else:
                row.append(fmt(e))
        for s in servers:
            row.append(fmt(med([r.cpu_per_1000 for r in rs[s]]), 2))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def details(runs: list[Run]) -> str:
    head = ["server", "scenario", "rep", "msgs", "accept s", "accepted/s", "e2e s", "e2e/s", "CPU s", "CPU s/1000",
            "client CPU s", "log check", "errors"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in runs:
        st = LogStats(**{**r.log, "per_conn": {int(k): v for k, v in r.log["per_conn"].items()}})
        row = [r.server + (" (profiled)" if r.profiled else ""), r.scenario, str(r.rep), str(r.messages), f"{r.accept_s:.2f}",
               fmt(r.accepted_rate), fmt(r.e2e_s, 2), fmt(r.e2e_rate), f"{r.cpu_s:.2f}", f"{r.cpu_per_1000:.2f}",
               f"{r.client_cpu_s:.2f}", st.describe(), "; ".join(r.errors)[:300] or "none"]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Main.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench.py", description="Benchmark mtaserver against a throwaway Postfix with smtp-source (see bench/README.md).",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="smoke run: 300 x 1 KB and 100 x 100 KB messages per run, 1 repetition")
    p.add_argument("--reps", type=int, default=None, help="repetitions per scenario and server, interleaved (default 3; 1 with --quick)")
    p.add_argument("--only", choices=("postfix", "mtaserver"), help="run one server only")
    p.add_argument("--scenario", action="append", help="scenario names or globs, comma-separated, e.g. '1k-s10-m1' or '100k-*-m10' (repeatable)")
    p.add_argument("--workers", default=None, help="mtaserver server.workers (a number, or auto = nproc; default auto)")
    p.add_argument("--messages-1k", type=int, default=None, help="messages per 1 KB run (default 5000; 300 with --quick)")
    p.add_argument("--messages-100k", type=int, default=None, help="messages per 100 KB run (default 1000; 100 with --quick)")
    p.add_argument("--cpu-method", choices=("auto", "cgroup", "proc"), default="auto", help="cgroup v2 cpu.stat (auto when writable) or /proc sums")
    p.add_argument("--mta-delivery", choices=("auto", "yes", "no"), default="auto",
                   help="does mtaserver deliver to its sink? auto: detected on its first warm-up")  # fmt: skip
    p.add_argument("--detect-wait", type=float, default=8.0, help="seconds to wait for mtaserver's sink when detecting delivery")
    p.add_argument("--profile", type=int, metavar="SECONDS", default=0, help="run py-spy on mtaserver for SECONDS during each of its runs (bench/profiles/)")
    p.add_argument("--summarize-profile", type=Path, metavar="FILE", help="only print the summary of a collapsed py-spy profile and exit")
    p.add_argument("--out", type=Path, default=BENCH / "out", help="where results and the throwaway work dir go (default bench/out)")
    p.add_argument("--filters", action="store_true",
                   help="content scanners on for both: one spamd and one clamd; mtaserver's filter chain, Postfix's spamass-milter + clamav-milter")
    p.add_argument("--postscreen", action="store_true",
                   help="postscreen on for both servers (greet test, 6 s wait, cache warmed once before the first run)")
    p.add_argument("--keep", action="store_true", help="keep the throwaway work dir (configs, logs, Postfix queue)")
    p.add_argument("--src", type=Path, default=None,
                   help="run mtaserver from this source tree (the directory holding mtaserver/), e.g. "
                   "`git archive HEAD mtaserver | tar -x -C DIR` of a fixed commit; default: the venv's installed one")  # fmt: skip
    args = p.parse_args(argv)
    if args.workers not in (None, "auto") and not str(args.workers).isdigit():
        p.error("--workers: a number or auto")
    args.reps = args.reps or (1 if args.quick else 3)
    # With --filters spamd bounds both servers at a few dozen messages/s: smaller runs.
    args.messages_1k = args.messages_1k or (300 if args.quick else 1000 if args.filters else 5000)
    args.messages_100k = args.messages_100k or (100 if args.quick else 200 if args.filters else 1000)
    return args


def _interrupt(_sig: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    global MTA_SRC
    args = parse_args(argv)
    if args.summarize_profile:
        print(summarize_profile(args.summarize_profile.read_text(errors="replace"), str(args.summarize_profile)), end="")
        return 0
    if args.src is not None:
        MTA_SRC = args.src.resolve()
        if not (MTA_SRC / "mtaserver" / "cli.py").exists():
            raise BenchError(f"--src {args.src}: no mtaserver/cli.py there")
    argv_text = shlex.join(["bench/bench.py", *(sys.argv[1:] if argv is None else argv)])
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started in the background, where SIGINT is ignored
    scs = scenarios(args)
    ensure_packages(filters=args.filters)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    workdir = args.out / f"work-{stamp}"
    workdir.mkdir(mode=0o755)
    servers: list[Server] = []
    scanners: Scanners | None = None
    runs: list[Run] = []
    json_path = args.out / f"results-{stamp}.json"
    md_path = args.out / f"results-{stamp}.md"
    info = machine(workdir)
    try:
        if args.only != "mtaserver":
            servers.append(Postfix(workdir, args))
        if args.only != "postfix":
            servers.append(Mtaserver(workdir, args))
        if args.filters:
            scanners = Scanners(workdir)
            scanners.start(next((s.cpu.preexec for s in servers if isinstance(s, Postfix)), None))
            for s in servers:
                s.scanners = scanners
        for s in servers:
            s.setup()
        for s in servers:
            if isinstance(s, Mtaserver):
                s.start("smoke")
                s.smoke_test()
                s.stop()
                shutil.rmtree(s.data, ignore_errors=True)
            else:
                s.smoke_test()
        est = sum(sc.messages for sc in scs) * args.reps * len(servers)
        log(f"{len(scs)} scenario(s) x {args.reps} rep(s) x {len(servers)} server(s), {est:,} messages; CPU via {servers[0].cpu.method}")
        for rep in range(1, args.reps + 1):
            for i, sc in enumerate(scs):
                order = servers if (rep + i) % 2 else list(reversed(servers))
                for s in order:
                    r = measure(s, sc, rep, args)
                    runs.append(r)
                    e2e = f"e2e {r.e2e_s:.2f} s = {r.e2e_rate:,.0f}/s" if r.e2e_s else "e2e n/a"
                    log(f"rep {rep}/{args.reps} {sc.name:13} {s.name:9}: {r.messages} msgs accepted in {r.accept_s:.2f} s = "
                        f"{r.accepted_rate:,.0f}/s, {e2e}, CPU {r.cpu_s:.2f} s = {r.cpu_per_1000:.2f} s/1000 "
                        f"(client {r.client_cpu_s:.2f} s); {LogStats(**r.log).describe()}"
                        + (f"; ERRORS: {r.errors}" if r.errors else ""))  # fmt: skip
                    json_path.write_text(json.dumps({"machine": info, "command": argv_text, "runs": [asdict(x) for x in runs]}, indent=1))
    except KeyboardInterrupt:
        log("interrupted: stopping everything we started")
    finally:
        stop_loads()
        if scanners is not None:  # before the servers' cgroups go (the milters are in Postfix's)
            scanners.stop()
        for s in servers:
            try:
                s.teardown()
            finally:
                s.sink.stop()
                s.cpu.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            log(f"kept {workdir}")

    if not runs:
        return 1
    names = [s.name for s in servers]
    mta = next((s for s in servers if isinstance(s, Mtaserver)), None)
    mta_delivers = mta.delivers if mta else None
    tab = table(runs, scs, names, mta_delivers, args.mta_delivery == "no")
    cpu_method = servers[0].cpu.method
    head = [
        f"# mtaserver vs Postfix: benchmark results {info['date']}",
        "",
        f"- command: `{argv_text}`",
        f"- machine: {info['nproc']} CPU(s) ({info['cpu']}), {info['memory']} RAM, kernel {info['kernel']}",
        f"- disk: {info['disk']}",
        f"- Postfix {info['postfix']}; Python {info['python']}; mtaserver {info['mtaserver']}, workers {args.workers or 'auto'}"
        + (f" = {mta.workers}" if mta else ""),
        f"- content filters: {'spamd + clamd for both (mtaserver: its chain, in parallel; Postfix: spamass-milter + clamav-milter)' if args.filters else 'off'}",
        f"- postscreen: {'on for both (greet test, enforce, 6 s wait; cache warm: every timed session is PASS OLD)' if args.postscreen else 'off'}",
        f"- repetitions: {args.reps} (interleaved; medians shown); CPU accounting: "
        + ("cgroup v2 cpu.stat usage_usec of each server's own cgroup" if cpu_method == "cgroup" else "/proc/PID/stat utime+stime+cutime+cstime over each server's process tree"),
        "- accepted/s: messages / smtp-source wall time. e2e/s: until the server's smtp-sink counted them all. "
        "CPU s/1000: server CPU (all its processes) from load start to "
        + ("the last delivery (both servers accept and relay)" if mta_delivers or not mta
           else "the last delivery for Postfix (includes its relaying), the last 250 for mtaserver (accepting only"
           + (", queue.manager: false)" if args.mta_delivery == "no" else ", it has no delivery yet)")),
        "",
    ]
    report = "\n".join(head) + "\n" + tab + "\n\n## Every run\n\n" + details(runs) + "\n"
    md_path.write_text(report)
    print()
    print(tab)
    print()
    log(f"results: {md_path} (raw: {json_path})")
    return 1 if any(r.errors for r in runs) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
