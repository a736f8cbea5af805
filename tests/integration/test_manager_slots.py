"""The queue manager against a real queue directory and maildir delivery (no network; it polls
the spool, so it is an integration test: moved from tests/unit)."""

import asyncio
import os

from mtaserver import config
from mtaserver.delivery.maildir import mailbox_dir
from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.manager import QueueManager
from mtaserver.queue.store import QueueStore


def _config(tmp_path):
    text = f"""
server: {{hostname: mx.example.test, data_dir: "{tmp_path}/var"}}
domains: {{local: [example.test], local_delivery: {{type: maildir, path: mail}}}}
"""
    return config.load(str(tmp_path / "mtaserver.yaml"), text=text)


async def test_with_every_slot_taken_the_rest_is_delivered_as_slots_free_up(tmp_path):
    cfg = _config(tmp_path)
    store = QueueStore(cfg.queue_path)
    store.open()
    ids = []
    for i in range(6):
        qid = store.new_id()
        spool = store.new_spool(qid)
        spool.write(f"Subject: {i}\r\n\r\nbody {i}\r\n".encode())
        env = Envelope(queue_id=qid, sender="s@client.test", recipients=[Recipient(address="user@example.test")],
                       arrival=1795600000.0, client=ClientInfo(ip="192.0.2.1", port=4711, helo="client.test"))  # fmt: skip
        await store.commit(spool, env)
        ids.append(qid)
    # A clock that never moves: incoming/ is listed once, at the start. One slot: that first
    # feed stops after one message, and the rest must come from the slots freed later.
    manager = QueueManager(lambda: cfg, store, clock=lambda: 1795600000.0)
    manager._slots = asyncio.Semaphore(1)
    stop = asyncio.Event()
    task = asyncio.create_task(manager.run(stop, listen=False))
    try:
        async with asyncio.timeout(30):
            while store.list("incoming") or store.list("active"):
                await asyncio.sleep(0.02)
    finally:
        stop.set()
        await task
        store.close()
    new = mailbox_dir(cfg.data_path / "mail", "user@example.test") / "new"
    bodies = sorted((new / name).read_bytes().split(b"\n\n", 1)[1] for name in os.listdir(new))
    assert bodies == [f"body {i}\n".encode() for i in range(6)]
    assert os.listdir(cfg.queue_path / "status") == []
