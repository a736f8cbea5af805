"""A flush with every delivery slot taken: the queue manager running in this loop over a real
queue directory, delivering to a maildir (the issue-14 review: a flush retried at most
MAX_ACTIVE messages, the rest waited for their own next attempt)."""

from __future__ import annotations

import asyncio

from builders import MAILDIR, NO_SCANNERS, commit_message, load_config
from helpers import manager_running, until

from mtaserver.queue.ops import QueueOps
from mtaserver.queue.store import QueueStore


async def test_flush_retries_every_deferred_message_not_only_those_a_free_slot_takes_at_once(tmp_path):
    from mtaserver.queue.manager import QueueManager

    now = 1795600000.0
    cfg = load_config(tmp_path, MAILDIR, NO_SCANNERS)
    store = QueueStore(cfg.queue_path)
    store.open()
    ids = [await commit_message(store, ["user@example.test"]) for _ in range(4)]
    for qid in ids:
        store.move(qid, "incoming", "deferred")
        store.set_due("deferred", qid, now + 3600)  # not due for an hour
    # A clock that never moves and one slot: a flush must not stop at the first message.
    manager = QueueManager(lambda: cfg, store, clock=lambda: now)
    manager._slots = asyncio.Semaphore(1)
    manager._next_incoming_scan = manager._next_deferred_scan = now + 3600  # nothing due, nothing new
    ops = QueueOps(store, manager, clock=lambda: now, config=lambda: cfg)
    try:
        async with manager_running(manager):
            await ops.flush()
            await until(lambda: not (store.list("deferred") or store.list("active")), "every deferred message delivered", 20)
    finally:
        store.close()
