"""The queue manager against a real queue directory and maildir delivery (no network; it polls
the spool, so it is an integration test: moved from tests/unit)."""

from __future__ import annotations

import asyncio
import os

from builders import MAILDIR, commit_message, load_config
from helpers import run_manager_until

from mtaserver.delivery.maildir import mailbox_dir
from mtaserver.queue.manager import QueueManager
from mtaserver.queue.store import QueueStore


async def test_with_every_slot_taken_the_rest_is_delivered_as_slots_free_up(tmp_path):
    cfg = load_config(tmp_path, MAILDIR)
    store = QueueStore(cfg.queue_path)
    store.open()
    ids = []
    for i in range(6):
        text = f"Subject: {i}\r\n\r\nbody {i}\r\n".encode()
        ids.append(await commit_message(store, ["user@example.test"], sender="s@client.test", text=text, arrival=1795600000.0))
    # A clock that never moves: incoming/ is listed once, at the start. One slot: that first
    # feed stops after one message, and the rest must come from the slots freed later.
    manager = QueueManager(lambda: cfg, store, clock=lambda: 1795600000.0)
    manager._slots = asyncio.Semaphore(1)
    try:
        await run_manager_until(manager, lambda: not (store.list("incoming") or store.list("active")), 30)
    finally:
        store.close()
    new = mailbox_dir(cfg.data_path / "mail", "user@example.test") / "new"
    bodies = sorted((new / name).read_bytes().split(b"\n\n", 1)[1] for name in os.listdir(new))
    assert bodies == [f"body {i}\n".encode() for i in range(6)]
    assert os.listdir(cfg.queue_path / "status") == []
