"""QueueOps inside a running queue manager (as the admin API uses it): actions on messages under
delivery wait for the attempt to end; held mail is never delivered; flush, release and requeue
reach the manager at once. Delivery goes over real SMTP to an aiosmtpd sink."""

from __future__ import annotations

import asyncio
import os

from builders import NO_SCANNERS, commit_message, load_config
from helpers import Sink, until

from mtaserver.queue.manager import QueueManager
from mtaserver.queue.ops import QueueOps, Selector
from mtaserver.queue.store import QueueStore


def _config(tmp_path, relay_port: int, min_backoff: str = "1h"):
    # a requeue runs the content filters again: no scanner runs here (NO_SCANNERS)
    return load_config(tmp_path, "domains: {local: [example.test]}", f'outbound: {{relay_host: "[127.0.0.1]:{relay_port}"}}',
                       f"queue: {{min_backoff: {min_backoff}, max_backoff: 2h}}", NO_SCANNERS)  # fmt: skip


class Running:
    """A store, a manager running in this loop, and QueueOps bound to both."""

    def __init__(self, tmp_path, relay_port: int) -> None:
        self.cfg = _config(tmp_path, relay_port)
        self.store = QueueStore(self.cfg.queue_path)
        self.store.open()
        self.manager = QueueManager(lambda: self.cfg, self.store)
        self.store.on_commit = self.manager.announce
        self.ops = QueueOps(self.store, self.manager, config=lambda: self.cfg)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def ls(self, state: str) -> list[str]:
        return self.store.list(state)

    async def __aenter__(self) -> Running:
        self.task = asyncio.get_running_loop().create_task(self.manager.run(self.stop, listen=False))
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        assert self.task is not None
        await self.task
        self.store.close()


async def test_hold_of_a_message_under_delivery_takes_effect_when_the_attempt_ends(tmp_path):
    with Sink(delay=1.0, data_replies=["451 4.3.0 try again later"]) as sink:
        async with Running(tmp_path, sink.port) as r:
            qid = await commit_message(r.store, ["x@remote.test"], sender="a@client.test")
            await until(lambda: qid in r.ls("active"), "the attempt")
            result = await r.ops.hold(Selector(ids=[qid]))
            assert result["pending"] == [qid] and result["count"] == 1
            assert r.ls("active") == [qid] and r.ls("hold") == []  # nothing moves under a running attempt
            await until(lambda: r.ls("hold"), "the hold")
            assert r.ls("deferred") == [] and r.ls("active") == []
            shown = r.ops.show(qid)
            assert shown["queue_name"] == "hold" and shown["recipients"][0]["last_reply"] == "451 4.3.0 try again later"
            await r.ops.flush()  # held mail is not retried
            await asyncio.sleep(0.5)
            assert r.ls("hold") == [qid] and sink.messages == []


async def test_delete_of_a_message_under_delivery_removes_it_after_the_attempt(tmp_path):
    with Sink(delay=1.0, data_replies=["451 4.3.0 try again later"]) as sink:
        async with Running(tmp_path, sink.port) as r:
            qid = await commit_message(r.store, ["x@remote.test"], sender="a@client.test")
            await until(lambda: qid in r.ls("active"), "the attempt")
            result = await r.ops.delete(Selector(all=True))
            assert result["pending"] == [qid]
            assert os.path.exists(r.store.path("active", qid))
            await until(lambda: not r.ls("active"), "the end of the attempt")
            assert r.ops.stats()["queues"] == {"incoming": 0, "active": 0, "deferred": 0, "hold": 0, "corrupt": 0}
            assert os.listdir(r.cfg.queue_path / "status") == []


async def test_flush_release_and_requeue_go_through_the_manager(tmp_path):
    with Sink(data_replies=["451 4.3.0 try again later"] * 3) as sink:
        async with Running(tmp_path, sink.port) as r:
            a = await commit_message(r.store, ["x@remote.test"], sender="a@client.test")
            await commit_message(r.store, ["y@remote.test"], sender="b@client.test")
            c = await commit_message(r.store, ["z@remote.test"], sender="c@client.test")
            await until(lambda: len(r.ls("deferred")) == 3, "three deferred messages (next attempt in an hour)")
            done = await r.ops.hold(Selector(ids=[a]))
            assert done["ids"] == [a] and "pending" not in done and r.ls("hold") == [a]
            assert (await r.ops.requeue(Selector(ids=[c])))["ids"] == [c]
            await until(lambda: len(sink.messages) == 1, "the requeued message's delivery")
            assert sink.messages[0][0] == "c@client.test"
            assert (await r.ops.flush())["count"] == 1
            await until(lambda: len(sink.messages) == 2, "the flushed message's delivery")
            assert sink.messages[1][0] == "b@client.test" and r.ls("hold") == [a]
            assert (await r.ops.release(Selector(all=True)))["ids"] == [a]
            await until(lambda: len(sink.messages) == 3, "the released message's delivery")
            await until(lambda: not any(r.ls(s) for s in ("incoming", "active", "deferred", "hold")), "an empty queue")
