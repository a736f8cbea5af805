"""Live configuration through the admin API, against a running server: PUT and PATCH are
validated, written back keeping the file's comments (the old file kept as .bak), and applied
at once; an invalid document changes nothing and the server goes on with the old one."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import yaml
from smtpclient import TRUSTED, Mta, SmtpClient, queue_id_of, wait_for, wait_for_log

# A config file as an operator writes it: comments on their own lines and after values.
COMMENTED = """\
# mx.example.test -- hand-written, keep these comments
server:
  hostname: mx.example.test          # our name
  data_dir: {data_dir}
  workers: {workers}
  listeners:
    - {{name: smtp, address: "127.0.0.1:{port}"}}   # the test port
  limits:
    error_sleep: 0
    recipients: 1000                 # Postfix default
  peername_lookup: false

# where mail for us goes
domains:
  local: [example.test]
  relay: [relay.test]

inbound:
  protocol_checks: {{reject_unknown_sender_domain: false}}
outbound:
  mynetworks: ["127.0.0.1/32"]       # trusted
queue: {{manager: false}}
antispam: {{enabled: false}}
antivirus: {{enabled: false}}
admin:
  listen: "{admin}"                  # the admin API
"""


def api(mta: Mta, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, dict[str, str], Any]:
    return mta.api(method, path, body, **kw)


def commented(make_mta, workers: int = 1) -> Mta:
    mta = make_mta({"server": {"workers": workers}}, start=False)
    admin = mta.config["admin"]["listen"]
    mta.config_path.write_text(COMMENTED.format(data_dir=mta.data_dir, port=mta.port, admin=admin, workers=workers))
    mta.start()
    wait_for_log(mta, "admin API ready")
    return mta


def recipients_accepted(mta: Mta, n: int = 3) -> list[int]:
    """The RCPT reply codes of one new session that names n recipients."""
    with SmtpClient(mta.port, TRUSTED) as c:
        c.greeting()
        c.ehlo()
        c.expect("MAIL FROM:<s@client.test>", 250)
        return [c.cmd(f"RCPT TO:<u{i}@example.test>").code for i in range(n)]


def a_message_is_queued(mta: Mta) -> None:
    with SmtpClient(mta.port, TRUSTED) as c:
        c.greeting()
        c.ehlo()
        queue_id_of(c.send_message("s@client.test", ["u@example.test"], b"Subject: t\r\n\r\nhello\r\n"))


def test_bad_put_is_refused_and_the_server_keeps_the_old_config(make_mta):
    mta = commented(make_mta)
    before = mta.config_path.read_bytes()
    doc = yaml.safe_load(before)
    doc["server"]["workers"] = 0
    doc["server"]["limits"]["recipients"] = 1
    doc["postscreen"] = {"greet": {"action": "reject"}}
    status, _, body = api(mta, "PUT", "/api/config", doc, token=mta.admin_token())
    assert status == 422, body
    assert body["errors"] == [
        "server.workers: workers must be auto or 1..256",
        "postscreen.greet.action: Input should be 'ignore', 'enforce' or 'drop'",
    ]
    # The file is untouched, no backup made, the old config still runs
    assert mta.config_path.read_bytes() == before
    assert not mta.config_path.with_name("mtaserver.yaml.bak").exists()
    assert recipients_accepted(mta) == [250, 250, 250]
    a_message_is_queued(mta)
    # YAML that does not parse, a document that is not a mapping, a file a key names that cannot be loaded
    status, _, body = api(mta, "PUT", "/api/config", b"server: [unclosed", token=mta.admin_token(),
                          content_type="application/yaml")  # fmt: skip
    assert status == 422 and body["errors"][0].startswith("(document): does not parse (line 1)")
    assert api(mta, "PUT", "/api/config", [1, 2], token=mta.admin_token())[0] == 422
    status, _, body = api(mta, "PATCH", "/api/config", {"domains": {"mailboxes": "no-such-file"}}, token=mta.admin_token())
    assert status == 422 and body["errors"][0].startswith("domains.mailboxes: "), body
    assert mta.config_path.read_bytes() == before
    assert "reload: applied" not in mta.log()


def test_patch_applies_on_the_next_connection_and_keeps_the_comments(make_mta):
    mta = commented(make_mta)
    before = mta.config_path.read_text()
    assert recipients_accepted(mta) == [250, 250, 250]
    with SmtpClient(mta.port, TRUSTED) as old_session:  # opened before the change: keeps its settings
        old_session.greeting()
        old_session.ehlo()
        status, _, body = api(mta, "PATCH", "/api/config", {"server": {"limits": {"recipients": 2}}}, token=mta.admin_token(),
                              content_type="application/merge-patch+json")  # fmt: skip
        assert status == 200, body
        assert body["changed"] == ["server.limits.recipients"] and body["applied"] is True and body["node"] == "mx.example.test"
        # No restart: the next connection gets the new limit (452 4.5.3 past it)
        assert recipients_accepted(mta) == [250, 250, 452]
        old_session.expect("MAIL FROM:<s@client.test>", 250)
        assert [old_session.cmd(f"RCPT TO:<v{i}@example.test>").code for i in range(3)] == [250, 250, 250]
    after = mta.config_path.read_text()
    # Only that value changed: every comment and every other line is as it was
    assert after == before.replace("recipients: 1000                 # Postfix", "recipients: 2                    # Postfix")
    assert mta.config_path.with_name("mtaserver.yaml.bak").read_text() == before
    assert "reload: applied" in mta.log()

    # null removes a key (its default applies again); a new section is added
    patch = {"server": {"limits": {"recipients": None}}, "inbound": {"blocked_extensions": ["exe", "on"]}}
    status, _, body = api(mta, "PATCH", "/api/config", patch, token=mta.admin_token())
    assert status == 200 and body["changed"] == ["server.limits.recipients", "inbound.blocked_extensions"]
    text = mta.config_path.read_text()
    assert "recipients:" not in text and "# Postfix default" not in text
    assert yaml.safe_load(text)["inbound"]["blocked_extensions"] == ["exe", "on"]  # "on" stays a string
    assert "# our name" in text and "# where mail for us goes" in text and "# the test port" in text
    assert recipients_accepted(mta, 3) == [250, 250, 250]
    status, _, body = api(mta, "GET", "/api/config", token=mta.admin_token())
    assert body["config"]["inbound"]["blocked_extensions"] == ["exe", "on"]
    assert body["config"]["server"]["limits"]["recipients"] == 1000


def test_put_json_keeps_the_comments_of_what_did_not_change(make_mta):
    mta = commented(make_mta)
    before = mta.config_path.read_text()
    doc = yaml.safe_load(before)
    doc["outbound"]["mynetworks"] = ["127.0.0.1/32", "127.0.0.5/32"]
    status, _, body = api(mta, "PUT", "/api/config", doc, token=mta.admin_token())
    assert status == 200 and body["changed"] == ["outbound.mynetworks"], body
    after = mta.config_path.read_text()
    assert yaml.safe_load(after) == doc
    assert after.count("#") == before.count("#")
    assert re.search(r'mynetworks: \["127.0.0.1/32", "?127.0.0.5/32"?\] +# trusted', after), after
    effective = api(mta, "GET", "/api/config", token=mta.admin_token())[2]["config"]
    assert effective["outbound"]["mynetworks"] == ["127.0.0.1/32", "127.0.0.5/32"]


def test_put_yaml_is_written_as_sent(make_mta):
    mta = commented(make_mta)
    new = mta.config_path.read_text().replace("recipients: 1000                 # Postfix default",
                                              "recipients: 1  # one at a time\n    # (a new comment)")  # fmt: skip
    status, _, body = api(mta, "PUT", "/api/config", new.encode(), token=mta.admin_token(), content_type="application/yaml")
    assert status == 200 and body["changed"] == ["server.limits.recipients"], body
    assert mta.config_path.read_text() == new
    assert recipients_accepted(mta, 2) == [250, 452]
    status, _, raw = api(mta, "GET", "/api/config/raw", token=mta.admin_token())
    assert raw == new


def test_body_size_limit(make_mta):
    mta = commented(make_mta)
    status, _, _ = api(mta, "PUT", "/api/config", b"#" * (2 << 20), token=mta.admin_token(), content_type="application/yaml")
    assert status == 413


@pytest.mark.parametrize("workers", [2])
def test_patch_with_several_workers_goes_through_the_supervisor(make_mta, workers):
    mta = commented(make_mta, workers)
    status, _, body = api(mta, "PATCH", "/api/config", {"server": {"limits": {"recipients": 2}}}, token=mta.admin_token())
    assert status == 200 and body["changed"] == ["server.limits.recipients"], body
    # every process applied it (the supervisor forwards SIGHUP to the two SMTP workers and the manager)
    wait_for(lambda: mta.log().count("reload: applied") == 3, 10.0, "three processes reloaded")
    for _ in range(4):  # connections land on either worker
        assert recipients_accepted(mta) == [250, 250, 452]
    assert json.loads(json.dumps(yaml.safe_load(mta.config_path.read_text())))["server"]["limits"]["recipients"] == 2


def test_patch_answers_once_every_process_runs_the_new_file(make_mta):
    """The 200 comes when every process has applied the file (data_dir/run/config.<pid>), not
    only the API's own: the next connection, whichever worker takes it, has the change."""
    import hashlib

    mta = commented(make_mta, 2)
    status, _, body = api(mta, "PATCH", "/api/config", {"server": {"limits": {"recipients": 2}}}, token=mta.admin_token())
    assert status == 200 and "not_applied_by" not in body, body
    digest = hashlib.sha256(mta.config_path.read_bytes()).hexdigest()
    records = {p.name: p.read_text() for p in (mta.data_dir / "run").glob("config.*")}
    assert len(records) == 3 and set(records.values()) == {digest}, records  # two SMTP workers and the manager's
    assert mta.log().count("reload: applied") == 3  # no waiting: they all had reloaded before the answer
    for _ in range(4):
        assert recipients_accepted(mta) == [250, 250, 452]


def test_a_process_that_does_not_apply_the_change_is_named(make_mta):
    import os
    import signal

    mta = commented(make_mta, 2)
    wait_for(lambda: len(re.findall(r"\[(\d+)\]: worker \d ready", mta.log())) == 2, 10.0, "two SMTP workers")
    stuck = int(re.findall(r"\[(\d+)\]: worker \d ready", mta.log())[0])
    os.kill(stuck, signal.SIGSTOP)  # it takes its SIGHUP only once continued
    try:
        status, _, body = api(mta, "PATCH", "/api/config", {"server": {"limits": {"recipients": 2}}}, token=mta.admin_token())
    finally:
        os.kill(stuck, signal.SIGCONT)
    assert status == 200 and body["not_applied_by"] == [stuck], body
    assert re.search(rf"not applied by process {stuck} within", mta.log())
    wait_for(lambda: mta.log().count("reload: applied") == 3, 10.0, "the stopped worker applied it once continued")
    status, _, body = api(mta, "PATCH", "/api/config", {"server": {"limits": {"recipients": 3}}}, token=mta.admin_token())
    assert status == 200 and "not_applied_by" not in body, body


def test_a_worker_started_again_after_a_crash_runs_the_changed_config(make_mta):
    """The supervisor starts a dead worker again with the config of its last reload, not the
    one it was started with."""
    import os
    import signal

    mta = commented(make_mta, 2)
    status, _, body = api(mta, "PATCH", "/api/config", {"server": {"limits": {"recipients": 2}}}, token=mta.admin_token())
    assert status == 200 and "not_applied_by" not in body, body
    for pid in (int(p) for p in re.findall(r"\[(\d+)\]: worker \d ready", mta.log())):
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: len(re.findall(r"\[(\d+)\]: worker \d ready", mta.log())) == 4, 15.0, "both workers started again")
    # Each restarted worker says which config it runs (data_dir/run/config.<pid>): the file's text.
    import hashlib

    digest = hashlib.sha256(mta.config_path.read_bytes()).hexdigest()
    for pid in re.findall(r"\[(\d+)\]: worker \d ready", mta.log())[2:]:
        wait_for(lambda pid=pid: (mta.data_dir / "run" / f"config.{pid}").exists(), 10.0, f"worker {pid}'s record")
        assert (mta.data_dir / "run" / f"config.{pid}").read_text() == digest
    for _ in range(4):
        assert recipients_accepted(mta) == [250, 250, 452]


def test_records_of_a_killed_instance_are_cleared_at_start(make_mta):
    """A record left by an instance killed with -9 names a pid that may be anyone's by now (here
    pid 1, always alive): the start clears it, so a PATCH does not wait for it."""
    mta = make_mta({"server": {"workers": 2}}, start=False)
    run = mta.data_dir / "run"
    run.mkdir(parents=True)
    (run / "config.1").write_text("0" * 64)
    mta.config_path.write_text(COMMENTED.format(data_dir=mta.data_dir, port=mta.port, admin=mta.config["admin"]["listen"],
                                                workers=2))  # fmt: skip
    mta.start()
    wait_for_log(mta, "admin API ready")
    assert not (run / "config.1").exists()
    status, _, body = api(mta, "PATCH", "/api/config", {"server": {"limits": {"recipients": 2}}}, token=mta.admin_token())
    assert status == 200 and "not_applied_by" not in body, body
