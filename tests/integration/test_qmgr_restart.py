"""kill -9 of the queue manager's process alone (found by bench/soak.py): the supervisor starts it
again, without the server's recovery, and the message it was delivering (left in active/) must
still be delivered. Before the fix it stayed in active/ until the next start of the server."""

from __future__ import annotations

import os
import re
import signal
import socket

from helpers import Sink, delivering, queue_empty, send, wait_for

READY = re.compile(r"\[(\d+)\]: queue manager process ready")


def test_a_killed_queue_manager_delivers_what_it_left_in_active(make_mta):
    # The relay first accepts connections and never greets: the attempt hangs with the message in active/.
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        mta = make_mta({**delivering(relay=port), "server": {"workers": 2}})
        [old] = wait_for(lambda: READY.findall(mta.log()), what="the queue manager process")
        send(mta, "s@client.test", ["a@remote.test"])
        [qid] = wait_for(lambda: mta.queued("active"), what="the attempt to start")
        os.kill(int(old), signal.SIGKILL)
    finally:
        silent.close()
    sink = Sink()
    sink.port = sink.controller.port = port
    with sink:
        wait_for(lambda: len(READY.findall(mta.log())) == 2, what="the queue manager started again")
        [(_, _, data)] = wait_for(lambda: sink.messages, timeout=20, what="delivery of the message left in active/")
        assert f" id {qid}" in data.decode("utf-8", "replace")
        wait_for(lambda: queue_empty(mta), what="empty queue")
    assert "1 message(s) from active/ back to incoming/" in mta.log()
