import socket

from mtaserver.queue.manager import RESCAN, notify, wakeup_path


def test_a_lost_wakeup_makes_the_next_one_ask_for_a_full_listing(tmp_path):
    poke = notify(tmp_path)
    poke("1K131E5Z26E0NJ629")  # nobody listens yet: lost
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(wakeup_path(tmp_path)))
    manager.setblocking(False)
    poke("1K131E5Z26E0NJ62A")
    poke("1K131E5Z26E0NJ62B")
    assert manager.recv(100) == RESCAN.encode()  # covers the lost one (and this one)
    assert manager.recv(100) == b"1K131E5Z26E0NJ62B"
    manager.close()
