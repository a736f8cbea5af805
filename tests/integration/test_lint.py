"""`make test` runs `ruff check mtaserver/` and fails on a finding; mtaserver/ has none."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def ruff(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ruff", "check", *args], cwd=ROOT, input=stdin, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_make_test_runs_ruff_on_the_package():
    makefile = (ROOT / "Makefile").read_text()
    assert "lint" in re.search(r"^test: (.*)$", makefile, re.M).group(1).split()
    assert re.search(r"^lint: .*\n\t\$\(BIN\)/ruff check mtaserver/\n", makefile, re.M)


def test_the_package_has_no_finding():
    p = ruff("mtaserver/")
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_finding_fails():
    p = ruff("--stdin-filename", "mtaserver/example.py", "-", stdin="import os\nimport re\n\nprint(re.S)\n")
    assert p.returncode == 1 and "F401" in p.stdout and "FURB167" in p.stdout, p.stdout
