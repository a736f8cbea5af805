"""A message's content for delivery: read in pieces from its queue file, never whole.

DESCRIPTION
    `Content` is the content part of a queue file (store.QueueStore.open_content): `size`
    bytes from offset 0 of an open, read-only descriptor. The deliveries (delivery/smtp.py,
    delivery/lmtp.py, delivery/maildir.py) read it in CHUNK-sized pieces with pread(2), so a
    50 MB message costs the queue manager a few pieces in memory, not 50 MB; pread keeps
    readers independent (the SMTP client in the event loop, maildir in threads, at once).
    `Content(b"...")` holds bytes in memory (messages we make, tests) behind the same interface.

      head(limit)      the header section (through its empty line), at most `limit` bytes
      chunks()         the pieces, in order (for a thread)
      achunks()        the same for the event loop: pieces of a large file are read in a thread
      read_all()       everything (a DSN with the whole original, the content filters)

    The owner (the queue manager, for the length of one attempt) closes it.

SECURITY
    The descriptor was opened with O_NOFOLLOW and checked to be a regular file (store.open_regular).

CONFIG
    None.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

CHUNK = 1 << 18  # bytes per piece (smtp.SEND_CHUNK is the same)
HEAD_LIMIT = 256 * 1024  # the header section is looked for in this many bytes
THREAD_OVER = 1 << 20  # pieces of a file larger than this are read in a thread (achunks)


class Content:
    __slots__ = ("_data", "_fd", "size")

    def __init__(self, data: bytes | bytearray | memoryview = b"", *, fd: int | None = None, size: int | None = None) -> None:
        self._fd = fd
        if fd is None:
            self._data = memoryview(bytes(data) if not isinstance(data, bytes) else data)
            self.size = len(self._data)
        else:
            assert size is not None
            self._data = memoryview(b"")
            self.size = size

    @classmethod
    def of(cls, body: bytes | bytearray | memoryview | Content) -> Content:
        return body if isinstance(body, Content) else cls(body)

    def __len__(self) -> int:
        return self.size

    def read(self, start: int, n: int) -> bytes:
        """Up to `n` bytes from `start` (fewer only at the end of the content)."""
        n = max(0, min(n, self.size - start))
        if self._fd is None:
            return bytes(self._data[start : start + n])
        parts = []
        while n > 0:
            got = os.pread(self._fd, n, start)
            if not got:
                raise OSError(f"queue file shorter than its content ({start} of {self.size} bytes)")
            parts.append(got)
            start += len(got)
            n -= len(got)
        return b"".join(parts) if len(parts) != 1 else parts[0]

    def head(self, limit: int = HEAD_LIMIT) -> bytes:
        """The header section through its empty line (CRLF CRLF), or the first `limit` bytes
        when it is longer (or the whole content when it has no body)."""
        window = self.read(0, limit)
        end = window.find(b"\r\n\r\n")
        return window if end < 0 else window[: end + 4]

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        for start in range(0, self.size, size):
            yield self.read(start, size)

    async def achunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        threaded = self._fd is not None and self.size > THREAD_OVER
        for start in range(0, self.size, size):
            yield await asyncio.to_thread(self.read, start, size) if threaded else self.read(start, size)

    def read_all(self) -> bytes:
        return self.read(0, self.size)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self.size = 0
