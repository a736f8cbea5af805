"""Our SMTP client against real servers: STARTTLS levels, AUTH to the relay host, SIZE, delay warnings."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import AuthResult
from conftest import tls_server_context
from helpers import Sink, delivering, maildir_messages, queue_empty, send, wait_for


@pytest.fixture
def tls_context(tmp_path):
    return tls_server_context(tmp_path, "sink.test")


class TlsSink(Sink):
    """A sink offering STARTTLS; counts the messages that arrived over TLS."""

    tls_sessions = 0

    async def handle_DATA(self, server, session, envelope):
        if session.ssl is not None:
            self.tls_sessions += 1
        return await super().handle_DATA(server, session, envelope)


def _tls_sink(ctx):
    from aiosmtpd.controller import Controller

    sink = TlsSink()
    sink.controller = Controller(sink, hostname="127.0.0.1", port=sink.port, tls_context=ctx)
    return sink


def test_encrypt_delivers_over_starttls(make_mta, tls_context):
    with _tls_sink(tls_context) as sink:
        cfg = delivering(relay=sink.port)
        cfg["outbound"]["tls"] = "encrypt"
        mta = make_mta(cfg)
        send(mta, "s@client.test", ["a@remote.test"])
        wait_for(lambda: sink.messages, what="delivery over TLS")
        assert sink.tls_sessions == 1


def test_may_uses_starttls_when_offered(make_mta, tls_context):
    with _tls_sink(tls_context) as sink:
        mta = make_mta(delivering(relay=sink.port))
        send(mta, "s@client.test", ["a@remote.test"])
        wait_for(lambda: sink.messages, what="delivery")
        assert sink.tls_sessions == 1


def test_encrypt_without_starttls_defers_4_7_4(make_mta):
    with Sink() as sink:
        cfg = delivering(relay=sink.port)
        cfg["outbound"]["tls"] = "encrypt"
        mta = make_mta(cfg)
        send(mta, "s@client.test", ["a@remote.test"])
        wait_for(lambda: "dsn=4.7.4, status=deferred" in mta.log(), what="the deferral")
        assert "TLS is required, but was not offered" in mta.log()
        assert sink.messages == []


def test_auth_to_the_relay_host(make_mta, tmp_path):
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == b"relayuser" and auth_data.password == b"s3cret"
        logins.append((mechanism, auth_data.login, ok))
        return AuthResult(success=ok)

    from aiosmtpd.controller import Controller

    sink = Sink()
    sink.controller = Controller(sink, hostname="127.0.0.1", port=sink.port, authenticator=authenticator, auth_required=True, auth_require_tls=False)
    with sink:
        secret = tmp_path / "relay.secret"
        secret.write_text("s3cret\n")
        cfg = delivering(relay=sink.port)
        # a relay without STARTTLS: the password goes in plain text only when explicitly allowed
        cfg["outbound"]["relay_auth"] = {"username": "relayuser", "password_file": str(secret), "allow_plaintext": True}
        mta = make_mta(cfg)
        send(mta, "s@client.test", ["a@remote.test"])
        wait_for(lambda: sink.messages, what="authenticated delivery")
        assert logins and logins[-1][1:] == (b"relayuser", True)


def test_remote_size_limit_bounces_5_3_4(make_mta):
    from aiosmtpd.controller import Controller

    sink = Sink()
    sink.controller = Controller(sink, hostname="127.0.0.1", port=sink.port, data_size_limit=1000)
    with sink:
        mta = make_mta(delivering(relay=sink.port))
        send(mta, "s@example.test", ["a@remote.test"], b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n" * 40 + b"y" * 2000 + b"\r\n")
        [dsn] = wait_for(lambda: maildir_messages(mta, "s@example.test"), what="the DSN")
        assert b"Status: 5.3.4" in dsn and b"exceeds size limit 1000" in dsn
        assert sink.messages == []


def test_one_delay_warning_then_delivery(make_mta):
    with Sink(data_replies=["451 4.7.1 greylisted"] * 3) as sink:
        mta = make_mta(delivering(relay=sink.port, delay_warning="1s"))
        send(mta, "s@example.test", ["a@remote.test"])
        wait_for(lambda: sink.messages, timeout=30, what="final delivery")
        wait_for(lambda: queue_empty(mta), what="empty queue")
        warnings = maildir_messages(mta, "s@example.test")
        assert len(warnings) == 1, "exactly one delay warning"
        assert b"Subject: Delayed Mail (still being retried)" in warnings[0] and b"Action: delayed" in warnings[0]
