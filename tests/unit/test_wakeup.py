from mtaserver.queue.manager import RESCAN, _Wake


def test_the_manager_takes_every_id_of_a_wakeup_and_nothing_else():
    got: list[list[str]] = []
    _Wake(got.append).datagram_received(b"1K131E5Z26E0NJ62B ../etc/passwd 1K131E5Z26E0NJ62C *", None)
    assert got == [["1K131E5Z26E0NJ62B", "1K131E5Z26E0NJ62C", RESCAN]]
