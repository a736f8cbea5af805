"""The test layers of DESIGN.md hold: tests/unit is pure (no sockets, no subprocesses, no threads,
no sleeps; so is tests/builders.py, which both layers import), no test asserts on wall-clock time, no test module imports another (shared code
lives in fixtures and helper modules: tests/conftest.py, tests/integration/helpers.py, ...), and no
module name is in both tests/unit and tests/integration (pytest's rootdir imports would stop collecting)."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

IMPURE = re.compile(
    r"^\s*(import socket|import subprocess|from socket import|from subprocess import)\b"
    r"|\bsocket\.socket\(|\bsubprocess\.(run|Popen|check_output|call)\(|\bthreading\.Thread\("
    r"|\btime\.sleep\(|\basyncio\.sleep\((?!0\))|\bfree_port\b|\bstart_server\(|\bstart_unix_server\(|\bopen_connection\(|"
    r"\bcreate_connection\(",
    re.MULTILINE,
)  # asyncio.sleep(0) only yields to the loop: allowed
WALL_CLOCK = re.compile(r"^\s*assert\b.*(\b(monotonic|perf_counter|time)\(\)\s*-|\belapsed\b\s*[<>]|\bdt\s*[<>])", re.MULTILINE)
IMPORTS_A_TEST = re.compile(r"^\s*(from|import) test_\w+", re.MULTILINE)


def _files(where: str) -> list[Path]:
    return sorted(p for p in (TESTS / where).glob("*.py") if p.name != Path(__file__).name)


def _twins(a: list[Path], b: list[Path]) -> set[str]:
    return {p.name for p in a} & {p.name for p in b}


def test_unit_tests_are_pure():
    bad = {p.name: m.group(0).strip() for p in [*_files("unit"), TESTS / "builders.py"] if (m := IMPURE.search(p.read_text()))}
    assert bad == {}, f"move these to tests/integration (or make them pure): {bad}"


def test_no_assertion_on_wall_clock_time():
    bad = {p.name: m.group(0).strip() for p in _files("unit") + _files("integration") if (m := WALL_CLOCK.search(p.read_text()))}
    assert bad == {}, f"inject `now`, or test the outcome, not the time it took: {bad}"


def test_no_test_module_imports_another():
    bad = {
        p.name: m.group(0).strip() for p in _files("unit") + _files("integration") if (m := IMPORTS_A_TEST.search(p.read_text()))
    }
    assert bad == {}, f"shared code goes into helpers.py or a fixture: {bad}"


def test_no_module_name_in_both_layers():
    """Two test_x.py (or two helpers) in tests/unit and tests/integration: pytest imports both as `test_x`
    (no __init__.py, rootdir sys.path) and stops at collection ("import file mismatch")."""
    unit, integration = sorted((TESTS / "unit").glob("*.py")), sorted((TESTS / "integration").glob("*.py"))
    twins = _twins(unit, integration)
    assert twins == set(), f"give one of each a new name (e.g. test_x_sessions.py): {sorted(twins)}"


def test_the_checks_can_fail():
    assert (
        IMPURE.search("import socket\n")
        and IMPURE.search("    await asyncio.sleep(0.5)\n")
        and not IMPURE.search("await asyncio.sleep(0)\n")
    )
    assert WALL_CLOCK.search("        assert time.monotonic() - t0 < 4\n") and WALL_CLOCK.search("    assert dt >= 0.5\n")
    assert IMPORTS_A_TEST.search("from test_delivery import Sink\n")
    unit, integration = [Path("unit/test_x.py"), Path("unit/a.py")], [Path("integration/test_x.py"), Path("integration/b.py")]
    assert _twins(unit, integration) == {"test_x.py"}
