"""`mtaserver queue ...` through the real command line, against spools made by a real server.

With the server stopped the commands act on the spool directly (under the instance lock);
while it runs they go through its admin API (tests at the end, skipped until the API serves
/api/queue).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from conftest import deep_merge
from helpers import Sink, cli, delivering, send, wait_for


def stats(mta) -> dict[str, int]:
    return json.loads(cli(mta, "stats", "--json").stdout)["queues"]


def listing(mta, *args: str) -> list[dict]:
    return [json.loads(line) for line in cli(mta, "list", "--json", *args).stdout.splitlines()]


def snapshot(mta) -> dict[str, tuple[float, int]]:
    """Every file under the queue directory, with its mtime and size."""
    out = {}
    for d, _, files in os.walk(mta.queue):
        for f in files:
            st = os.stat(Path(d) / f)
            out[str(Path(d, f).relative_to(mta.queue))] = (st.st_mtime, st.st_size)
    return out


def queued_server(make_mta, messages: list[tuple[str, list[str]]], overrides: dict | None = None):
    """A real server receives these messages (nothing is delivered), then stops."""
    mta = make_mta(overrides)
    for sender, rcpts in messages:
        send(mta, sender, rcpts)
    assert mta.stop() == 0
    return mta


def test_every_action_moves_the_right_files_and_stats_show_it(make_mta):
    mta = queued_server(make_mta, [("a@client.test", ["x@remote.test"]), ("b@client.test", ["y@other.test"]),
                                   ("c@client.test", ["z@remote.test", "w@example.test"])])  # fmt: skip
    assert stats(mta) == {"incoming": 3, "active": 0, "deferred": 0, "hold": 0, "corrupt": 0}
    ids = mta.queued("incoming")
    msgs = listing(mta)
    assert [m["queue_id"] for m in msgs] == ids  # arrival order
    assert msgs[0]["sender"] == "a@client.test" and msgs[0]["recipients"] == [{"address": "x@remote.test"}]
    assert msgs[0]["queue_name"] == "incoming" and msgs[0]["message_size"] > 0

    out = cli(mta, "hold", ids[0]).stdout
    assert "hold: 1 message(s)" in out
    assert mta.queued("hold") == [ids[0]] and mta.queued("incoming") == ids[1:]
    assert stats(mta)["hold"] == 1 and stats(mta)["incoming"] == 2

    cli(mta, "hold", "--to", "remote.test")  # a recipient domain: c's message too
    assert mta.queued("hold") == [ids[0], ids[2]]

    cli(mta, "release", "ALL")
    assert mta.queued("deferred") == [ids[0], ids[2]] and mta.queued("hold") == []
    assert all(m["next_attempt"] <= time.time() + 1 for m in listing(mta, "--queue", "deferred"))

    cli(mta, "requeue", "ALL", "--queue", "deferred")
    assert mta.queued("incoming") == ids and stats(mta)["deferred"] == 0
    shown = json.loads(cli(mta, "show", ids[0], "--json").stdout)
    assert shown["envelope"]["extra"]["requeue"] == "1"
    assert [r["state"] for r in shown["recipients"]] == ["pending"]

    cli(mta, "delete", ids[1])
    assert mta.queued("incoming") == [ids[0], ids[2]]
    assert stats(mta) == {"incoming": 2, "active": 0, "deferred": 0, "hold": 0, "corrupt": 0}


def test_show_gives_envelope_status_headers_and_trail(make_mta):
    mta = queued_server(make_mta, [("a@client.test", ["x@remote.test", "y@remote.test"])])
    [qid] = mta.queued("incoming")
    m = json.loads(cli(mta, "show", qid, "--json").stdout)
    assert m["queue_id"] == qid and m["queue_name"] == "incoming" and m["next_attempt"] is None
    assert m["envelope"]["sender"] == "a@client.test" and m["envelope"]["client"]["ip"] == "127.0.0.1"
    assert [r["address"] for r in m["recipients"]] == ["x@remote.test", "y@remote.test"]
    assert m["headers"][0].startswith("Received: from ") and "Subject: t" in m["headers"]
    assert isinstance(m["trail"], list)
    text = cli(mta, "show", qid).stdout
    assert f"queue id:      {qid}" in text and "<x@remote.test> pending" in text and "  Subject: t" in text
    missing = cli(mta, "show", "0" * 17, check=False)
    assert missing.returncode == 1 and "no such message" in missing.stderr


def test_dry_run_changes_nothing_and_says_which(make_mta):
    mta = queued_server(make_mta, [("a@client.test", ["x@remote.test"]), ("b@client.test", ["y@remote.test"])])
    ids = mta.queued("incoming")
    before = snapshot(mta)
    for verb in ("hold", "requeue", "delete"):
        out = cli(mta, verb, "ALL", "--dry-run").stdout
        assert f"{verb} (dry run): would act on 2 message(s)" in out and all(i in out for i in ids)
    result = json.loads(cli(mta, "delete", "ALL", "--bounce", "--dry-run", "--json").stdout)
    assert result == {"action": "delete", "count": 2, "ids": ids, "dry_run": True, "bounce": True}
    assert snapshot(mta) == before


def test_delete_bounce_returns_the_message_to_its_sender(make_mta):
    mta = queued_server(make_mta, [("a@client.test", ["x@remote.test"]), ("", ["y@remote.test"])])
    ids = mta.queued("incoming")
    result = json.loads(cli(mta, "delete", "ALL", "--bounce", "--json").stdout)
    assert result["count"] == 2 and len(result["bounced"]) == 1  # never a notification to the null sender
    [dsn] = mta.queued("incoming")
    assert dsn == result["bounced"][0] and dsn not in ids
    [m] = listing(mta)
    assert m["sender"] == "" and m["recipients"] == [{"address": "a@client.test"}]
    body = mta.body(dsn)
    assert b"Subject: Undelivered Mail Returned to Sender" in body and b"Action: failed" in body
    assert b"deleted from the queue by the mail system administrator" in body


def test_list_pages_and_selectors(make_mta):
    mta = queued_server(make_mta, [(f"s{i}@client.test", [f"r{i}@d{i % 2}.test"]) for i in range(5)])
    ids = mta.queued("incoming")
    first = listing(mta, "--limit", "2")
    assert [m["queue_id"] for m in first] == ids[:2]
    rest = listing(mta, "--after", ids[1])
    assert [m["queue_id"] for m in rest] == ids[2:]
    assert [m["queue_id"] for m in listing(mta, "--to", "d1.test")] == [ids[1], ids[3]]
    assert [m["queue_id"] for m in listing(mta, "--from", "s4@CLIENT.test")] == [ids[4]]
    assert listing(mta, "--older-than", "1h") == [] and len(listing(mta, "--newer-than", "1h")) == 5
    text = cli(mta, "list").stdout
    assert text.splitlines()[0].startswith("-Queue ID-") and "in 5 Requests." in text
    shape = json.loads(cli(mta, "shape", "--json").stdout)
    assert shape["total"]["total"] == 5 and shape["total"]["counts"][0] == 5
    assert {d["domain"]: d["total"] for d in shape["domains"]} == {"d0.test": 3, "d1.test": 2}
    assert "TOTAL" in cli(mta, "shape").stdout


def test_refusals(make_mta):
    mta = queued_server(make_mta, [("a@client.test", ["x@remote.test"])])
    for args, text in [(("hold",), "name the messages"), (("hold", "ALL", "--queue", "hold"), "never taken from"),
                       (("hold", "nonsense"), "not a queue id"), (("hold", "ALL", "--older-than", "soon"), "--older-than")]:  # fmt: skip
        proc = cli(mta, *args, check=False)
        assert proc.returncode == 1 and text in proc.stderr, proc.stderr
    assert mta.queued("incoming") and not mta.queued("hold")


def test_held_mail_is_not_delivered_until_released(make_mta):
    with Sink() as sink:
        mta = queued_server(make_mta, [("a@client.test", ["x@remote.test"]), ("b@client.test", ["y@remote.test"])])
        held, _ = mta.queued("incoming")
        cli(mta, "hold", held)
        mta.config = deep_merge(mta.config, delivering(relay=sink.port))
        mta.write_config()
        mta.start()
        wait_for(lambda: sink.messages, what="delivery of the other message")
        wait_for(lambda: not mta.queued("incoming") and not mta.queued("active"), what="an idle queue")
        assert [m[0] for m in sink.messages] == ["b@client.test"]
        assert mta.queued("hold") == [held]
        assert mta.stop() == 0
        cli(mta, "release", held)
        assert mta.queued("deferred") == [held]
        mta.start()
        wait_for(lambda: len(sink.messages) == 2, what="delivery after the release")
        assert sink.messages[1][0] == "a@client.test"


def test_flush_delivers_deferred_mail_at_once(make_mta):
    with Sink(data_replies=["451 4.3.0 try again later"]) as sink:
        # The next attempt would be an hour away.
        mta = make_mta(delivering(relay=sink.port, min_backoff="1h", max_backoff="2h"))
        send(mta, "a@client.test", ["x@remote.test"])
        wait_for(lambda: mta.queued("deferred"), what="a deferred message")
        assert mta.stop() == 0
        [m] = listing(mta)
        assert m["next_attempt"] > time.time() + 3000 and m["recipients"][0]["delay_reason"] == "451 4.3.0 try again later"
        assert "flush: 1 deferred message(s)" in cli(mta, "flush").stdout
        mta.start()
        wait_for(lambda: sink.messages, what="delivery after the flush")
        wait_for(lambda: not mta.queued("deferred"), what="an empty queue")


# ---------------------------------------------------------------------------------------------
# While the server runs: the same commands through its admin API.


def _admin_api(make_mta, overrides: dict | None = None):
    from conftest import free_port

    port = free_port()
    mta = make_mta(deep_merge({"admin": {"listen": f"127.0.0.1:{port}"}}, overrides or {}))
    try:
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=5).close()
    except OSError:
        pytest.skip("the admin API does not serve yet")
    from mtaserver.supervisor import holder_pid

    if holder_pid(mta.data_dir) is None:
        pytest.skip("the server does not hold the instance lock yet")
    return mta


def audited(mta) -> str:
    path = mta.data_dir / "admin-audit.log"
    return path.read_text() if path.exists() else ""


def test_running_server_through_the_admin_api(make_mta):
    mta = _admin_api(make_mta)
    send(mta, "a@client.test", ["x@remote.test"])
    send(mta, "b@client.test", ["y@remote.test"])
    ids = mta.queued("incoming")
    assert stats(mta)["incoming"] == 2
    assert [m["queue_id"] for m in listing(mta)] == ids
    before = snapshot(mta)
    assert "would act on 2" in cli(mta, "hold", "ALL", "--dry-run").stdout
    assert snapshot(mta) == before
    cli(mta, "hold", ids[0])
    assert mta.queued("hold") == [ids[0]] and stats(mta)["hold"] == 1
    assert json.loads(cli(mta, "show", ids[0], "--json").stdout)["queue_name"] == "hold"
    cli(mta, "release", ids[0])
    assert mta.queued("deferred") == [ids[0]]
    cli(mta, "delete", "ALL")
    assert stats(mta) == {"incoming": 0, "active": 0, "deferred": 0, "hold": 0, "corrupt": 0}
    log = audited(mta)  # the actions went through the API
    assert all(f"queue.{verb}" in log for verb in ("hold", "release", "delete"))


def test_running_server_holds_flushes_and_releases_through_the_admin_api(make_mta):
    with Sink(data_replies=["451 4.3.0 try again later", "451 4.3.0 try again later"]) as sink:
        mta = _admin_api(make_mta, delivering(relay=sink.port, min_backoff="1h", max_backoff="2h"))
        send(mta, "a@client.test", ["x@remote.test"])
        send(mta, "b@client.test", ["y@remote.test"])
        wait_for(lambda: len(mta.queued("deferred")) == 2, what="two deferred messages")
        held, _ = mta.queued("deferred")
        cli(mta, "hold", held)
        assert mta.queued("hold") == [held]
        assert "flush: 1 deferred message(s)" in cli(mta, "flush").stdout
        wait_for(lambda: len(sink.messages) == 1, what="delivery after the flush")
        assert sink.messages[0][0] == "b@client.test" and mta.queued("hold") == [held]
        cli(mta, "release", held)
        wait_for(lambda: len(sink.messages) == 2, what="delivery after the release")
        assert sink.messages[1][0] == "a@client.test"
        assert "queue.flush" in audited(mta) and "queue.release" in audited(mta)
