"""A symlink planted in deferred/ is never followed by `queue show`, `queue list` or `queue delete
--bounce` (queue/ops.py): what it points to (here a valid queue file of the same id, outside the
queue) is never opened, and nothing of it (size, mtime, headers) is reported.

Whether the target was opened is watched with inotify (IN_OPEN, IN_ACCESS), through libc."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import struct
from pathlib import Path

import pytest
from builders import commit_message

from mtaserver.queue.ops import QueueOps, Selector
from mtaserver.queue.store import QueueStore

IN_ACCESS, IN_OPEN, IN_NONBLOCK = 0x1, 0x20, 0o4000
SECRET = b"X-Secret: the file the link points to\r\nSubject: outside\r\n\r\nsecret body\r\n"


class Watch:
    """inotify on one file: which of IN_OPEN / IN_ACCESS happened to it since the last look."""

    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = libc.inotify_init1(IN_NONBLOCK)
        if self.fd < 0 or libc.inotify_add_watch(self.fd, bytes(path), IN_OPEN | IN_ACCESS) < 0:
            pytest.skip(f"inotify: {os.strerror(ctypes.get_errno())}")

    def events(self) -> list[int]:
        out = []
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return out
        while data:
            _, mask, _, n = struct.unpack_from("iIII", data)
            out.append(mask)
            data = data[16 + n :]
        return out

    def close(self) -> None:
        os.close(self.fd)


# every message of these tests: from s@client.test to victim@remote.test
_commit = functools.partial(commit_message, rcpts=["victim@remote.test"], sender="s@client.test")


@pytest.fixture
async def planted(tmp_path):
    """A queue with one good deferred message and deferred/<id> -> a valid queue file of that id
    outside the queue (following the link would read a message that parses)."""
    store = QueueStore(tmp_path / "q")
    store.open()
    good = await _commit(store, text=b"Subject: good\r\n\r\nx\r\n")
    store.move(good, "incoming", "deferred")
    link = await _commit(store, text=SECRET + b"padding\r\n" * 500)
    outside = tmp_path / "outside"
    os.rename(store.path("incoming", link), outside)
    os.utime(outside, (1_000_000_000, 1_000_000_000))  # an mtime nobody would report as a next attempt
    os.symlink(outside, store.path("deferred", link))
    watch = Watch(outside)
    yield store, good, link, outside, watch
    watch.close()
    store.close()


async def test_list_and_show_report_the_link_never_its_target(planted):
    store, good, link, outside, watch = planted
    ops = QueueOps(store)
    by_id = {m["queue_id"]: m for m in ops.list()["messages"]}
    assert by_id[good]["sender"] == "s@client.test"
    stray = by_id[link]
    assert stray["sender"] is None and "not a regular file" in stray["error"]
    lst = os.lstat(store.path("deferred", link))
    # before the fix: the target's size and mtime (os.stat followed the link)
    assert stray["message_size"] == lst.st_size != outside.stat().st_size
    assert stray["next_attempt"] == lst.st_mtime != outside.stat().st_mtime

    shown = ops.show(link)
    assert shown is not None and "not a regular file" in shown["error"] and "headers" not in shown
    # The header reader alone (show calls it once the envelope was read, and the file may be
    # swapped for a link in between): before the fix it opened the link's target.
    assert ops._headers("deferred", link, 4096) == []
    assert watch.events() == [], "the link's target was opened"


async def test_delete_bounce_never_reads_the_target(planted):
    store, good, link, outside, watch = planted
    ops = QueueOps(store)
    out = await ops.delete(Selector(ids=[link]), bounce=True)
    assert out["count"] == 1 and out["bounced"] == []  # no notification made from the target
    assert not os.path.lexists(store.path("deferred", link)), "the link itself is removed"
    assert outside.read_bytes().startswith(SECRET), "its target is untouched"
    assert store.list("incoming") == []
    assert watch.events()[:1] == [IN_OPEN], "the test's own read is seen"  # the watch works
    assert store.list("deferred") == [good]


async def test_delete_bounce_reads_nothing_through_the_link(planted):
    store, _, link, _, watch = planted
    await QueueOps(store).delete(Selector(ids=[link]), bounce=True)
    assert watch.events() == [], "delete --bounce opened the link's target"
