"""README.md's first example, as printed there, delivers into the maildir it names (only the port
is the test server's): it needs nothing but .venv's Python."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from helpers import delivering, maildir_messages, wait_for

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_example_delivers(make_mta):
    line = re.search(r"^\.venv/bin/python -c '(.*)'$", README.read_text(), re.M)
    assert line is not None, "README.md lost its example"
    code = line.group(1)
    assert '"127.0.0.1", 2525' in code and "user@example.test" in code
    mta = make_mta(delivering())
    subprocess.run([sys.executable, "-c", code.replace('"127.0.0.1", 2525', f'"127.0.0.1", {mta.port}')], check=True, timeout=30)
    [msg] = wait_for(lambda: maildir_messages(mta, "user@example.test"), what="the README's message in the maildir")
    assert msg.startswith(b"Return-Path: <you@example.org>\nDelivered-To: user@example.test\nReceived: ") and b"It works." in msg
