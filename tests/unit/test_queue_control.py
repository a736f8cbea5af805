"""control/<id>: an administrator's hold or delete of a message under delivery, recorded so that
a stop before the attempt ends does not deliver it (store.py write_controls, read_controls,
remove_control, reclaim_active and recover). Queue files are made by hand in a temporary
directory; nothing runs but the store's own code."""

from __future__ import annotations

import os
from pathlib import Path

from mtaserver.model import ClientInfo, Envelope, Recipient
from mtaserver.queue.store import QueueIdGenerator, QueueStore, dump_envelope, envelope_trailer

IDS = QueueIdGenerator(pid=77)


def _message(store: QueueStore, state: str, *, status: bool = False) -> str:
    qid = IDS.next()
    content = b"Subject: t\r\n\r\nhello\r\n"
    env = Envelope(queue_id=qid, sender="s@example.test", recipients=[Recipient(address="a@example.test")],
                   arrival=1795600000.0, client=ClientInfo(ip="192.0.2.1", port=25), size=len(content))  # fmt: skip
    Path(store.path(state, qid)).write_bytes(content + envelope_trailer(env))
    if status:
        Path(store.status_path(qid)).write_bytes(dump_envelope(env))
    return qid


def _store(tmp_path: Path) -> QueueStore:
    store = QueueStore(tmp_path / "queue")
    store.ensure_dirs()
    return store


def test_a_marker_is_written_whole_private_and_read_back(tmp_path):
    store = _store(tmp_path)
    held, deleted = IDS.next(), IDS.next()
    assert store.write_controls({held: "hold", deleted: "delete"}) == {}
    assert Path(store.control_path(held)).read_bytes() == b"hold\n"
    assert os.stat(store.control_path(deleted)).st_mode & 0o777 == 0o600
    assert os.listdir(store.root / "tmp") == []  # written there first, then renamed
    assert store.read_controls() == {held: "hold", deleted: "delete"}
    assert store.write_controls({held: "delete"}) == {}  # the last request wins
    assert store.read_controls()[held] == "delete"
    store.remove_control(held)
    store.remove_control(held)  # gone already: no error
    assert store.read_controls() == {deleted: "delete"}


def test_a_marker_that_cannot_be_written_is_reported(tmp_path):
    store = _store(tmp_path)
    qid = IDS.next()
    os.mkdir(store.control_path(qid))  # a directory where the marker goes: rename fails
    assert set(store.write_controls({qid: "hold"})) == {qid}
    assert os.listdir(store.root / "tmp") == []


def test_reclaim_holds_or_removes_what_the_markers_say_and_drops_every_marker(tmp_path):
    store = _store(tmp_path)
    plain, held, deleted = _message(store, "active"), _message(store, "active"), _message(store, "active", status=True)
    done = _message(store, "hold")  # held already: the stop came between the move and the marker's removal
    gone = IDS.next()  # delivered or deleted already: no message at all
    assert store.write_controls({held: "hold", deleted: "delete", done: "hold", gone: "delete"}) == {}
    counts = store.reclaim_active()
    assert counts == {"active_requeued": 1, "held": 1, "deleted": 1, "corrupt": 0}
    assert store.list("incoming") == [plain]
    assert store.list("hold") == sorted([held, done])
    assert store.list("active") == []
    assert not os.path.exists(store.path("active", deleted)) and not os.path.exists(store.status_path(deleted))
    assert os.listdir(store.root / "control") == []


def test_recovery_at_start_does_the_same_and_sets_aside_what_is_not_a_marker(tmp_path):
    store = _store(tmp_path)
    plain, held, deleted = _message(store, "active"), _message(store, "active"), _message(store, "active")
    assert store.write_controls({held: "hold", deleted: "delete"}) == {}
    odd = _message(store, "deferred")
    Path(store.control_path(odd)).write_bytes(b"deliver\n")  # no such action
    Path(store.root / "control" / "not-a-queue-id").write_bytes(b"hold\n")
    os.mkdir(store.root / "control" / IDS.next())  # a directory
    Path(store.root / "tmp" / f"{plain}.control").write_bytes(b"ho")  # a marker being written when it stopped
    counts = QueueStore(store.root).recover()
    assert counts["active_requeued"] == 1 and counts["held"] == 1 and counts["deleted"] == 1
    assert store.list("incoming") == [plain]
    assert store.list("hold") == [held]
    assert store.list("deferred") == [odd]  # a bad marker changes nothing
    assert os.listdir(store.root / "control") == [] and os.listdir(store.root / "tmp") == []
    # Set aside under names that are no queue id (corrupt/<id> is a queue file's place).
    assert len(os.listdir(store.root / "corrupt")) == 3
    assert store.list("corrupt") == []


def test_recovery_without_markers_counts_as_before(tmp_path):
    store = _store(tmp_path)
    _message(store, "active")
    assert QueueStore(store.root).recover() == {"tmp_removed": 0, "active_requeued": 1, "corrupt": 0, "orphans_removed": 0}
