"""Reloads that used to be silently ignored: a listener's postscreen and tls switches. And
what a reload must keep: the postscreen cache and its counters when postscreen did not change.

Each test changes the config file, sends SIGHUP, and checks the next connection, and the log
line that names what changed ("reload: applied from <file>: changed ...").
"""

from __future__ import annotations

import signal

from helpers import connect, nsd, start  # noqa: F401 (nsd is a fixture)
from smtpclient import SmtpClient, wait_for, wait_for_log


def reload(m) -> str:
    """Write the config, SIGHUP, and return the log once it has one more reload line."""
    m.write_config()
    n = m.log().count("reload: applied from")
    m.signal(signal.SIGHUP)
    wait_for(lambda: m.log().count("reload: applied from") > n or None, 10, "the reload line")
    return m.log()


def test_postscreen_switched_on_and_off_by_sighup(make_mta, nsd):  # noqa: F811
    # 127.0.0.2 is listed by bl.test; with dnsbl action drop a screened session gets 521
    m = start(make_mta, nsd, {"greet": {"banner": ""}, "dnsbl": {"action": "drop"}}, postscreen=False)
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 220, "not screened yet"
    c.close()
    m.config["server"]["listeners"][0]["postscreen"] = True
    log = reload(m)
    assert "changed server.listeners[0].postscreen" in log
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 521, "screened after the reload"
    c.close()
    m.config["server"]["listeners"][0]["postscreen"] = False
    reload(m)
    c, g, _ = connect(m, "127.0.0.2")
    assert g.code == 220, "not screened after the second reload"
    c.close()


def test_postscreen_cache_survives_an_unrelated_reload(make_mta, nsd):  # noqa: F811
    m = start(make_mta, nsd, {"greet": {"action": "enforce"}, "dnsbl": {"sites": []}})
    c, g, _ = connect(m, "127.0.0.3")  # new client: teaser, greet wait, PASS NEW
    assert g.code == 220 and len(g.lines) == 2, g
    c.close()
    wait_for_log(m, "PASS NEW [127.0.0.3]")
    m.config["outbound"]["helo_name"] = "other.example.test"
    log = reload(m)
    assert "changed outbound.helo_name" in log
    assert "rebuilt: postscreen" not in log and "postscreen)" not in log.split("reload: applied")[-1]
    c, g, _ = connect(m, "127.0.0.3")
    assert g.code == 220 and len(g.lines) == 1, "PASS OLD: no teaser, the cache was kept"
    c.close()
    wait_for_log(m, "PASS OLD [127.0.0.3]")


def test_starttls_switched_on_by_sighup(make_mta, cert):
    crt, key = cert
    m = make_mta({"server": {"tls": {"cert": str(crt), "key": str(key)}}}, start=False)
    m.config["server"]["listeners"][0]["tls"] = "none"
    m.write_config()
    m.start()
    with SmtpClient(m.port, "127.0.0.2") as c:
        c.greeting()
        assert "STARTTLS" not in c.ehlo().lines
    m.config["server"]["listeners"][0]["tls"] = "starttls"
    log = reload(m)
    assert "changed server.listeners[0].tls" in log
    with SmtpClient(m.port, "127.0.0.2") as c:
        c.greeting()
        assert "STARTTLS" in c.ehlo().lines
        assert c.cmd("STARTTLS").code == 220


def test_implicit_tls_switch_says_it_needs_a_restart(make_mta, cert):
    crt, key = cert
    m = make_mta({"server": {"tls": {"cert": str(crt), "key": str(key)}}})
    m.config["server"]["listeners"][0]["tls"] = "implicit"
    reload(m)
    wait_for_log(m, "reload: tls: implicit on or off needs a restart (listener smtp)")
    # the socket is still plaintext: the session must not believe it is TLS (AUTH in cleartext)
    with SmtpClient(m.port, "127.0.0.2") as c:
        c.greeting()
        lines = c.ehlo().lines
        assert "STARTTLS" in lines and not any(x.startswith("AUTH") for x in lines), lines


def test_implicit_tls_serves_a_renewed_certificate_after_sighup(make_mta, tmp_path):
    import socket
    import ssl
    import subprocess

    from conftest import require_tool, self_signed

    openssl = require_tool("openssl")

    def make_cert(cn: str) -> None:
        self_signed(tmp_path, cn)

    def served_cn(port: int) -> str:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(raw) as s:
            der = s.getpeercert(binary_form=True)
        pem = ssl.DER_cert_to_PEM_cert(der)
        out = subprocess.run([openssl, "x509", "-noout", "-subject"], input=pem, capture_output=True, text=True, check=True)
        return out.stdout.strip()

    make_cert("old.example.test")
    m = make_mta({"server": {"tls": {"cert": str(tmp_path / "cert.pem"), "key": str(tmp_path / "key.pem")}}}, start=False)
    m.config["server"]["listeners"][0]["tls"] = "implicit"
    m.write_config()
    m.start()
    assert "old.example.test" in served_cn(m.port)
    make_cert("new.example.test")  # renewed in place, as certbot does
    reload(m)
    assert "new.example.test" in served_cn(m.port)
