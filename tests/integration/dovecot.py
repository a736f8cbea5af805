"""A real Dovecot LMTP server on 127.0.0.1 with two mailboxes, for local delivery tests.

`Dovecot(users).start()` writes a throwaway dovecot.conf (its own base_dir, state_dir and log
file, `protocols = lmtp`, an LMTP listener on 127.0.0.1:<free port> and on the UNIX socket
<base_dir>/lmtp, a passwd-file userdb) and runs `dovecot -F -c FILE` in the foreground as our
child; `stop()` ends that one process by its PID (Dovecot's master stops its own children).
Nothing of the system's Dovecot (/etc/dovecot, the dovecot service) is read or touched.

Mail is stored as maildirs under <dir>/mail/<domain>/<local part>/. Dovecot refuses mail
access as root ("Mail access not allowed for root"), so the mailboxes belong to `nobody`,
and the instance directory is made with tempfile.mkdtemp and opened to 0755: pytest's tmp
directories are 0700 root, which `nobody` cannot traverse. It is removed by stop().
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Self

import pytest
from conftest import IN_CI, free_port, require_tool

USERS = ("good@example.test", "other@example.test")
LMTP_BINARY = "/usr/lib/dovecot/lmtp"  # Debian dovecot-lmtpd


class DovecotProcess:
    """One throwaway `dovecot -F -c FILE` of ours: its directory, port, config, start and stop.
    A subclass writes the config (`write_config`) and says when the service answers (`_answers`)."""

    prefix = "mtaserver-dovecot-"  # of the instance directory
    kept_log = "dovecot.log"  # the name stop(keep_log_in=...) copies the log to
    own_session = False  # run in a process group of its own (stop_process may end the group)

    def __init__(self) -> None:
        self.binary = require_tool("dovecot")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix=self.prefix))
        self.conf = self.dir / "dovecot.conf"
        self.log_path = self.dir / "dovecot.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def write_config(self) -> None:
        raise NotImplementedError

    def _answers(self) -> bool:
        raise NotImplementedError

    def check_config(self) -> str:
        """`dovecot -n`: the parsed configuration, or an exception naming the error."""
        self.write_config()
        r = subprocess.run([self.binary, "-n", "-c", str(self.conf)], check=False, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"dovecot -n refused the config: {r.stderr}")
        return r.stdout

    def start(self, timeout: float = 15.0) -> Self:
        self.check_config()
        with open(self.dir / "stdout", "wb") as stdout:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [self.binary, "-F", "-c", str(self.conf)],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                start_new_session=self.own_session,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = (self.dir / "stdout").read_text(errors="replace")
                self.proc = None
                raise RuntimeError(f"dovecot exited: {out}{self.log()}")
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dovecot did not start: {self.log()}")

    def stop_process(self) -> None:
        """Stop this Dovecot, keep its directory: the master, by PID; it ends its own children (~2.5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self, *, keep_log_in: Path | None = None) -> None:
        """Stop Dovecot and remove its directory, first copying its log to `keep_log_in`."""
        self.stop_process()
        if keep_log_in is not None and self.log_path.exists():
            shutil.copy(self.log_path, keep_log_in / self.kept_log)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Dovecot(DovecotProcess):
    def __init__(self, users: tuple[str, ...] = USERS) -> None:
        require_tool("dovecot")
        if not os.path.exists(LMTP_BINARY):
            msg = f"{LMTP_BINARY} is missing: install dovecot-lmtpd (make test-services)"
            if IN_CI:
                pytest.fail(msg)
            pytest.skip(msg)
        super().__init__()
        self.users = users
        self.dir.chmod(0o755)

    @property
    def address(self) -> str:
        """For domains.local_delivery.address."""
        return f"127.0.0.1:{self.port}"

    @property
    def unix_path(self) -> Path:
        return self.dir / "run" / "lmtp"

    def maildir(self, address: str) -> Path:
        local, domain = address.split("@")
        return self.dir / "mail" / domain / local

    def messages(self, address: str) -> list[bytes]:
        """Every message in the mailbox's INBOX (new/ and cur/), oldest first by name."""
        md = self.maildir(address)
        files = [p for sub in ("new", "cur") if (md / sub).is_dir() for p in (md / sub).iterdir()]
        return [p.read_bytes() for p in sorted(files, key=lambda p: p.name)]

    def write_config(self) -> None:
        d = self.dir
        nobody = pwd.getpwnam("nobody")
        mail = d / "mail"
        mail.mkdir(exist_ok=True)
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        # passwd-file: user:password:uid:gid:gecos:home:shell:extra; uid/gid come from mail_uid.
        (d / "users").write_text("".join(f"{u}:{{PLAIN}}unused::::::\n" for u in self.users))
        self.conf.write_text(
            f"""# Throwaway Dovecot for the mtaserver test suite: LMTP only, everything under {d}.
base_dir = {d}/run
state_dir = {d}/state
instance_name = mtaserver-test-{self.port}
log_path = {self.log_path}
protocols = lmtp
ssl = no
# The test suite runs as root: Dovecot's own processes may too; mail access may not.
default_internal_user = root
default_internal_group = root
default_login_user = root
mail_uid = {nobody.pw_uid}
mail_gid = {nobody.pw_gid}
first_valid_uid = {nobody.pw_uid}
first_valid_gid = {nobody.pw_gid}
mail_location = maildir:{mail}/%d/%n
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = passwd-file
  args = {d}/users
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
  unix_listener lmtp {{
    mode = 0600
  }}
}}
service anvil {{
  chroot =
}}
"""
        )

    def _answers(self) -> bool:
        """The LMTP greeting on the TCP port (the UNIX socket is up by then too)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                return s.recv(512).startswith(b"220 ")
        except OSError:
            return False
