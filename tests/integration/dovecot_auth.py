"""A real Dovecot auth service (no mail protocols) on 127.0.0.1 and a UNIX socket, for AUTH tests.

`DovecotAuth({"alice": "pw"}).start()` writes a throwaway dovecot.conf (its own base_dir,
state_dir and log file, `protocols = none`, a passwd-file passdb with SHA512-CRYPT hashes,
a static userdb) whose `service auth` listens on <dir>/run/auth-client (unix_listener) and
on 127.0.0.1:<free port> (inet_listener), and runs `dovecot -F -c FILE` as our child, as
tests/integration/dovecot.py does for LMTP, in a process group of its own; `stop()` ends that
process by its PID, then what is left of its group (an auth process serving a client lingers).
Nothing of the system's Dovecot (/etc/dovecot, the dovecot service) is read or touched.

auth_failure_delay is 0 so that refusals come at once; the per-IP penalty (anvil) stays as
Dovecot ships it, so a test that fails more than once uses its own client address.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

from dovecot import DovecotProcess

from mtaserver.auth.hashes import sha512_crypt


class DovecotAuth(DovecotProcess):
    prefix = "mtaserver-dovecot-auth-"
    kept_log = "dovecot-auth.log"
    own_session = True  # so that stop_process() can end its auth child too

    def __init__(self, users: dict[str, str]) -> None:
        super().__init__()
        self.users = users
        self.passwd = self.dir / "passwd"

    @property
    def address(self) -> str:
        """For auth.dovecot_socket: the inet_listener."""
        return f"127.0.0.1:{self.port}"

    @property
    def unix_path(self) -> Path:
        return self.dir / "run" / "auth-client"

    def write_passwd(self) -> None:
        # passwd-file: user:{SCHEME}hash:uid:gid:gecos:home:shell:extra. The hashes are ours:
        # Dovecot checking them also checks our sha512-crypt against glibc's.
        lines = [
            f"{u}:{{SHA512-CRYPT}}{sha512_crypt(pw.encode(), '$6$' + u[:8] + 'salt')}::::::\n" for u, pw in self.users.items()
        ]
        self.passwd.write_text("".join(lines))

    def write_config(self) -> None:
        d = self.dir
        self.write_passwd()
        script = d / "checkpassword"
        script.write_text('#!/bin/bash\nIFS= read -r -d "" user <&3\n[ "$user" = tempfail ] && exit 111\nexit 1\n')
        script.chmod(0o755)
        self.conf.write_text(
            f"""# Throwaway Dovecot for the mtaserver test suite: the auth service only, everything under {d}.
base_dir = {d}/run
state_dir = {d}/state
instance_name = mtaserver-auth-test-{self.port}
log_path = {self.log_path}
protocols = none
ssl = no
default_internal_user = root
default_internal_group = root
default_login_user = root
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = {self.passwd}
}}
# Logins not in the passwd file: "tempfail" is the passdb's internal error (checkpassword exit
# 111, Dovecot answers FAIL code=temp_fail), every other one a refusal (exit 1).
passdb {{
  driver = checkpassword
  args = {self.dir}/checkpassword
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener auth-client {{
    mode = 0600
  }}
  inet_listener {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
service anvil {{
  chroot =
}}
"""
        )

    def _answers(self) -> bool:
        """The auth handshake on the TCP port, through DONE (the UNIX socket is up by then too)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                data = b""
                while not data.endswith(b"DONE\n"):
                    chunk = s.recv(4096)
                    if not chunk:
                        return False
                    data += chunk
                return data.startswith(b"VERSION\t1\t") and self.unix_path.exists()
        except OSError:
            return False

    def stop_process(self) -> None:
        """Stop this Dovecot, keep the directory. The master goes by its PID; an auth process
        that still serves a connected client outlives it, so the rest of the process group
        we started (its id is the master's PID) gets SIGTERM too, as systemd would send."""
        if self.proc is None:
            return
        group = self.proc.pid
        super().stop_process()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
