"""The workers' wake-up datagrams to the queue manager over a real UNIX socket (the pure side,
_Wake's parsing, is tests/unit/test_wakeup.py)."""

from __future__ import annotations

import socket

from mtaserver.queue.manager import MAX_IDS_PER_WAKEUP, RESCAN, notify, wakeup_path


def test_a_lost_wakeup_makes_the_next_one_ask_for_a_full_listing(tmp_path):
    poke = notify(tmp_path)
    poke(["1K131E5Z26E0NJ629"])  # nobody listens yet: lost
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(wakeup_path(tmp_path)))
    manager.setblocking(False)
    poke(["1K131E5Z26E0NJ62A"])
    poke(["1K131E5Z26E0NJ62B", "1K131E5Z26E0NJ62C"])
    poke(["1K131E5Z26E0NJ62D"] * (MAX_IDS_PER_WAKEUP + 1))
    assert manager.recv(100) == RESCAN.encode()  # covers the lost one (and this one)
    assert manager.recv(100) == b"1K131E5Z26E0NJ62B 1K131E5Z26E0NJ62C"
    assert manager.recv(100) == RESCAN.encode()  # too many for one datagram: list them all
    manager.close()
