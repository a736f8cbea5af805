"""Regression tests of the issue-14 review (operating it): the pure parts and the spool-level
parts of queue/ops.py, the manager's control and flush, the admin API's helpers, configfile,
logutil and sendmail. Real files in tmp_path; no sockets, no sleeps."""

from __future__ import annotations

import asyncio
import os

import pytest
from builders import MAILDIR, NO_SCANNERS, commit_message, load_config

from mtaserver.queue.ops import QueueOps, RemoteQueueOps, Selector
from mtaserver.queue.store import QueueStore
from mtaserver.values import parse_duration


def test_remote_age_selectors_of_a_million_seconds_and_more_are_valid_durations():
    params = RemoteQueueOps._params(Selector(older_than=12 * 86400, newer_than=1.5))
    assert parse_duration(params["older_than"]) == 12 * 86400
    assert parse_duration(params["newer_than"]) == 1.5


@pytest.fixture
async def spool(tmp_path):
    cfg = load_config(tmp_path, "domains: {local: [example.test]}", 'outbound: {relay_host: "[127.0.0.1]:9"}', NO_SCANNERS)
    store = QueueStore(cfg.queue_path)
    store.open()
    yield cfg, store
    store.close()


async def test_list_paging_goes_on_past_messages_delivered_during_the_scan(spool):
    cfg, store = spool
    ids = [await commit_message(store) for _ in range(6)]
    gone = [ids[1], ids[2]]

    class Racing(QueueOps):
        """Two names the listing sees are delivered right after it read the directory (the
        race, made deterministic at the boundary; list() and _envelope() are the real ones)."""

        def _scan(self, *args, **kwargs):
            batch = super()._scan(*args, **kwargs)
            for qid in gone:
                if os.path.lexists(store.path("incoming", qid)):
                    os.unlink(store.path("incoming", qid))
            return batch

    ops = Racing(store, config=lambda: cfg)
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


async def test_delete_bounce_of_a_message_under_delivery_lists_only_the_recipients_left(tmp_path):
    from mtaserver.queue.manager import QueueManager
    from mtaserver.queue.store import split_queue_file

    cfg = load_config(tmp_path, MAILDIR, NO_SCANNERS)
    store = QueueStore(cfg.queue_path)
    store.open()
    try:
        qid = await commit_message(store, ("done@remote.test", "left@remote.test"))
        manager = QueueManager(lambda: cfg, store)
        # The manager took it: it is in active/ and being delivered (no manager loop runs here).
        store.move(qid, "incoming", "active")
        manager._active.add(qid)
        result = await QueueOps(store, manager, config=lambda: cfg).delete(Selector(ids=[qid]), bounce=True)
        assert result["pending"] == [qid] and not result.get("bounced")
        assert store.list("incoming") == []  # no notification before the attempt ends
        # The attempt ends: one recipient delivered (gone from the envelope), the other deferred.
        env = store.peek("active", qid)
        env.recipients = [r for r in env.recipients if r.address == "left@remote.test"]
        store.rewrite("active", env)
        store.move(qid, "active", "deferred")
        await manager._after_attempt(qid)
        manager._active.discard(qid)
        assert store.list("deferred") == []
        (dsn_id,) = store.list("incoming")
        text = bytes(split_queue_file((cfg.queue_path / "incoming" / dsn_id).read_bytes())[1])
        assert b"left@remote.test" in text and b"done@remote.test" not in text
    finally:
        store.close()


async def test_a_failure_on_one_message_is_reported_per_id_and_the_others_are_done(spool):
    from mtaserver.queue.manager import QueueManager

    cfg, store = spool
    ids = [await commit_message(store) for _ in range(3)]
    os.mkdir(store.path("hold", ids[1]))  # rename(2) of the file onto a directory fails
    os.mknod(os.path.join(store.path("hold", ids[1]), "x"))
    for manager in (None, QueueManager(lambda: cfg, store)):
        result = await QueueOps(store, manager, config=lambda: cfg).hold(Selector(ids=ids))
        assert sorted(result["ids"]) == sorted([ids[0], ids[2]]) and list(result["errors"]) == [ids[1]]
        for qid in (ids[0], ids[2]):
            store.move(qid, "hold", "incoming")


async def test_a_large_action_lets_the_event_loop_run_meanwhile(spool):
    from mtaserver.queue.manager import CONTROL_BATCH, QueueManager

    cfg, store = spool
    n = CONTROL_BATCH + 10
    for _ in range(n):
        await commit_message(store)
    manager = QueueManager(lambda: cfg, store)
    seen: list[int] = []
    finished = False

    async def watcher() -> None:
        while not finished:
            seen.append(len(os.listdir(cfg.queue_path / "hold")))
            await asyncio.sleep(0)

    task = asyncio.create_task(watcher())
    result = await QueueOps(store, manager, config=lambda: cfg).hold(Selector(all=True))
    finished = True
    await task
    assert result["count"] == n
    assert 0 in seen and any(0 < k < n for k in seen), seen  # it ran during the selection and between batches


# ---------------------------------------------------------------------------------------------
# admin API helpers, configfile, sendmail, logutil


@pytest.mark.parametrize(
    ("url", "leak"),
    [("redis://:secret@cache.test:6379/0", "secret"), ("redis://u:pa/ss@cache.test", "pa/ss"),
     ("redis://u:p@ss@cache.test", "ss@"), ("redis://cache.test/0?password=hunter2&db=1", "hunter2")],
)  # fmt: skip
def test_every_password_in_a_url_is_masked(url, leak):
    from mtaserver.admin.api import config_json

    out = config_json({"url": url, "note": f"at {url} now"})
    assert leak not in out["url"] and leak not in out["note"] and "***" in out["url"], out


def test_put_json_copied_from_get_config_is_refused():
    from mtaserver.admin.configfile import DocumentError, effective_markers, same_quantity

    assert effective_markers({"source": "/etc/m.yaml", "server": {}})
    assert effective_markers({"postscreen": {"cache": {"redis": "redis://:***@h"}}}) == [
        "postscreen.cache.redis: a masked secret (***) from GET /api/config: the real value would be lost"]
    assert effective_markers({"server": {"hostname": "mx"}}) == []
    assert same_quantity("5d", 432000.0) and same_quantity("100M", 104857600) and not same_quantity("5d", 5)
    assert not same_quantity("100", 100) and not same_quantity("5d", True)
    assert DocumentError  # imported for the name


def test_put_json_keeps_the_units_of_values_it_does_not_change():
    from mtaserver.admin.configfile import load_document, render, sync

    text = "queue:\n  max_lifetime: 5d      # Postfix\n  message_size_limit: 100M\n"
    doc = load_document(text)
    sync(doc, {"queue": {"max_lifetime": 432000.0, "message_size_limit": 104857600}})
    assert render(doc, text) == text


def test_write_atomically_follows_a_symlink_and_never_a_planted_tmp_name(tmp_path):
    from mtaserver.admin.configfile import write_atomically

    real = tmp_path / "real.yaml"
    real.write_text("old\n")
    link = tmp_path / "mtaserver.yaml"
    link.symlink_to(real)
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    for pid_guess in range(os.getpid() - 2, os.getpid() + 3):  # the old predictable names, planted
        for name in (f".real.yaml.tmp-{pid_guess}", f".mtaserver.yaml.tmp-{pid_guess}", f".real.yaml.bak.tmp-{pid_guess}"):
            (tmp_path / name).symlink_to(victim)
    write_atomically(link, "new\n")
    assert link.is_symlink() and real.read_text() == "new\n"
    assert (tmp_path / "real.yaml.bak").read_text() == "old\n"
    assert victim.read_text() == "untouched\n"


def test_sendmail_full_name_cannot_add_a_header():
    from mtaserver import sendmail as sm

    who = sm.Submitter(uid=1000, login="alice", gecos="Al\rice\n,,,")
    for opts in (sm.Options(full_name="x\r\nBcc: victim@evil.test", recipients=["r@example.test"]),
                 sm.Options(recipients=["r@example.test"])):  # fmt: skip
        lines = [sm.input_line(x) for x in b"Subject: hi\n\nbody\n".splitlines(keepends=True)]
        headers, body = sm.split_message(lines)
        msg = sm.build_message(opts, who, headers, body, hostname="mx.example.test", queue_id="0ABCDEFGHJK012345",
                               sender="alice@mx.example.test", recipients=["r@example.test"], now=1_796_169_600.0)  # fmt: skip
        head = msg.split(b"\r\n\r\n", 1)[0]
        assert b"\r\nBcc:" not in head and b"\rice" not in head and b"\n," not in head
        assert [ln for ln in head.split(b"\r\n") if ln.startswith(b"From:")]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")
def test_the_log_file_is_given_to_the_mail_user_only_when_safe(tmp_path):
    from mtaserver.logutil import _open_log

    owner = (65534, 65534)
    secret = tmp_path / "shadow"
    secret.write_text("root's\n")
    planted = tmp_path / "planted.log"
    os.link(secret, planted)  # the mail user's hard link to a file of root's
    _open_log(str(planted), owner).close()
    assert os.stat(secret).st_uid == 0
    fresh = tmp_path / "fresh.log"
    _open_log(str(fresh), owner).close()
    assert os.stat(fresh).st_uid == 65534
    old = tmp_path / "old.log"  # made by root before server.user was set
    old.write_text("")
    _open_log(str(old), owner).close()
    assert os.stat(old).st_uid == 65534
