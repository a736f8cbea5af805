"""ClamAV definitions updates against a real clamd and a signature mirror on 127.0.0.1.

Each test starts its own throwaway clamd (scanners.Clamd: the database directory is the test's
to change) and serves signature files over HTTP from a directory on 127.0.0.1 (http.server in
a thread). A new signature is detected by the running clamd after `run_once` (its RELOAD), a
file sigtool/libclamav refuse is not installed, a mirror that is down leaves the database as it
was, and the scheduler runs again. freshclam is run against a loopback PrivateMirror only: it
never reaches database.clamav.net (PrivateMirror turns off DatabaseMirror and the DNS check).
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_tool
from scanners import VIRUS_FOUND, VIRUS_PAYLOAD, Clamd, clamd_instream
from smtpclient import wait_for_log

from mtaserver import config as config_mod
from mtaserver.config import Config
from mtaserver.filters.definitions import DefinitionsUpdater, read_status

NEW_PAYLOAD = b"MTASERVER-DEFINITIONS-TEST-NEW-SIGNATURE-5c0ffee1-NOT-A-VIRUS"
NEW_NAME = "Mtaserver.Test.Update"
NEW_FOUND = f"stream: {NEW_NAME}.UNOFFICIAL FOUND".encode()
GOOD_NDB = f"{NEW_NAME}:0:*:{NEW_PAYLOAD.hex()}\n"
BAD_NDB = f"{NEW_NAME}:0:*:{NEW_PAYLOAD.hex()[:-2]}ZZ\n"  # sigtool --list-sigs accepts it; libclamav does not


class Mirror:
    """A plain HTTP server on 127.0.0.1 serving `root`; remembers the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a: Any, **kw: Any) -> None:
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, format: str, *args: Any) -> None:
                mirror.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def clamd() -> Iterator[Clamd]:
    require_tool("sigtool")
    require_tool("clamscan")
    server = Clamd().start()
    yield server
    server.stop()


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    root = tmp_path / "www"
    root.mkdir()
    m = Mirror(root)
    yield m
    m.stop()


def make_config(tmp_path: Path, clamd: Clamd, **definitions: Any) -> Config:
    doc = {
        "server": {"hostname": "mx.example.test", "data_dir": str(tmp_path / "data")},
        "antivirus": {
            "enabled": True,
            "clamd": {"address": clamd.address, "timeout": "10s"},
            "definitions": {"database_dir": str(clamd.db), "freshclam": False, "timeout": "30s", **definitions},
        },
    }
    path = tmp_path / "mtaserver.yaml"
    return config_mod.load(path, text=json.dumps(doc))


def wait_for_scan(clamd: Clamd, data: bytes, want: bytes, deadline: float = 60.0) -> bytes:
    """clamd reloads in the background and keeps the old engine until the new one is ready:
    scan until the reply is `want` (or the deadline passes; the caller asserts)."""
    end = time.monotonic() + deadline
    while True:
        got = clamd_instream(clamd.address, data)
        if got == want or time.monotonic() > end:
            return got
        time.sleep(0.1)


async def test_new_signature_is_detected_without_restarting_clamd(tmp_path: Path, clamd: Clamd, mirror: Mirror) -> None:
    (mirror.root / "update.ndb").write_text(GOOD_NDB)
    cfg = make_config(tmp_path, clamd, custom_signatures=[mirror.url("update.ndb")])
    assert clamd_instream(clamd.address, NEW_PAYLOAD) == b"stream: OK"
    pid = clamd.proc.pid if clamd.proc else None

    status = await DefinitionsUpdater(lambda: cfg).run_once()

    assert status.outcome == "ok", status
    assert [(s.file, s.result, s.signatures) for s in status.sources] == [("update.ndb", "installed", 1)]
    assert status.reload == "ok"
    assert status.signatures == 2  # the fixture's Mtaserver.Test.Virus and ours
    assert (clamd.db / "update.ndb").read_text() == GOOD_NDB
    assert wait_for_scan(clamd, NEW_PAYLOAD, NEW_FOUND) == NEW_FOUND
    assert clamd_instream(clamd.address, VIRUS_PAYLOAD) == VIRUS_FOUND  # the old database is still there
    assert clamd.proc is not None and clamd.proc.pid == pid and clamd.proc.poll() is None  # the same clamd, never restarted
    saved = read_status(tmp_path / "data")
    assert (saved["outcome"], saved["signatures"]) == ("ok", 2)
    assert saved["installed"] == {"update.ndb": mirror.url("update.ndb")}
    assert saved["last_success"] == saved["last_attempt"]

    # The same file again: nothing to install, no reload.
    again = await DefinitionsUpdater(lambda: cfg).run_once()
    assert (again.outcome, again.sources[0].result, again.reload, again.runs) == ("ok", "unchanged", "not needed", 2)


async def test_broken_signature_file_is_refused_and_the_last_good_one_stays(tmp_path: Path, clamd: Clamd, mirror: Mirror) -> None:
    (mirror.root / "update.ndb").write_text(GOOD_NDB)
    cfg = make_config(tmp_path, clamd, custom_signatures=[mirror.url("update.ndb")])
    updater = DefinitionsUpdater(lambda: cfg)
    assert (await updater.run_once()).outcome == "ok"
    assert wait_for_scan(clamd, NEW_PAYLOAD, NEW_FOUND) == NEW_FOUND

    (mirror.root / "update.ndb").write_text(BAD_NDB)
    status = await updater.run_once()

    assert status.outcome.startswith("failed: update.ndb: refused: clamscan: "), status.outcome
    assert "Malformed database" in status.outcome
    assert status.sources[0].result.startswith("refused: ")
    assert status.reload == "not needed"
    assert (clamd.db / "update.ndb").read_text() == GOOD_NDB  # not installed
    assert not [p.name for p in clamd.db.iterdir() if p.name.endswith(".tmp")]
    assert clamd_instream(clamd.address, NEW_PAYLOAD) == NEW_FOUND  # clamd answers, with the last good file
    saved = read_status(tmp_path / "data")
    assert saved["outcome"] == status.outcome and saved["last_success"] < saved["last_attempt"]
    assert saved["installed"] == {"update.ndb": mirror.url("update.ndb")}


async def test_a_file_sigtool_refuses_is_not_installed(tmp_path: Path, clamd: Clamd, mirror: Mirror) -> None:
    (mirror.root / "junk.ndb").write_text("this is not a signature\n")
    cfg = make_config(tmp_path, clamd, custom_signatures=[mirror.url("junk.ndb")])
    status = await DefinitionsUpdater(lambda: cfg).run_once()
    assert status.outcome.startswith("failed: junk.ndb: refused: sigtool: "), status.outcome
    assert not (clamd.db / "junk.ndb").exists()
    assert clamd_instream(clamd.address, VIRUS_PAYLOAD) == VIRUS_FOUND


async def test_mirror_down_keeps_the_database(tmp_path: Path, clamd: Clamd, mirror: Mirror) -> None:
    (mirror.root / "update.ndb").write_text(GOOD_NDB)
    cfg = make_config(tmp_path, clamd, custom_signatures=[mirror.url("update.ndb"), mirror.url("missing.hdb")])
    updater = DefinitionsUpdater(lambda: cfg)
    first = await updater.run_once()
    assert [s.result for s in first.sources] == ["installed", "failed: HTTP 404 File not found"]
    assert first.outcome == "failed: missing.hdb: failed: HTTP 404 File not found"
    assert first.reload == "ok"  # what could be installed was

    mirror.stop()
    status = await updater.run_once()
    assert status.outcome.startswith("failed: update.ndb: failed: cannot download: "), status.outcome
    assert "refused" in status.outcome.lower()  # [Errno 111] Connection refused
    assert (clamd.db / "update.ndb").read_text() == GOOD_NDB
    assert status.signatures == 2
    assert wait_for_scan(clamd, NEW_PAYLOAD, NEW_FOUND) == NEW_FOUND


async def test_local_file_and_removal_when_its_source_leaves_the_config(tmp_path: Path, clamd: Clamd) -> None:
    (tmp_path / "local.ndb").write_text(GOOD_NDB)
    cfg = make_config(tmp_path, clamd, custom_signatures=["local.ndb"])  # relative to the config file
    current = [cfg]
    updater = DefinitionsUpdater(lambda: current[0])
    status = await updater.run_once()
    assert (status.outcome, status.sources[0].result) == ("ok", "installed")
    assert wait_for_scan(clamd, NEW_PAYLOAD, NEW_FOUND) == NEW_FOUND

    current[0] = make_config(tmp_path, clamd, custom_signatures=[])
    status = await updater.run_once()
    assert (status.outcome, status.reload, status.installed, status.signatures) == ("ok", "ok", {}, 1)
    assert not (clamd.db / "local.ndb").exists()
    assert (clamd.db / "mtaserver-test.ndb").exists()  # not ours: never touched
    assert wait_for_scan(clamd, NEW_PAYLOAD, b"stream: OK") == b"stream: OK"


async def test_scheduler_runs_again_after_update_frequency_and_on_reconfigure(
    tmp_path: Path, clamd: Clamd, mirror: Mirror
) -> None:
    (mirror.root / "update.ndb").write_text(GOOD_NDB)
    state = tmp_path / "data" / "state" / "definitions.json"

    async def runs_reach(n: int) -> int:
        for _ in range(600):  # a deadline for a broken scheduler, not a timing assertion
            runs = int(json.loads(state.read_text())["runs"]) if state.exists() else 0
            if runs >= n:
                return runs
            await asyncio.sleep(0.1)
        return runs

    # update_frequency 1s: the first update at once (no state yet), then again and again.
    cfg = make_config(tmp_path, clamd, custom_signatures=[mirror.url("update.ndb")], update_frequency="1s")
    stop = asyncio.Event()
    task = asyncio.create_task(DefinitionsUpdater(lambda: cfg).run(stop))
    try:
        assert await runs_reach(3) >= 3
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert mirror.requests.count("/update.ndb") >= 3

    # update_frequency 1w: the last update was just now, so only reconfigure() (a reload) runs one.
    slow = make_config(tmp_path, clamd, custom_signatures=[mirror.url("update.ndb")], update_frequency="1w")
    before = json.loads(state.read_text())["runs"]
    updater = DefinitionsUpdater(lambda: slow)
    stop = asyncio.Event()
    task = asyncio.create_task(updater.run(stop))
    try:
        await asyncio.sleep(0.3)  # time for a wrong immediate run to show
        assert json.loads(state.read_text())["runs"] == before
        updater.reconfigure()
        assert await runs_reach(before + 1) == before + 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def test_freshclam_runs_against_a_loopback_private_mirror(tmp_path: Path, clamd: Clamd, mirror: Mirror) -> None:
    """freshclam accepts only .cvd/.cld files signed with ClamAV's key, which a test cannot make:
    the mirror has none, so this shows that freshclam runs with our generated config, asks our
    mirror (and nothing else) for the daily database, and that its failure is reported while
    the custom signatures are still installed."""
    require_tool("freshclam")
    (mirror.root / "update.ndb").write_text(GOOD_NDB)
    cfg = make_config(
        tmp_path, clamd, custom_signatures=[mirror.url("update.ndb")], freshclam=True, mirrors=[f"http://127.0.0.1:{mirror.port}"]
    )
    status = await DefinitionsUpdater(lambda: cfg, freshclam_attempts=1).run_once()
    assert status.freshclam.startswith("failed: exit "), status.freshclam
    assert status.outcome.startswith("failed: freshclam failed: exit "), status.outcome
    assert status.sources[0].result == "installed" and status.reload == "ok"
    assert "/daily.cvd" in mirror.requests or "/daily.cld" in mirror.requests
    conf = (tmp_path / "data" / "state" / "freshclam.conf").read_text()
    assert f"PrivateMirror http://127.0.0.1:{mirror.port}\n" in conf and "DatabaseMirror" not in conf
    assert wait_for_scan(clamd, NEW_PAYLOAD, NEW_FOUND) == NEW_FOUND


def test_check_config_names_a_missing_local_signature_file(tmp_path: Path) -> None:
    (tmp_path / "here.ndb").write_text(GOOD_NDB)
    conf = tmp_path / "m.yaml"
    conf.write_text(
        "antivirus:\n  enabled: true\n  definitions:\n"
        "    custom_signatures: [here.ndb, missing.ndb, 'https://sigs.example.test/remote.ndb']\n"
    )
    argv = [sys.executable, "-m", "mtaserver", "check-config", "-c", str(conf)]
    p = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout
    missing = tmp_path / "missing.ndb"
    assert p.stderr.splitlines() == [f"{conf}:4: antivirus.definitions.custom_signatures: {missing}: no such file"]


def test_the_server_updates_at_start_and_again_after_a_reload_that_changes_definitions(
    tmp_path: Path, clamd: Clamd, make_mta: Any
) -> None:
    (tmp_path / "first.ndb").write_text(GOOD_NDB)
    definitions = {
        "custom_signatures": [str(tmp_path / "first.ndb")], "update_frequency": "1w",
        "database_dir": str(clamd.db), "freshclam": False,
    }  # fmt: skip
    mta = make_mta({"antivirus": {"enabled": True, "clamd": {"address": clamd.address}, "definitions": definitions}})
    wait_for_log(mta, "DEFINITIONS ok: 2 signatures (first.ndb installed; freshclam off; reload ok)", timeout=60)
    assert wait_for_scan(clamd, NEW_PAYLOAD, NEW_FOUND) == NEW_FOUND

    second = b"MTASERVER-DEFINITIONS-TEST-SECOND-SIGNATURE-77aa01-NOT-A-VIRUS"
    (tmp_path / "second.hdb").write_text(f"{hashlib.md5(second).hexdigest()}:{len(second)}:Mtaserver.Test.Second\n")
    mta.config["antivirus"]["definitions"]["custom_signatures"].append(str(tmp_path / "second.hdb"))
    mta.write_config()
    mta.signal(signal.SIGHUP)
    line = "DEFINITIONS ok: 3 signatures (first.ndb unchanged, second.hdb installed; freshclam off; reload ok)"
    wait_for_log(mta, line, timeout=60)
    want = b"stream: Mtaserver.Test.Second.UNOFFICIAL FOUND"
    assert wait_for_scan(clamd, second, want) == want
    status = read_status(mta.data_dir)
    assert (status["runs"], status["outcome"], status["signatures"]) == (2, "ok", 3)
