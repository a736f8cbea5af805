"""Time `mtaserver queue stats` and `mtaserver queue list` (first page) with a large queue.

DESCRIPTION
    Writes N queue files (default 100,000) straight into a throwaway spool with the store's own
    format functions (store.envelope_trailer, time-ordered ids over the last two days): 80%
    deferred (mtime = a next attempt), 15% incoming, 5% hold. Nothing is fsync'd: this
    measures listing, not writing. Then, with the server stopped (the commands act on the spool
    directly), times each command REPS times as a subprocess (the whole command: interpreter
    start, imports, config load, the work) and in-process (QueueOps alone), and prints medians.

        .venv/bin/python bench/queue_ops.py [--messages 100000] [--reps 5] [--keep]

    Warm page cache (the files were just written); the directory listings dominate.

CONFIG
    writes its own config (server.data_dir under the throwaway directory)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.ops import QueueOps, Selector
from mtaserver.queue.store import DIRS, QueueIdGenerator, QueueStore, envelope_trailer

BODY = b"Received: from client.test ([192.0.2.1])\r\n\tby mx.bench.test with ESMTP id X\r\nSubject: bench\r\n\r\n" + b"x" * 900 + b"\r\n"


def populate(queue: Path, n: int) -> None:
    for d in DIRS:
        (queue / d).mkdir(parents=True, exist_ok=True)
    now = time.time()
    start = now - 2 * 86400
    client = ClientInfo(ip="192.0.2.1", port=4711, name="client.test", helo="client.test")
    for i in range(n):
        t = start + (now - start) * i / n
        qid = QueueIdGenerator(pid=4242, clock=lambda t=t: t).next()
        env = Envelope(queue_id=qid, sender=f"s{i % 977}@client{i % 13}.test",
                       recipients=[Recipient(address=f"r{i}@dest{i % 50}.test")], arrival=t, client=client, size=len(BODY))  # fmt: skip
        state = "deferred" if i % 20 < 16 else "incoming" if i % 20 < 19 else "hold"
        path = queue / state / qid
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, BODY + envelope_trailer(env))
        finally:
            os.close(fd)
        if state == "deferred":
            due = now + 300 + i % 3600
            os.utime(path, (due, due))


def timed(fn, reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="queue-ops-", dir=HERE / "out" if (HERE / "out").is_dir() else None))
    try:
        cfg = root / "mtaserver.yaml"
        cfg.write_text(f"server: {{hostname: mx.bench.test, data_dir: {root / 'var'}}}\n")
        t0 = time.perf_counter()
        populate(root / "var" / "queue", args.messages)
        print(f"wrote {args.messages} queue files in {time.perf_counter() - t0:.1f} s ({root})")

        def cli(*words: str) -> None:
            subprocess.run([sys.executable, "-m", "mtaserver", *words], check=True, stdout=subprocess.DEVNULL, cwd=HERE.parent)

        ops = QueueOps(QueueStore(root / "var" / "queue"))
        rows = [
            ("interpreter + imports (mtaserver queue --help)", lambda: cli("queue", "--help")),
            ("mtaserver queue stats --json", lambda: cli("queue", "stats", "--json", "-c", str(cfg))),
            ("mtaserver queue list --limit 100 --json (first page)", lambda: cli("queue", "list", "--limit", "100", "--json", "-c", str(cfg))),
            ("mtaserver queue list --limit 100 (first page, text)", lambda: cli("queue", "list", "--limit", "100", "-c", str(cfg))),
            ("QueueOps.stats()", ops.stats),
            ("QueueOps.list(limit=100)", lambda: ops.list(None, None, None, 100)),
            ("QueueOps.list(limit=100, after=the middle)", lambda: ops.list(None, None, mid, 100)),
            ("QueueOps.list(limit=100, --to dest7.test) (envelopes read)", lambda: ops.list(None, Selector(recipient="dest7.test"), None, 100)),
            ("QueueOps.list(limit=100, --older-than 1d)", lambda: ops.list(None, Selector(older_than=86400), None, 100)),
        ]
        names = sorted(os.listdir(root / "var" / "queue" / "deferred"))
        mid = names[len(names) // 2]
        assert ops.stats()["queues"]["deferred"] == len(names)
        print(f"{'what':<62} {'median':>9} {'min':>9}   ({args.reps} runs)")
        for what, fn in rows:
            fn()  # warm-up
            ts = timed(fn, args.reps)
            print(f"{what:<62} {statistics.median(ts) * 1000:>7.0f}ms {min(ts) * 1000:>7.0f}ms")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
