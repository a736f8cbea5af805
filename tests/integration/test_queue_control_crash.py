"""An administrator's hold or delete of a message being delivered survives kill -9 (queue/store.py
control/, QueueManager.control): the relay takes the connection and stalls in DATA, the message is
held (admin API) or deleted (`mtaserver queue delete`) meanwhile, the server is killed, and the next
start holds or removes it instead of delivering it again. Also when only the queue manager's
process is killed and the supervisor starts it again (QueueManager._reclaim_active)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import threading

from helpers import Sink, cli, delivering, send, wait_for
from smtpclient import restart, wait_for_log

READY = re.compile(r"\[(\d+)\]: queue manager process ready")
STATES = ("incoming", "active", "deferred", "hold", "corrupt")


class Stall(Sink):
    """A relay that takes the connection, the envelope and the content, then does not answer the
    end of DATA until `go` is set (451 then: nothing is kept)."""

    def __init__(self) -> None:
        super().__init__()
        self.in_data = threading.Event()
        self.go = threading.Event()

    async def handle_DATA(self, server, session, envelope):
        self.in_data.set()
        while not self.go.is_set():
            await asyncio.sleep(0.05)
        return "451 4.3.0 not now"


def _under_delivery(make_mta, **server) -> tuple[object, Stall, str]:
    stall = Stall()
    stall.controller.start()
    mta = make_mta({**delivering(relay=stall.port), "server": server})
    send(mta, "s@client.test", ["x@remote.test"])
    [qid] = wait_for(lambda: mta.queued("active"), what="the delivery attempt")
    assert stall.in_data.wait(15), "the relay never got to DATA"
    return mta, stall, qid


def _where(mta, qid: str) -> list[str]:
    return [state for state in STATES if qid in mta.queued(state)]


def _nothing_but_a_canary(mta, port: int, qid: str) -> None:
    """After the restart: a fresh relay on the same port gets a new message, and never `qid`."""
    sink = Sink()
    sink.port = sink.controller.port = port
    with sink:
        send(mta, "canary@client.test", ["y@remote.test"])
        wait_for(lambda: sink.messages, what="the canary's delivery")
        assert [m[0] for m in sink.messages] == ["canary@client.test"]
        assert all(f" id {qid}".encode() not in m[2] for m in sink.messages)


def test_without_a_crash_the_hold_is_done_when_the_attempt_ends_and_its_record_goes(make_mta):
    mta, stall, qid = _under_delivery(make_mta)
    try:
        status, _, body = mta.api("POST", "/api/queue/hold", {"ids": [qid]}, token=mta.admin_token("admin"))
        assert status == 200 and body["pending"] == [qid], body
        assert (mta.queue / "control" / qid).read_bytes() == b"hold\n"
        stall.go.set()
        wait_for(lambda: _where(mta, qid) == ["hold"], what="the hold at the end of the attempt")
        wait_for(lambda: os.listdir(mta.queue / "control") == [], what="the record's removal")
        assert f"{qid}: placed on hold (from deferred)" in mta.log()
    finally:
        stall.controller.stop()


def test_a_hold_asked_during_delivery_survives_kill_9(make_mta):
    mta, stall, qid = _under_delivery(make_mta)
    status, _, body = mta.api("POST", "/api/queue/hold", {"ids": [qid]}, token=mta.admin_token("admin"))
    assert status == 200 and body["pending"] == [qid], body
    assert (mta.queue / "control" / qid).read_bytes() == b"hold\n"
    assert _where(mta, qid) == ["active"]  # nothing moves under the running attempt
    mta.kill9()
    stall.controller.stop()
    restart(mta)
    assert _where(mta, qid) == ["hold"]
    assert os.listdir(mta.queue / "control") == []
    log = mta.log()
    assert f"{qid}: placed on hold (from active, asked during the delivery attempt a stop cut short)" in log
    assert re.search(r"queue recovery: .*active_requeued=0, .*held=1", log), log
    _nothing_but_a_canary(mta, stall.port, qid)
    assert _where(mta, qid) == ["hold"]


def test_a_delete_asked_during_delivery_survives_kill_9(make_mta):
    mta, stall, qid = _under_delivery(make_mta)
    out = cli(mta, "delete", qid).stdout
    assert "being delivered now: done when the attempt ends" in out, out
    assert (mta.queue / "control" / qid).read_bytes() == b"delete\n"
    mta.kill9()
    stall.controller.stop()
    restart(mta)
    assert _where(mta, qid) == []
    assert os.listdir(mta.queue / "control") == [] and os.listdir(mta.queue / "status") == []
    assert f"{qid}: removed (from active, asked during the delivery attempt a stop cut short)" in mta.log()
    _nothing_but_a_canary(mta, stall.port, qid)


def test_a_requeue_replaces_the_hold_and_its_record(make_mta):
    """The last request wins: a requeue after the hold leaves no record (a start requeues anyway)."""
    mta, stall, qid = _under_delivery(make_mta)
    token = mta.admin_token("admin")
    assert mta.api("POST", "/api/queue/hold", {"ids": [qid]}, token=token)[2]["pending"] == [qid]
    assert (mta.queue / "control" / qid).exists()
    assert mta.api("POST", "/api/queue/requeue", {"ids": [qid]}, token=token)[2]["pending"] == [qid]
    assert not (mta.queue / "control" / qid).exists()
    mta.kill9()
    stall.controller.stop()
    restart(mta)
    assert os.listdir(mta.queue / "control") == []
    assert _where(mta, qid) in (["incoming"], ["active"], ["deferred"])  # back in the delivery cycle, not held


def test_a_hold_survives_a_kill_of_the_queue_manager_process_alone(make_mta):
    mta, stall, qid = _under_delivery(make_mta, workers=2)
    try:
        [old] = wait_for(lambda: READY.findall(mta.log()), what="the queue manager process")
        status, _, body = mta.api("POST", "/api/queue/hold", {"ids": [qid]}, token=mta.admin_token("admin"))
        assert status == 200 and body["pending"] == [qid], body
        os.kill(int(old), signal.SIGKILL)
        wait_for(lambda: len(READY.findall(mta.log())) == 2, what="the queue manager started again")
        wait_for_log(mta, f"{qid}: placed on hold (from active, asked during the delivery attempt a stop cut short)")
        assert _where(mta, qid) == ["hold"]
        assert os.listdir(mta.queue / "control") == []
    finally:
        stall.controller.stop()
