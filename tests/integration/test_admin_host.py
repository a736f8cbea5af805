"""The admin HTTP server refuses a Host header that names none of its own names (DNS rebinding),
over a real socket: the API, /metrics and the panel's pages and static files alike; localhost,
loopback addresses, server.hostname and admin.allowed_hosts pass."""

from __future__ import annotations

import http.client

from smtpclient import wait_for_log

PATHS = ["/api/health", "/metrics", "/signin", "/", "/static/panel.css", "/api/queue/stats"]


def request(mta, path: str, host: str | None, token: str | None = None) -> tuple[int, bytes]:
    """GET `path` with exactly this Host header (None: none at all, as HTTP/1.0 allows)."""
    addr, port = mta.config["admin"]["listen"].rsplit(":", 1)
    conn = http.client.HTTPConnection(addr, int(port), timeout=30)
    try:
        if host is None:
            conn._http_vsn, conn._http_vsn_str = 10, "HTTP/1.0"
            conn.putrequest("GET", path, skip_host=True)
        else:
            conn.putrequest("GET", path, skip_host=True)
            conn.putheader("Host", host)
        if token is not None:
            conn.putheader("Authorization", f"Bearer {token}")
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_foreign_host_is_refused_everywhere_and_our_names_pass(make_mta):
    mta = make_mta({"admin": {"allowed_hosts": ["mail-admin.example.com"]}})
    wait_for_log(mta, "admin API ready")
    port = mta.config["admin"]["listen"].rsplit(":", 1)[1]
    token = mta.admin_token("admin")
    for path in PATHS:
        status, body = request(mta, path, f"evil.example:{port}", token)
        assert status == 421, (path, status, body[:200])
        assert b"admin.allowed_hosts" in body
    # The rebinding name with our own as a prefix or suffix is no better.
    assert request(mta, "/metrics", f"localhost.evil.example:{port}")[0] == 421
    assert request(mta, "/metrics", f"127.0.0.1.evil.example:{port}")[0] == 421
    # One warning line (they are rate-limited), the host as it came (sanitized).
    log = wait_for_log(mta, "Host evil.example:")
    assert "is not a name of this server (admin.allowed_hosts): refused" in log
    assert log.count("is not a name of this server") == 1  # admin/api.py HOST_WARN_INTERVAL is 60 s
    # Our names: the port is not compared, case and a trailing dot do not matter.
    good = [f"localhost:{port}", "LOCALHOST", f"127.0.0.1:{port}", "127.0.0.2", f"mx.example.test:{port}",
            "MX.example.test.", f"mail-admin.example.com:{port}", "mail-admin.example.com:443"]  # fmt: skip
    for host in good:
        assert request(mta, "/api/health", host)[0] == 200, host
        assert request(mta, "/metrics", host)[0] == 200, host
    assert request(mta, "/api/queue/stats", "localhost", token)[0] == 200
    assert request(mta, "/api/queue/stats", "localhost")[0] == 401  # the token check still follows
    assert request(mta, "/static/panel.css", "localhost")[0] == 200
    assert request(mta, "/signin", "localhost")[0] == 200
    # No Host at all (HTTP/1.0): no browser sends that; answered.
    assert request(mta, "/api/health", None)[0] == 200


def test_a_star_answers_any_name_and_a_reload_applies_the_list(make_mta):
    mta = make_mta()
    wait_for_log(mta, "admin API ready")
    assert request(mta, "/api/health", "proxy.example.com")[0] == 421
    status, _, body = mta.api("PATCH", "/api/config", {"admin": {"allowed_hosts": ["*"]}}, token=mta.admin_token("admin"),
                              content_type="application/merge-patch+json")  # fmt: skip
    assert status == 200 and body["changed"] == ["admin.allowed_hosts"], body
    assert request(mta, "/api/health", "proxy.example.com")[0] == 200
    assert request(mta, "/metrics", "anything.example:1")[0] == 200
