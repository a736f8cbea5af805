"""The pure parts of queue/ops.py: ids and ages, selectors, qshape, the text output."""

from __future__ import annotations

import pytest

from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue import ops
from mtaserver.queue.ops import AgeWindow, OpsError, Selector
from mtaserver.queue.store import QueueIdGenerator

NOW = 1795600000.0


def _id(t: float, pid: int = 77) -> str:
    return QueueIdGenerator(pid=pid, clock=lambda: t).next()


def _env(sender: str = "a@client.test", rcpts: tuple[str, ...] = ("x@remote.test",)) -> Envelope:
    return Envelope(queue_id=_id(NOW), sender=sender, recipients=[Recipient(address=r) for r in rcpts], arrival=NOW,
                    client=ClientInfo(ip="192.0.2.1", port=1))  # fmt: skip


def test_an_id_carries_its_arrival_time():
    assert ops.id_time(_id(NOW)) == NOW
    assert ops.id_time(_id(NOW + 0.123456)) == pytest.approx(NOW + 0.123456, abs=1e-6)
    assert ops.time_key(NOW) == _id(NOW)[:11]


def test_age_window_compares_ids():
    hour_old, minute_old, fresh = _id(NOW - 3600), _id(NOW - 60), _id(NOW)
    older = AgeWindow.of(Selector(older_than=1800), NOW)
    assert hour_old in older and minute_old not in older and fresh not in older
    newer = AgeWindow.of(Selector(newer_than=120), NOW)
    assert hour_old not in newer and minute_old in newer and fresh in newer
    both = AgeWindow.of(Selector(older_than=30, newer_than=120), NOW)
    assert [q in both for q in (hour_old, minute_old, fresh)] == [False, True, False]
    exactly = AgeWindow.of(Selector(older_than=60, newer_than=60), NOW)
    assert minute_old in AgeWindow.of(Selector(older_than=60), NOW) and minute_old not in exactly
    assert all(q in AgeWindow.of(None, NOW) for q in (hour_old, minute_old, fresh))


def test_address_selectors():
    assert ops.address_matches("A@Client.Test", "a@client.test")
    assert not ops.address_matches("a@client.test", "b@client.test")
    assert ops.address_matches("client.test", "b@client.test") and ops.address_matches("@client.test", "b@CLIENT.test")
    assert not ops.address_matches("client.test", "b@sub.client.test")
    assert ops.address_matches("<>", "") and not ops.address_matches("<>", "a@client.test")
    env = _env(rcpts=("x@remote.test", "y@other.test"))
    assert ops.envelope_matches(Selector(recipient="other.test"), env)
    assert not ops.envelope_matches(Selector(recipient="third.test"), env)
    assert ops.envelope_matches(Selector(sender="client.test", recipient="x@remote.test"), env)
    assert not ops.envelope_matches(Selector(sender="<>"), env)


def test_where_each_action_looks():
    assert ops.sources("hold", None) == ("incoming", "active", "deferred")
    assert ops.sources("release", None) == ("hold",)
    assert ops.sources("delete", None) == ("incoming", "active", "deferred", "hold")
    assert ops.sources("delete", "corrupt") == ("corrupt",)  # only when named
    with pytest.raises(OpsError, match="never taken from"):
        ops.sources("hold", "hold")
    with pytest.raises(OpsError, match="never taken from"):
        ops.sources("requeue", "corrupt")
    with pytest.raises(OpsError, match="unknown action"):
        ops.sources("expire", None)
    with pytest.raises(OpsError, match="not a queue id"):
        ops.check_selector(Selector(ids=["../../etc/passwd"]))
    with pytest.raises(OpsError, match="unknown queue"):
        ops.check_selector(Selector(queue="maildrop"))


def test_qshape_buckets_and_table():
    assert [ops.age_bucket(m * 60) for m in (0, 4.9, 5, 9, 10, 1279, 1280, 99999)] == [0, 0, 1, 1, 2, 8, 9, 9]
    t = ops.shape_table([(["a.test", "b.test"], NOW - 60), (["a.test", "a.test"], NOW - 700), (["c.test"], NOW - 86400)],
                        now=NOW, queues=["deferred"])  # fmt: skip
    assert t["buckets"] == ["5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"]
    assert t["total"] == {"total": 3, "counts": [1, 0, 1, 0, 0, 0, 0, 0, 0, 1]}
    assert [(d["domain"], d["total"]) for d in t["domains"]] == [("a.test", 2), ("b.test", 1), ("c.test", 1)]
    assert t["domains"][0]["counts"][2] == 1  # 700 s = 11.7 minutes: the 10-20 column
    text = ops.format_shape(t)
    head, total = text.splitlines()[:2]
    assert head.split() == ["T", "5", "10", "20", "40", "80", "160", "320", "640", "1280", "1280+"]
    assert total.split() == ["TOTAL", "3", "1", "0", "1", "0", "0", "0", "0", "0", "0", "1"]
    assert ops.domain_of("x@Remote.Test.") == "remote.test" and ops.domain_of("postmaster") == "(local)"


def test_summary_is_postqueue_json():
    env = _env(rcpts=("x@remote.test", "y@remote.test"))
    env.size = 1234
    env.recipients[1].last_reply = "451 4.3.0 try again later"
    s = ops.summary("incoming", env.queue_id, env, None)
    assert s == {"queue_name": "incoming", "queue_id": env.queue_id, "arrival_time": int(NOW), "message_size": 1234,
                 "forced_expire": False, "sender": "a@client.test", "next_attempt": None,
                 "recipients": [{"address": "x@remote.test"}, {"address": "y@remote.test", "delay_reason": "451 4.3.0 try again later"}]}  # fmt: skip
    bad = ops.summary("corrupt", env.queue_id, None, None, "corrupt queue file")
    assert bad["sender"] is None and bad["recipients"] == [] and bad["error"] == "corrupt queue file"


def test_text_output():
    env = _env(sender="", rcpts=("x@remote.test",))
    env.recipients[0].last_reply = "451 4.3.0 later\r\nInjected: header"
    m = ops.summary("hold", env.queue_id, env, None)
    text = ops.format_message(m)
    assert text.startswith(env.queue_id + "!") and "MAILER-DAEMON" in text
    assert "\r" not in text and "\n" + " " * 49 + "(451 4.3.0 later" in text
    assert ops.format_action({"action": "hold", "count": 2, "ids": ["A", "B"], "dry_run": True}).splitlines() == [
        "hold (dry run): would act on 2 message(s)", "A", "B"]
    assert ops.format_action({"action": "delete", "count": 1, "ids": ["A"], "dry_run": False, "missing": ["C"]}).splitlines() == [
        "delete: C: no such message in the queues it acts on", "delete: 1 message(s)"]
    assert ops.format_stats({"time": NOW, "queues": {"incoming": 3}}).splitlines()[0].split() == ["incoming", "3"]
