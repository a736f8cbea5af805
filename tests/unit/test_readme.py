"""README.md's examples run on what `make run` provides: every command of its sh blocks is a make
target, a program of .venv, a shell builtin or coreutils, or a Debian package that
scripts/bootstrap.sh (run by `make run`) installs. Nothing the test suite alone installs (swaks)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHELL = {"cat", "chmod", "ls", "printf", "echo", "exec", "kill", "install", "adduser", "systemctl", "awk", "grep", "sed",
         "cd", "export", "EOF", "EOT", "#!/bin/sh"}  # fmt: skip
BOOTSTRAP_TOOLS = {"openssl", "curl"}  # packages scripts/bootstrap.sh installs when missing


def commands(text: str) -> list[str]:
    """The first word of every command line in the ```sh blocks (heredoc bodies skipped)."""
    out: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        heredoc = None
        prev = ""
        for line in block.splitlines():
            if heredoc is not None:
                if line.strip() == heredoc:
                    heredoc = None
                continue
            if prev.endswith("\\") or not line.strip() or line.lstrip().startswith("#"):
                prev = line
                continue
            prev = line
            word = line.split()[0]
            word = word.split("=", 1)[1].removeprefix("$(") if re.match(r"^[A-Z_]+=\$\(", word) else word
            out.append(word)
            m = re.search(r"<<\s*'?(\w+)'?", line)
            if m:
                heredoc = m.group(1)
            out += [seg.split()[0] for seg in line.split("|")[1:] if seg.split()]
    return out


def test_every_readme_command_is_there_after_make_run():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    cmds = commands(readme)
    assert ".venv/bin/python" in cmds and "make" in cmds  # the parser sees the examples
    for word in cmds:
        if word == "make":
            continue
        if word.startswith(".venv/bin/") or word.startswith("/opt/mtaserver/.venv/bin/"):
            assert word.rsplit("/", 1)[1] in ("python", "mtaserver"), word
        elif word in BOOTSTRAP_TOOLS:
            assert f"need+=({word})" in bootstrap, f"{word}: scripts/bootstrap.sh does not install it"
        else:
            assert word in SHELL, f"README runs {word!r}, which `make run` does not provide"
    for target in re.findall(r"`make ([a-z-]+)", readme) + re.findall(r"^make ([a-z-]+)", readme, re.M):
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"make {target}: no such target"
    assert "$(STAMP)" in re.search(r"^run: (.*)$", makefile, re.M).group(1) and "bootstrap.sh" in makefile
