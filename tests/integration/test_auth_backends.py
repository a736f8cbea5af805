"""The password backends against real verifiers: Dovecot's auth service, and the users file.

DovecotAuthenticator talks to a real Dovecot (dovecot_auth.py) over its inet_listener and its
UNIX socket: a good password, a wrong one, an unknown login, requests in flight together on one
connection, Dovecot's own temporary failure (a passdb error), Dovecot stopped (temporary,
then a reconnect once it is back). FileAuthenticator checks a users file with all three hash
schemes end to end through build(). `mtaserver auth hash` runs as a real process.

Dovecot delays every refusal by about 0.5 s and penalises a client address that keeps failing
(anvil), so every test that fails a password uses its own client address.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import argon2
import bcrypt
import pytest
from dovecot_auth import DovecotAuth

from mtaserver.auth import backend
from mtaserver.auth.backend import AuthResult, DovecotAuthenticator, FileAuthenticator
from mtaserver.auth.hashes import sha512_crypt, verify
from mtaserver.config import AuthConfig
from mtaserver.values import parse_endpoint

from conftest import free_port

USERS = {"alice": "alice pw", "bob@example.test": "bob-pw-€"}
LIP = "127.0.0.1"


@pytest.fixture(scope="module")
def dovecot(tmp_path_factory):
    server = DovecotAuth(USERS).start()  # one for the module: Dovecot takes a moment to stop
    yield server
    server.stop(keep_log_in=tmp_path_factory.mktemp("dovecot-auth-log"))


@pytest.fixture(params=["inet", "unix"])
async def authenticator(request, dovecot):
    where = dovecot.address if request.param == "inet" else f"unix:{dovecot.unix_path}"
    auth = DovecotAuthenticator(parse_endpoint(where), timeout=10)
    yield auth
    await auth.close()


async def test_dovecot_right_password(authenticator, dovecot):
    assert await authenticator.check() == ""
    result = await authenticator.authenticate("alice", "alice pw", client_ip="192.0.2.10", local_ip=LIP, secured=True)
    assert result == AuthResult(ok=True, login="alice", reason="dovecot: ok")
    result = await authenticator.authenticate(
        "bob@example.test", "bob-pw-€", client_ip="192.0.2.10", local_ip=LIP, secured=True
    )  # fmt: skip
    assert result.ok and result.login == "bob@example.test"


async def test_dovecot_wrong_password_and_unknown_login(authenticator, dovecot):
    rip = "192.0.2.21" if authenticator.endpoint.unix_path is None else "192.0.2.22"
    wrong = await authenticator.authenticate("alice", "alice PW", client_ip=rip, local_ip=LIP, secured=True)
    assert not wrong.ok and not wrong.temporary and wrong.login is None
    unknown = await authenticator.authenticate("mallory", "x", client_ip=rip + "0", local_ip=LIP, secured=True)
    assert not unknown.ok and not unknown.temporary
    # The connection is still good after refusals.
    assert (await authenticator.authenticate("alice", "alice pw", client_ip="192.0.2.10", local_ip=LIP, secured=True)).ok


async def test_dovecot_requests_on_one_connection_do_not_wait_for_each_other(dovecot):
    """Dovecot holds a refusal back for a while; a good login sent after it is answered first."""
    auth = DovecotAuthenticator(parse_endpoint(dovecot.address), timeout=10)
    try:
        bad = asyncio.create_task(auth.authenticate("alice", "nope", client_ip="192.0.2.31", local_ip=LIP, secured=True))
        await asyncio.sleep(0)  # the bad request goes out first
        good = asyncio.create_task(auth.authenticate("alice", "alice pw", client_ip="192.0.2.32", local_ip=LIP, secured=True))
        done, _ = await asyncio.wait({bad, good}, return_when=asyncio.FIRST_COMPLETED)
        assert done == {good} and good.result().ok
        assert not (await bad).ok
    finally:
        await auth.close()


async def test_dovecot_stopped_is_temporary_then_reconnects():
    server = DovecotAuth(USERS)
    try:
        server.start()
        auth = DovecotAuthenticator(parse_endpoint(f"unix:{server.unix_path}"), timeout=10)
        assert (await auth.authenticate("alice", "alice pw", client_ip="192.0.2.41", local_ip=LIP, secured=True)).ok

        # Dovecot's own temporary failure: its passdb has an internal error.
        result = await auth.authenticate("tempfail", "x", client_ip="192.0.2.42", local_ip=LIP, secured=True)
        assert result == AuthResult(ok=False, temporary=True, reason="dovecot: temp_fail")

        server.stop_process()  # the connection we hold dies with it
        result = await auth.authenticate("alice", "alice pw", client_ip="192.0.2.43", local_ip=LIP, secured=True)
        assert not result.ok and result.temporary, result
        result = await auth.authenticate("alice", "alice pw", client_ip="192.0.2.43", local_ip=LIP, secured=True)
        assert not result.ok and result.temporary and "connect" in result.reason, result
        assert await auth.check() != ""

        server.start()  # the same socket path again
        assert (await auth.authenticate("alice", "alice pw", client_ip="192.0.2.44", local_ip=LIP, secured=True)).ok
        await auth.close()
    finally:
        server.stop()


async def test_dovecot_that_never_answers_is_temporary_within_the_timeout():
    """A listener that accepts and says nothing: the timeout turns it into a temporary failure."""
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    auth = DovecotAuthenticator(parse_endpoint(f"127.0.0.1:{port}"), timeout=0.3)
    try:
        result = await auth.authenticate("alice", "alice pw", client_ip="192.0.2.51", local_ip=LIP, secured=True)
        assert not result.ok and result.temporary and "did not answer" in result.reason
    finally:
        await auth.close()
        silent.close()
        await silent.wait_closed()


async def test_dovecot_nobody_listening():
    auth = DovecotAuthenticator(parse_endpoint(f"127.0.0.1:{free_port()}"), timeout=5)
    result = await auth.authenticate("alice", "alice pw", client_ip="192.0.2.52", local_ip=LIP, secured=True)
    assert result.temporary and not result.ok
    assert "alice pw" not in result.reason
    await auth.close()


async def test_build_dovecot_backend(dovecot):
    auth, why = backend.build(AuthConfig(backend="dovecot", dovecot_socket=str(dovecot.unix_path)), "")
    assert why == "" and isinstance(auth, DovecotAuthenticator)
    assert (await auth.authenticate("alice", "alice pw", client_ip="192.0.2.10", local_ip=LIP, secured=True)).ok
    await auth.close()


# --- the users file


def users_file_text() -> str:
    fast = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    return (
        f"alice:\n  password: '{fast.hash('alice pw')}'\n  addresses: [alice@example.test]\n"
        f"bob:\n  password: '{bcrypt.hashpw(b'bob pw', bcrypt.gensalt(rounds=4)).decode()}'\n"
        f"carol:\n  password: '{sha512_crypt(b'carol pw', '$6$rounds=1000$carolsalt')}'\n"
    )


async def test_file_authenticator_end_to_end(tmp_path):
    (tmp_path / "users.yaml").write_text(users_file_text())
    (tmp_path / "mtaserver.yaml").write_text("")
    auth, why = backend.build(AuthConfig(users_file="users.yaml"), str(tmp_path / "mtaserver.yaml"))
    assert why == "" and isinstance(auth, FileAuthenticator)
    kw = dict(client_ip="192.0.2.60", local_ip=LIP, secured=True)
    for login, password in (("alice", "alice pw"), ("bob", "bob pw"), ("carol", "carol pw")):
        assert await auth.authenticate(login, password, **kw) == AuthResult(ok=True, login=login)
        wrong = await auth.authenticate(login, password.upper(), **kw)
        assert not wrong.ok and not wrong.temporary
    unknown = await auth.authenticate("mallory", "alice pw", **kw)
    assert not unknown.ok and not unknown.temporary and unknown.reason == "unknown login"
    assert not (await auth.authenticate("", "", **kw)).ok
    assert auth.users.owners("alice@example.test") == {"alice"}
    await auth.close()


async def test_file_authenticator_verifies_concurrently_off_the_loop(tmp_path):
    (tmp_path / "users.yaml").write_text(users_file_text())
    auth, _ = backend.build(AuthConfig(users_file=str(tmp_path / "users.yaml")), "")
    kw = dict(client_ip="192.0.2.61", local_ip=LIP, secured=True)
    results = await asyncio.gather(*(auth.authenticate("alice", pw, **kw) for pw in ["alice pw", "x"] * 10))
    assert [r.ok for r in results] == [True, False] * 10


def test_build_without_a_users_file():
    auth, why = backend.build(AuthConfig(), "")
    assert auth is None and "users_file" in why


def test_build_with_a_bad_users_file_is_an_error_naming_file_and_line(tmp_path):
    path = tmp_path / "users.yaml"
    path.write_text("alice:\n  password: '$1$x$y'\n")
    with pytest.raises(ValueError, match=rf"^{path}: line 2: login 'alice': unknown password hash scheme"):
        backend.build(AuthConfig(users_file=str(path)), "")
    with pytest.raises(ValueError, match="missing.yaml"):
        backend.build(AuthConfig(users_file="missing.yaml"), str(tmp_path / "mtaserver.yaml"))


# --- mtaserver auth hash


def run_hash(stdin: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtaserver", "auth", "hash"], input=stdin, capture_output=True, text=True, timeout=60
    )  # fmt: skip


def test_cli_auth_hash_reads_one_line_from_stdin():
    r = run_hash("correct horse battery\nsecond line ignored\n")
    assert r.returncode == 0, r.stderr
    hash_ = r.stdout.strip()
    assert hash_.startswith("$argon2id$") and r.stdout.count("\n") == 1
    assert verify(hash_, "correct horse battery") and not verify(hash_, "correct horse battery\n")
    assert "correct horse" not in r.stdout + r.stderr


def test_cli_auth_hash_refuses_an_empty_password():
    r = run_hash("\n")
    assert r.returncode == 1 and r.stdout == "" and "empty password" in r.stderr
