"""Issue 15, queue and delivery hardening with the queue manager running over real queue
directories (it polls its queues and delivers to a maildir; moved from tests/unit/test_queue_hardening.py,
which keeps the parts that need no running manager):

- stray entries (a symlink, a directory) appearing while the manager runs are set aside in corrupt/,
  a symlink is never followed, and the good message is still delivered
- a next-attempt time far in the future (clock stepped back) is clamped to now + max_backoff when read
- duplicate recipients are delivered once
"""

from __future__ import annotations

import functools
import os

from builders import MAILDIR, commit_message, load_config
from helpers import run_manager_until

from mtaserver.delivery.maildir import mailbox_dir
from mtaserver.queue.manager import QueueManager
from mtaserver.queue.store import QueueIdGenerator, QueueStore

T0 = 1795600000.0


# sender, text and arrival of these tests
_commit = functools.partial(commit_message, sender="s@client.test", text=b"Subject: x\r\n\r\nhi\r\n", arrival=T0)


def _maildir(cfg, address: str) -> list[bytes]:
    new = mailbox_dir(cfg.data_path / "mail", address) / "new"
    return [(new / n).read_bytes() for n in sorted(os.listdir(new))] if new.exists() else []


async def test_the_manager_sets_strays_aside_and_keeps_delivering(tmp_path):
    cfg = load_config(tmp_path, MAILDIR)
    store = QueueStore(cfg.queue_path)
    store.open()
    good = await _commit(store, ["user@example.test"])
    outside = await _commit(store, ["victim@example.test"], text=b"Subject: not to be delivered\r\n\r\nsecret\r\n")
    os.rename(cfg.queue_path / "incoming" / outside, tmp_path / "outside")
    ids = QueueIdGenerator()
    a_link, a_dir, d_dir = ids.next(), ids.next(), ids.next()
    # After recovery, while the manager runs: a symlink and a directory in incoming/, a directory in deferred/.
    os.symlink(tmp_path / "outside", cfg.queue_path / "incoming" / a_link)
    (cfg.queue_path / "incoming" / a_dir).mkdir()
    (cfg.queue_path / "deferred" / d_dir).mkdir()
    manager = QueueManager(lambda: cfg, store)
    try:
        await run_manager_until(manager, lambda: not store.list("incoming") and not store.list("active") and not store.list("deferred"))
    finally:
        store.close()
    assert len(_maildir(cfg, "user@example.test")) == 1
    assert _maildir(cfg, "victim@example.test") == [], "the symlink was never followed"
    assert sorted(os.listdir(cfg.queue_path / "corrupt")) == sorted([a_link, a_dir, d_dir])
    assert good not in os.listdir(cfg.queue_path / "corrupt")


async def test_a_next_attempt_far_in_the_future_is_clamped_when_read(tmp_path):
    cfg = load_config(tmp_path, MAILDIR, "queue: {max_backoff: 4000s, min_backoff: 300s}")
    store = QueueStore(cfg.queue_path)
    store.open()
    qid = await _commit(store, ["user@example.test"])
    store.move(qid, "incoming", "deferred")
    store.set_due("deferred", qid, T0 + 30 * 86400)  # written before the clock was stepped back by 30 days
    now = [T0]
    manager = QueueManager(lambda: cfg, store, clock=lambda: now[0])
    try:
        await manager._feed()
        assert store.list("deferred") == [qid]
        assert store.due("deferred", qid) == T0 + 4000, "clamped, and written back"
        now[0] = T0 + 4001  # within max_backoff, not 30 days
        await run_manager_until(manager, lambda: not store.list("deferred") and not store.list("active"))
    finally:
        store.close()
    assert len(_maildir(cfg, "user@example.test")) == 1


async def test_duplicate_recipients_are_delivered_once(tmp_path):
    cfg = load_config(tmp_path, MAILDIR)
    store = QueueStore(cfg.queue_path)
    store.open()
    await _commit(store, ["user@example.test", "user@EXAMPLE.test", "user@example.test"])
    manager = QueueManager(lambda: cfg, store)
    try:
        await run_manager_until(manager, lambda: not store.list("incoming") and not store.list("active"))
    finally:
        store.close()
    assert len(_maildir(cfg, "user@example.test")) == 1
