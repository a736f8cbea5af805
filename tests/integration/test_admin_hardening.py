"""Regression tests of the issue-14 review against running servers: the admin API answers 401
before it reads a body and bounds every body; the raw file needs the admin role (live
configuration under server.user: test_root_writer.py); root never works through a link planted in the
data directory at start; a token file outside data_dir is readable after the drop; the queue
commands with no admin API, and never through $http_proxy."""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys

import pytest
from conftest import Mta
from helpers import as_root, open_dir_fixture  # noqa: F401  (the fixture open_dir)
from smtpclient import wait_for_log

ADMIN = "a" * 20 + "admintoken"
READ = "r" * 20 + "readtoken"


def with_tokens(make_mta, overrides: dict | None = None) -> Mta:
    mta = make_mta(overrides, start=False)
    mta.data_dir.mkdir(parents=True)
    (mta.data_dir / "admin.token").write_text(f"admin {ADMIN} boss\nread {READ} viewer\n")
    os.chmod(mta.data_dir / "admin.token", 0o600)
    mta.start()
    wait_for_log(mta, "admin API ready")
    return mta


def raw_request(mta: Mta, head: str, chunks: list[bytes] | None) -> bytes:
    """An HTTP/1.1 request: `chunks` as a chunked body, or none sent; the start of the answer."""
    host, port = mta.config["admin"]["listen"].rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(head.encode() + b"Connection: close\r\n\r\n")
        try:
            for c in chunks or []:
                s.sendall(b"%x\r\n%s\r\n" % (len(c), c))
            if chunks is not None:
                s.sendall(b"0\r\n\r\n")
        except OSError:  # the server answered and closed meanwhile
            pass
        return s.recv(4096)


def test_no_token_is_401_before_the_body_is_parsed_and_every_body_is_bounded(make_mta):
    mta = with_tokens(make_mta)
    # No token, a body that does not parse: 401, not a 422 with the parser's detail.
    status, headers, _ = mta.api("POST", "/api/queue/hold", b"{not json")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    assert mta.api("POST", "/api/queue/hold", b"{not json", token="wrong" * 5)[0] == 401
    # A declared body past MAX_BODY on a queue route (not only /api/config): 413 before it is sent.
    head = (f"POST /api/queue/hold HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {ADMIN}\r\n"
            "Content-Type: application/json\r\n")
    answer = raw_request(mta, head + f"Content-Length: {2 << 20}\r\n", None)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    # The same streamed in chunks with no Content-Length: 413 too.
    answer = raw_request(mta, head + "Transfer-Encoding: chunked\r\n", [b"[" * 65536] * 40)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
    # Under the limit it still works.
    status, _, body = mta.api("POST", "/api/queue/hold", {"all": True, "dry_run": True}, token=ADMIN)
    assert status == 200 and body["count"] == 0


def test_the_raw_file_needs_the_admin_role(make_mta):
    mta = with_tokens(make_mta)
    assert mta.api("GET", "/api/config/raw", token=READ)[0] == 403
    assert mta.api("GET", "/api/config", token=READ)[0] == 200
    assert mta.api("GET", "/api/config/raw", token=ADMIN)[0] == 200


@pytest.mark.parametrize("where", ["metrics", "queue/tmp"])
def test_a_planted_symlink_refuses_the_start_and_root_touches_nothing_through_it(make_mta, tmp_path, where):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "precious").write_text("keep me\n")
    mta = make_mta(start=False)
    (mta.data_dir / where).parent.mkdir(parents=True, exist_ok=True)
    (mta.data_dir / where).symlink_to(victim)
    with pytest.raises(RuntimeError, match="symbolic link"):
        mta.start()
    assert (victim / "precious").read_text() == "keep me\n"


def test_a_token_file_outside_data_dir_is_made_for_server_user(open_dir):
    as_root()
    tokens = open_dir / "etc" / "admin.token"
    mta = Mta(open_dir, {"server": {"user": "nobody"}, "admin": {"token_file": str(tokens)}})
    try:
        mta.start()
        wait_for_log(mta, "admin API ready")
        assert os.stat(tokens).st_uid == pwd.getpwnam("nobody").pw_uid
        token = next(ln.split()[1] for ln in tokens.read_text().splitlines() if ln.startswith("admin "))
        assert mta.api("GET", "/api/queue/stats", token=token)[0] == 200
        mta.stop()
        os.chown(tokens, 0, 0)  # root's, 0600: the API could not read it after the drop
        mta.log_path.write_text("")  # start() looks for "ready:" in the log
        with pytest.raises(RuntimeError, match="cannot be read by server.user"):
            mta.start()
    finally:
        mta.stop()


def _queue_cli(mta: Mta, *args: str, env: dict | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtaserver", "queue", *args, "-c", str(mta.config_path)],
                          check=False, capture_output=True, text=True, timeout=60, cwd=mta.tmp, env=env)  # fmt: skip


def test_queue_commands_with_a_server_that_has_no_admin_api(make_mta):
    mta = make_mta({"admin": {"listen": None}})
    out = _queue_cli(mta, "stats")
    assert out.returncode == 1 and "without an admin API" in out.stderr and "Traceback" not in out.stderr, out.stderr


def test_queue_commands_never_go_through_a_proxy(make_mta):
    mta = with_tokens(make_mta)
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "http_proxy", "all_proxy")}
    env["http_proxy"] = env["HTTP_PROXY"] = "http://127.0.0.1:9"  # nothing listens: a proxied request fails
    out = _queue_cli(mta, "stats", "--json", env=env)
    assert out.returncode == 0, out.stderr
