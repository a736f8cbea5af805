"""Regression tests of the issue-14 review (operating it): the pure parts and the spool-level
parts of queue/ops.py, the manager's control and flush, the admin API's helpers, configfile,
logutil and sendmail. Real files in tmp_path; no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from mtaserver import config
from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.ops import QueueOps, RemoteQueueOps, Selector
from mtaserver.queue.store import QueueStore
from mtaserver.values import parse_duration


def test_remote_age_selectors_of_a_million_seconds_and_more_are_valid_durations():
    params = RemoteQueueOps._params(Selector(older_than=12 * 86400, newer_than=1.5))
    assert parse_duration(params["older_than"]) == 12 * 86400
    assert parse_duration(params["newer_than"]) == 1.5


def _cfg(tmp_path):
    text = f"""
server: {{hostname: mx.example.test, data_dir: "{tmp_path}/var"}}
domains: {{local: [example.test]}}
outbound: {{relay_host: "[127.0.0.1]:9"}}
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


@pytest.fixture
async def spool(tmp_path):
    cfg = _cfg(tmp_path)
    store = QueueStore(cfg.queue_path)
    store.open()
    yield cfg, store
    store.close()


async def test_list_paging_goes_on_past_messages_delivered_during_the_scan(spool):
    cfg, store = spool
    ids = [await _commit(store) for _ in range(6)]
    ops = QueueOps(store, config=lambda: cfg)
    # Two names a listing sees whose files are gone by the time they are read (delivered meanwhile).
    gone = [ids[1], ids[2]]
    for qid in gone:
        os.unlink(store.path("incoming", qid))
        os.symlink("/nonexistent", store.path("incoming", qid))
    seen, after = [], None
    while True:
        page = ops.list(None, None, after, 2)
        seen += [m["queue_id"] for m in page["messages"]]
        after = page["next"]
        if after is None:
            break
    assert seen == [q for q in ids if q not in gone]


def test_all_together_with_ids_is_an_error(tmp_path):
    from mtaserver.queue.ops import OpsError, check_selector

    with pytest.raises(OpsError, match="ALL"):
        check_selector(Selector(ids=["0" * 17], all=True))
