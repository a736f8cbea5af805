"""A flush with every delivery slot taken: the queue manager running in this loop over a real
queue directory, delivering to a maildir (the issue-14 review: a flush retried at most
MAX_ACTIVE messages, the rest waited for their own next attempt)."""

from __future__ import annotations

import asyncio
import time

from mtaserver import config
from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.ops import QueueOps
from mtaserver.queue.store import QueueStore


def _local_cfg(tmp_path):
    text = f"""
server: {{hostname: mx.example.test, data_dir: "{tmp_path}/var"}}
domains: {{local: [example.test], local_delivery: {{type: maildir, path: mail}}}}
antispam: {{enabled: false}}
antivirus: {{enabled: false}}
"""
    return config.load(str(tmp_path / "mtaserver.yaml"), text=text)


async def _commit(store: QueueStore, sender: str = "a@client.test", rcpts: tuple[str, ...] = ("x@remote.test",)) -> str:
    qid = store.new_id()
    spool = store.new_spool(qid)
    spool.write(b"Subject: t\r\n\r\nhello\r\n")
    env = Envelope(queue_id=qid, sender=sender, recipients=[Recipient(address=r) for r in rcpts], arrival=time.time(),
                   client=ClientInfo(ip="192.0.2.1", port=4711, helo="client.test"))  # fmt: skip
    await store.commit(spool, env)
    return qid


async def test_flush_retries_every_deferred_message_not_only_those_a_free_slot_takes_at_once(tmp_path):
    from mtaserver.queue.manager import QueueManager

    now = 1795600000.0
    cfg = _local_cfg(tmp_path)
    store = QueueStore(cfg.queue_path)
    store.open()
    ids = [await _commit(store, rcpts=("user@example.test",)) for _ in range(4)]
    for qid in ids:
        store.move(qid, "incoming", "deferred")
        store.set_due("deferred", qid, now + 3600)  # not due for an hour
    # A clock that never moves and one slot: a flush must not stop at the first message.
    manager = QueueManager(lambda: cfg, store, clock=lambda: now)
    manager._slots = asyncio.Semaphore(1)
    manager._next_incoming_scan = manager._next_deferred_scan = now + 3600  # nothing due, nothing new
    ops = QueueOps(store, manager, clock=lambda: now, config=lambda: cfg)
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop, listen=False))
    try:
        await ops.flush()
        async with asyncio.timeout(20):
            while store.list("deferred") or store.list("active"):
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
        store.close()
