"""Which listener settings each bound socket serves after a reload (app.listeners_after), and the
config a worker started again on the start's sockets runs (app.bound_to): pure, no sockets."""

from __future__ import annotations

from mtaserver.app import bound_to, listeners_after
from mtaserver.config import Config


def cfg(*listeners: dict) -> Config:
    return Config.model_validate({"server": {"listeners": list(listeners)}})


SMTP = {"name": "smtp", "address": "127.0.0.1:25", "tls": "none", "auth": "none"}
SUB = {"name": "sub", "address": "127.0.0.1:587", "tls": "none", "auth": "require"}


def test_a_reordered_file_keeps_each_socket_with_its_own_listener():
    start = cfg(SMTP, SUB)
    new = cfg(SUB, {**SMTP, "postscreen": True})
    got = bound_to(list(start.server.listeners), new)
    assert [(x.name, str(x.address), x.postscreen) for x in got.server.listeners] == [
        ("smtp", "127.0.0.1:25", True), ("sub", "127.0.0.1:587", False)]  # fmt: skip
    assert got.domains == new.domains and got.digest == new.digest


def test_an_unchanged_layout_is_the_new_config_itself():
    start = cfg(SMTP, SUB)
    new = cfg({**SMTP, "auth": "offer"}, SUB)
    assert bound_to(list(start.server.listeners), new) is new


def test_a_listener_renamed_and_moved_keeps_what_it_served():
    start = cfg(SMTP, SUB)
    new = cfg({**SMTP, "name": "mx", "address": "127.0.0.1:2525"}, {**SUB, "auth": "offer"})
    got = listeners_after(list(start.server.listeners), new)
    assert (got[0].name, str(got[0].address)) == ("smtp", "127.0.0.1:25")  # a restart binds the moved one
    assert (got[1].name, got[1].auth) == ("sub", "offer")
