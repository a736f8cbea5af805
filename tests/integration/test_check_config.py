"""`mtaserver check-config` catches what `run` would refuse: files the config names that
cannot be used (certificate and key, users file, mailboxes), each as FILE:LINE: key: message."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
    assert lines[0].startswith(f"{conf}:2: server.tls: cannot load the certificate and key: "), lines
    assert lines[1] == f"{conf}:4: auth.users_file: {tmp_path / 'users.yaml'}: No such file or directory", lines
    assert lines[2].startswith(f"{conf}:7: domains.mailboxes: "), lines


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
