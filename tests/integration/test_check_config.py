"""`mtaserver check-config` catches what `run` would refuse: files the config names that
cannot be used (certificate and key, users file, mailboxes), each as FILE:LINE: key: message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import require_tool, self_signed

from mtaserver.auth.hashes import hash_password


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mtaserver", "check-config", "-c", str(path)], capture_output=True, text=True, timeout=60)


def test_missing_files_are_named_with_their_lines(tmp_path):
    conf = tmp_path / "m.yaml"
    conf.write_text(
        "server:\n  tls: {cert: nope.pem, key: nope.key}\n"
        "auth:\n  users_file: users.yaml\n"
        "domains:\n  local: [example.test]\n  mailboxes: mailboxes\n"
    )
    p = check(conf)
    assert p.returncode == 1 and p.stdout == ""
    lines = p.stderr.splitlines()
    assert lines[0] == f"{conf}:2: server.tls.cert: {tmp_path / 'nope.pem'}: no such file", lines
    assert lines[1] == f"{conf}:2: server.tls.key: {tmp_path / 'nope.key'}: no such file", lines
    assert lines[2] == f"{conf}:4: auth.users_file: {tmp_path / 'users.yaml'}: No such file or directory", lines
    assert lines[3].startswith(f"{conf}:7: domains.mailboxes: "), lines


def test_bad_users_and_mailboxes_files(tmp_path):
    (tmp_path / "users.yaml").write_text("alice:\n  password: plaintext\n")
    (tmp_path / "mailboxes").write_text("a@example.test b@example.test\nb@example.test a@example.test\n")
    conf = tmp_path / "m.yaml"
    conf.write_text("auth:\n  users_file: users.yaml\ndomains:\n  local: [example.test]\n  mailboxes: mailboxes\n")
    p = check(conf)
    assert p.returncode == 1
    assert f"{conf}:2: auth.users_file: " in p.stderr and "line 2" in p.stderr
    assert f"{conf}:5: domains.mailboxes: " in p.stderr


def test_usable_files_are_ok(tmp_path):
    (tmp_path / "users.yaml").write_text(f"alice:\n  password: '{hash_password('pw')}'\n  addresses: [alice@example.test]\n")
    (tmp_path / "mailboxes").write_text("alice@example.test\n")
    conf = tmp_path / "m.yaml"
    conf.write_text("auth:\n  users_file: users.yaml\ndomains:\n  local: [example.test]\n  mailboxes: mailboxes\n")
    p = check(conf)
    assert (p.returncode, p.stdout.strip()) == (0, "ok"), p.stderr


def make_cert(tmp_path: Path) -> None:
    self_signed(tmp_path, "mail.example.test", days=2)


def test_a_missing_key_file_is_named(tmp_path):
    require_tool("openssl")
    make_cert(tmp_path)
    conf = tmp_path / "m.yaml"
    conf.write_text("server:\n  tls:\n    cert: cert.pem\n    key: other.pem\n")
    p = check(conf)
    assert p.returncode == 1 and p.stderr.splitlines() == [f"{conf}:4: server.tls.key: {tmp_path / 'other.pem'}: no such file"], p.stderr
    conf.write_text("server:\n  tls:\n    cert: cert.pem\n    key: key.pem\n")
    assert (check(conf).returncode, check(conf).stdout.strip()) == (0, "ok")


def test_a_key_the_server_user_cannot_read_is_refused(tmp_path):
    """server.user reads the certificate and key again on reload: a key only root can read fails there."""
    require_tool("openssl")
    make_cert(tmp_path)
    (tmp_path / "key.pem").chmod(0o600)
    conf = tmp_path / "m.yaml"
    if os.geteuid() == 0:
        conf.write_text("server:\n  user: nobody\n  tls: {cert: cert.pem, key: key.pem}\n")
        want = f"{conf}:3: server.tls.key: {tmp_path / 'key.pem'}: not readable by server.user nobody (mode 0600;"
    else:
        (tmp_path / "key.pem").chmod(0)
        conf.write_text("server:\n  tls: {cert: cert.pem, key: key.pem}\n")
        want = f"{conf}:2: server.tls.key: {tmp_path / 'key.pem'}: cannot be read: Permission denied"
    p = check(conf)
    assert p.returncode == 1 and p.stderr.startswith(want), p.stderr
    assert "server.tls.cert" not in p.stderr  # the certificate (0644) is readable


def test_malformed_values_run_would_misread(tmp_path):
    conf = tmp_path / "m.yaml"
    conf.write_text('outbound:\n  relay_host: "[foo"\n  mynetworks: [10.0.0.1/8]\nadvanced:\n  max_message_size: 10MB\n')
    p = check(conf)
    assert p.returncode == 1
    keys = [line.split(": ", 2)[:2] for line in p.stderr.splitlines()]
    assert keys == [[f"{conf}:2", "outbound.relay_host"], [f"{conf}:3", "outbound.mynetworks[0]"],
                    [f"{conf}:5", "advanced.max_message_size"]], p.stderr  # fmt: skip
    assert "did you mean 10.0.0.0/8" in p.stderr and "'10MB' is ambiguous" in p.stderr


def test_a_bad_admin_token_file_is_named_by_line_without_the_token(tmp_path):
    conf = tmp_path / "m.yaml"
    conf.write_text("server:\n  data_dir: var\nadmin:\n  token_file: tokens\n")
    (tmp_path / "var").mkdir()
    secret = "s3cr3t-but-short"
    (tmp_path / "var" / "tokens").write_text(f"# roles\nadmin {'a' * 32} first\nroot {secret}x second\noperator short\n")
    p = check(conf)
    assert p.returncode == 1
    lines = p.stderr.splitlines()
    token_file = tmp_path / "var" / "tokens"
    assert lines[0] == f"{conf}:4: admin.token_file: {token_file}:3: unknown role 'root' (read, operator or admin)", lines
    assert lines[1].startswith(f"{conf}:4: admin.token_file: {token_file}:4: the token must be at least 16"), lines
    assert secret not in p.stderr and "a" * 32 not in p.stderr
    (tmp_path / "var" / "tokens").write_text(f"admin {'a' * 32} first\n")
    assert check(conf).stdout.strip() == "ok"
