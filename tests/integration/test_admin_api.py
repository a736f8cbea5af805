"""The admin HTTP API of a running server, over a real socket: tokens and roles, the audit log,
OpenAPI, the services view, the postscreen cache, the effective configuration, the queue."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any

import pytest
from conftest import free_port
from scanners import clamd_fixture, spamd_fixture  # noqa: F401
from smtpclient import TRUSTED, Mta, SmtpClient, queue_id_of, wait_for, wait_for_log

READ = "r" * 20 + "readtoken"
OPERATOR = "o" * 20 + "operatortoken"
ADMIN = "a" * 20 + "admintoken"
TOKENS = f"# test tokens\nread {READ} viewer\noperator {OPERATOR} ops   # the on-call\nadmin {ADMIN} boss\n"


def api(mta: Mta, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, str], Any]:
    return mta.api(method, path, body, **kw)


def with_tokens(make_mta, overrides: dict | None = None) -> Mta:
    mta = make_mta(overrides, start=False)
    mta.data_dir.mkdir(parents=True)
    (mta.data_dir / "admin.token").write_text(TOKENS)
    os.chmod(mta.data_dir / "admin.token", 0o600)
    mta.start()
    wait_for_log(mta, "admin API ready")  # it has read the token file
    return mta


def audit_lines(mta: Mta) -> list[list[Any]]:
    """The audit log as [time, name, ip, action, selector, result] rows."""
    path = mta.data_dir / "admin-audit.log"
    rows = []
    for line in path.read_text().splitlines():
        t, name, ip, action, rest = line.split(" ", 4)
        selector, end = json.JSONDecoder().raw_decode(rest)
        rows.append([t, name, ip, action, selector, json.loads(rest[end:])])
    return rows


def send(mta: Mta, n: int = 1) -> list[str]:
    ids = []
    with SmtpClient(mta.port, TRUSTED) as c:
        c.greeting()
        c.ehlo()
        for i in range(n):
            ids.append(queue_id_of(c.send_message("s@client.test", [f"u{i}@example.test"], b"Subject: t\r\n\r\nhello\r\n")))
    return ids


# ---------------------------------------------------------------------------------------------
# Tokens, roles, audit.


def test_token_file_made_on_first_start(make_mta):
    mta = make_mta()
    path = mta.data_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = [ln.split() for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    assert len(lines) == 1 and lines[0][0] == "admin" and lines[0][2] == "initial" and len(lines[0][1]) >= 40
    status, _, body = api(mta, "GET", "/api/queue/stats", token=mta.admin_token())
    assert status == 200 and body["node"] == "mx.example.test"
    assert "admin API ready" in mta.log()


def test_health_needs_no_token(mta):
    assert api(mta, "GET", "/api/health")[::2] == (200, {"status": "ok"})


def test_no_token_or_a_wrong_one_is_401(make_mta):
    mta = with_tokens(make_mta)
    for token in (None, "x" * 30, READ + "x", READ[:-1]):
        status, headers, body = api(mta, "GET", "/api/queue/stats", token=token)
        assert status == 401, (token, body)
        assert headers["www-authenticate"].startswith("Bearer")
    # Not a bearer scheme at all
    req = urllib.request.Request(mta.admin_url + "/api/queue/stats", headers={"Authorization": f"Basic {READ}"})
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(req, timeout=10)
    assert exc.value.code == 401


def test_roles(make_mta):
    mta = with_tokens(make_mta)
    for token in (READ, OPERATOR, ADMIN):
        assert api(mta, "GET", "/api/queue/stats", token=token)[0] == 200
        assert api(mta, "GET", "/api/config", token=token)[0] == 200
        assert api(mta, "GET", "/api/services", token=token)[0] == 200
    hold = {"all": True, "dry_run": True}
    status, _, body = api(mta, "POST", "/api/queue/hold", hold, token=READ)
    assert status == 403 and "operator" in body["detail"]
    assert api(mta, "POST", "/api/queue/hold", hold, token=OPERATOR)[0] == 200
    assert api(mta, "POST", "/api/queue/hold", hold, token=ADMIN)[0] == 200
    assert api(mta, "DELETE", "/api/postscreen/127.0.0.9", token=READ)[0] == 403
    assert api(mta, "DELETE", "/api/postscreen/127.0.0.9", token=OPERATOR)[0] == 200
    patch = {"server": {"limits": {"recipients": 7}}}
    text = mta.config_path.read_text()
    assert api(mta, "PATCH", "/api/config", patch, token=OPERATOR)[0] == 403
    assert mta.config_path.read_text() == text  # refused: nothing written
    assert api(mta, "PATCH", "/api/config", patch, token=ADMIN)[0] == 200

    rows = audit_lines(mta)
    assert [(r[1], r[3], r[5]["status"]) for r in rows] == [
        ("viewer", "queue.hold", 403),
        ("ops", "queue.hold", 200),
        ("boss", "queue.hold", 200),
        ("viewer", "postscreen.drop", 403),
        ("ops", "postscreen.drop", 200),
        ("ops", "config.patch", 403),
        ("boss", "config.patch", 200),
    ]
    assert all(r[2] == "127.0.0.1" for r in rows)
    assert rows[1][4] == {"all": True, "dry_run": True} and rows[1][5]["count"] == 0
    assert rows[4][4] == {"ip": "127.0.0.9"}
    assert rows[6][4] == {"keys": ["server.limits.recipients"]} and rows[6][5]["changed"] == ["server.limits.recipients"]
    assert stat.S_IMODE((mta.data_dir / "admin-audit.log").stat().st_mode) == 0o600
    # GETs are not audited; no token ever reaches the audit log or the server log
    text = (mta.data_dir / "admin-audit.log").read_text() + mta.log()
    assert not any(t in text for t in (READ, OPERATOR, ADMIN))


def test_bad_token_file_refuses_the_start(make_mta):
    mta = make_mta(start=False)
    mta.data_dir.mkdir(parents=True)
    (mta.data_dir / "admin.token").write_text(f"admin {ADMIN} boss\nsuperuser {READ} x\n")
    proc = subprocess.run([sys.executable, "-m", "mtaserver", "run", "-c", str(mta.config_path)],
                          capture_output=True, text=True, timeout=30, cwd=mta.tmp, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert f"{mta.data_dir / 'admin.token'}:2: unknown role 'superuser'" in proc.stderr + proc.stdout
    assert READ not in proc.stderr + proc.stdout and ADMIN not in proc.stderr + proc.stdout


def test_tokens_are_read_again_on_sighup(make_mta):
    mta = with_tokens(make_mta)
    late = "n" * 20 + "newtoken"
    with open(mta.data_dir / "admin.token", "a") as f:
        f.write(f"operator {late} late\n")
    assert api(mta, "GET", "/api/queue/stats", token=late)[0] == 401
    mta.signal(signal.SIGHUP)
    wait_for(lambda: api(mta, "GET", "/api/queue/stats", token=late)[0] == 200, what="the new token accepted")
    # A bad line on reload: logged, and the tokens in use stay
    with open(mta.data_dir / "admin.token", "a") as f:
        f.write("admin short\n")
    mta.signal(signal.SIGHUP)
    wait_for_log(mta, "admin.token:6: the token must be at least 16 characters")
    assert api(mta, "GET", "/api/queue/stats", token=late)[0] == 200
    assert "the old tokens stay" in mta.log()


def test_no_admin_api_when_listen_is_null(make_mta):
    mta = make_mta({"admin": {"listen": None}})
    assert not (mta.data_dir / "admin.token").exists()
    assert "admin API ready" not in mta.log()
    with SmtpClient(mta.port, TRUSTED) as c:  # the rest works
        c.greeting()


def test_admin_listen_in_use_refuses_the_start(make_mta):
    port = free_port()
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", port))
        blocker.listen()
        mta = make_mta({"admin": {"listen": f"127.0.0.1:{port}"}}, start=False)
        proc = subprocess.run([sys.executable, "-m", "mtaserver", "run", "-c", str(mta.config_path)],
                              capture_output=True, text=True, timeout=30, cwd=mta.tmp, check=False)  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot listen on admin.listen 127.0.0.1:{port}" in proc.stderr + proc.stdout


def test_openapi_document(mta):
    status, _, _ = api(mta, "GET", "/api/openapi.json")
    assert status == 401  # any token; and no Swagger UI (it would load scripts from a CDN into this origin)
    assert api(mta, "GET", "/api/docs", token=mta.admin_token())[0] == 404
    status, _, doc = api(mta, "GET", "/api/openapi.json", token=mta.admin_token())
    assert status == 200 and doc["openapi"].startswith("3.")
    for path in ("/api/queue/stats", "/api/queue/messages", "/api/queue/messages/{queue_id}", "/api/queue/hold",
                 "/api/queue/release", "/api/queue/requeue", "/api/queue/delete", "/api/queue/flush", "/api/queue/shape",
                 "/api/services", "/api/postscreen/{ip}", "/api/config", "/api/config/raw", "/api/health"):  # fmt: skip
        assert path in doc["paths"], path
    assert set(doc["paths"]["/api/config"]) == {"get", "put", "patch"}
    assert any(s.get("scheme") == "bearer" for s in doc["components"]["securitySchemes"].values())


# ---------------------------------------------------------------------------------------------
# Services.


def test_services_unreachable_when_not_running(make_mta):
    closed = free_port()
    mta = make_mta({"antispam": {"enabled": True, "spamd": {"address": f"127.0.0.1:{closed}"}},
                    "antivirus": {"enabled": True, "clamd": {"address": f"127.0.0.1:{closed}"}}})  # fmt: skip
    status, _, body = api(mta, "GET", "/api/services", token=mta.admin_token())
    assert status == 200 and body["node"] == "mx.example.test"
    by = {s["name"]: s for s in body["services"]}
    assert set(by) == {"antispam", "antivirus", "authentication", "dkim"}
    for name in ("antispam", "antivirus"):
        assert by[name]["configured"] is True and by[name]["reachable"] is False
        assert "refused" in by[name]["error"].lower(), by[name]
        assert by[name]["last_error"]["message"] == by[name]["error"]
    assert by["authentication"]["configured"] is False and by["authentication"]["reachable"] is None
    assert "users_file" in by["authentication"]["detail"]


def test_services_reachable(make_mta, spamd, clamd, tmp_path):
    users = tmp_path / "users.yaml"
    import bcrypt

    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(4)).decode()
    users.write_text(f'alice:\n  password: "{hashed}"\n  addresses: [alice@example.test]\n')
    mta = make_mta({"antispam": {"enabled": True, "spamd": {"address": spamd.address}},
                    "antivirus": {"enabled": True, "clamd": {"address": clamd.address}},
                    "auth": {"users_file": str(users)}})  # fmt: skip
    by = {s["name"]: s for s in api(mta, "GET", "/api/services", token=mta.admin_token())[2]["services"]}
    for name in ("antispam", "antivirus", "authentication"):
        assert by[name]["configured"] is True and by[name]["reachable"] is True and by[name]["error"] == "", by[name]
        assert by[name]["last_error"] is None


def test_services_dovecot(make_mta):
    from dovecot_auth import DovecotAuth

    dovecot = DovecotAuth({"alice": "pw"}).start()
    try:
        mta = make_mta({"auth": {"backend": "dovecot", "dovecot_socket": dovecot.address}})
        auth = {s["name"]: s for s in api(mta, "GET", "/api/services", token=mta.admin_token())[2]["services"]}["authentication"]
        assert auth["configured"] is True and auth["reachable"] is True and auth["engine"] == "dovecot", auth
        dovecot.stop_process()
        auth = {s["name"]: s for s in api(mta, "GET", "/api/services", token=mta.admin_token())[2]["services"]}["authentication"]
        assert auth["reachable"] is False and "dovecot" in auth["error"] and auth["last_error"]["message"] == auth["error"]
    finally:
        dovecot.stop()


def test_services_dkim_keys(make_mta):
    from conftest import require_tool

    openssl = require_tool("openssl")
    mta = make_mta({"dkim": {"sign": [{"domain": "example.test", "selector": "s1", "key": "dkim/s1.key"}]}}, start=False)
    key = mta.data_dir / "dkim" / "s1.key"
    key.parent.mkdir(parents=True)
    subprocess.run([openssl, "genrsa", "-out", str(key), "2048"], check=True, capture_output=True, timeout=60)
    mta.start()
    dkim = {s["name"]: s for s in api(mta, "GET", "/api/services", token=mta.admin_token())[2]["services"]}["dkim"]
    assert dkim["configured"] is True and dkim["reachable"] is True, dkim
    assert dkim["keys"] == [{"domain": "example.test", "selector": "s1", "key": str(key), "loaded": True}]
    key.unlink()  # the next reload would refuse it: the view says so now
    dkim = {s["name"]: s for s in api(mta, "GET", "/api/services", token=mta.admin_token())[2]["services"]}["dkim"]
    assert dkim["reachable"] is False and dkim["keys"][0]["loaded"] is False and "s1.key" in dkim["error"]


# ---------------------------------------------------------------------------------------------
# Postscreen cache.


def test_postscreen_record_lookup_and_drop(make_mta):
    mta = make_mta()
    from mtaserver.postscreen.cache import SqliteStore, Stamps

    async def put() -> None:
        store = SqliteStore(mta.data_dir / "postscreen_cache.sqlite")
        await store.put("192.0.2.7", Stamps(pregreet=2000000000, dnsbl=1, pipelining=0, non_smtp=0, bare_newline=0))
        await store.close()

    asyncio.run(put())
    token = mta.admin_token()
    status, _, body = api(mta, "GET", "/api/postscreen/192.0.2.7", token=token)
    assert status == 200, body
    assert body["record"] == "2000000000;1;0;0;0" and body["node"] == "mx.example.test"
    assert body["stamps"] == {"pregreet": 2000000000, "dnsbl": 1, "pipelining": 0, "non_smtp": 0, "bare_newline": 0}
    assert api(mta, "GET", "/api/postscreen/not-an-ip", token=token)[0] == 422
    status, _, body = api(mta, "DELETE", "/api/postscreen/192.0.2.7", token=token)
    assert status == 200 and body["dropped"] is True
    assert api(mta, "GET", "/api/postscreen/192.0.2.7", token=token)[0] == 404
    assert api(mta, "DELETE", "/api/postscreen/192.0.2.7", token=token)[2]["dropped"] is False


# ---------------------------------------------------------------------------------------------
# Configuration.


def test_effective_config_resolves_this_nodes_overrides_and_hides_secrets(make_mta, tmp_path):
    secret = tmp_path / "relay.pass"
    secret.write_text("topsecret-relay-password\n")
    mta = make_mta({
        "outbound": {"relay_auth": {"username": "u", "password_file": str(secret)}},
        "postscreen": {"cache": {"backend": "redis", "url": "redis://:redispass@127.0.0.1:1/0"}},
        "servers": {"mx.example.test": {"outbound": {"relay_host": "[relay2.example.test]:25"}},
                    "other.example.test": {"outbound": {"relay_host": "[relay3.example.test]:25"}}},
    })  # fmt: skip
    status, _, body = api(mta, "GET", "/api/config", token=mta.admin_token())
    assert status == 200 and body["node"] == "mx.example.test"
    cfg = body["config"]
    assert cfg["outbound"]["relay_host"] == "[relay2.example.test]:25"  # this node's override, resolved
    assert cfg["server"]["listeners"][0]["address"] == f"127.0.0.1:{mta.port}"
    assert cfg["outbound"]["mynetworks"] == ["127.0.0.1/32"]
    assert cfg["outbound"]["relay_auth"]["password_file"] == str(secret)  # the path, not what is in it
    assert cfg["postscreen"]["cache"]["url"] == "redis://:***@127.0.0.1:1/0"
    text = json.dumps(body)
    assert "topsecret" not in text and "redispass" not in text
    status, headers, raw = api(mta, "GET", "/api/config/raw", token=mta.admin_token())
    assert status == 200 and raw == mta.config_path.read_text() and "yaml" in headers["content-type"]


# ---------------------------------------------------------------------------------------------
# Queue.


def test_queue_endpoints(make_mta):
    pytest.importorskip("mtaserver.queue.ops")
    mta = with_tokens(make_mta)
    ids = send(mta, 2)
    status, _, stats = api(mta, "GET", "/api/queue/stats", token=READ)
    assert status == 200 and stats["queues"]["incoming"] == 2 and stats["node"] == "mx.example.test"
    status, _, listing = api(mta, "GET", "/api/queue/messages?queue=incoming&limit=1", token=READ)
    assert status == 200 and [m["queue_id"] for m in listing["messages"]] == ids[:1] and listing["next"]
    status, _, page2 = api(mta, "GET", f"/api/queue/messages?queue=incoming&limit=1&after={listing['next']}", token=READ)
    assert [m["queue_id"] for m in page2["messages"]] == ids[1:]
    status, _, shown = api(mta, "GET", f"/api/queue/messages/{ids[0]}", token=READ)
    assert status == 200 and shown["queue_id"] == ids[0]
    assert api(mta, "GET", "/api/queue/messages/0000000000000000Z", token=READ)[0] == 404
    status, _, done = api(mta, "POST", "/api/queue/hold", {"ids": [ids[1]], "dry_run": True}, token=OPERATOR)
    assert status == 200 and done["count"] == 1 and done["dry_run"] is True
    assert mta.queued("incoming") == sorted(ids)
    status, _, done = api(mta, "POST", "/api/queue/hold", {"ids": [ids[1]]}, token=OPERATOR)
    assert status == 200 and done["count"] == 1
    stats = api(mta, "GET", "/api/queue/stats", token=READ)[2]
    assert stats["queues"]["incoming"] == 1 and stats["queues"]["hold"] == 1
    assert mta.queued("hold") == [ids[1]]
    assert api(mta, "POST", "/api/queue/hold", {"ids": ["../etc"]}, token=OPERATOR)[0] in (400, 422)
    assert api(mta, "POST", "/api/queue/hold", {"bogus": 1}, token=OPERATOR)[0] == 422
    status, _, shape = api(mta, "GET", "/api/queue/shape", token=READ)
    assert status == 200 and shape["node"] == "mx.example.test"
    rows = audit_lines(mta)
    assert [(r[3], r[4], r[5]["count"]) for r in rows[:2]] == [
        ("queue.hold", {"ids": [ids[1]], "dry_run": True}, 1), ("queue.hold", {"ids": [ids[1]]}, 1),
    ]  # fmt: skip
