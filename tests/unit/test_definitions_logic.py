"""The pure parts of the ClamAV definitions updater: freshclam.conf text, Checks, the schedule,
sigtool output parsing, source names, the outcome text, and the config's validation."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mtaserver.config import Definitions
from mtaserver.filters.definitions import (
    RETRY_AFTER,
    SourceResult,
    count_listed,
    freshclam_checks,
    freshclam_conf,
    is_signature_file,
    next_run,
    parse_cvd_info,
    source_file_name,
    summarize,
)


def directives(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_freshclam_conf_default_mirror() -> None:
    text = freshclam_conf(Definitions(), owner="clamav")
    assert directives(text) == [
        "DatabaseDirectory /var/lib/clamav",
        "DatabaseOwner clamav",
        "Checks 12",
        "MaxAttempts 3",
        "DatabaseMirror database.clamav.net",
        "TestDatabases yes",
        "Foreground yes",
    ]
    assert not [x for x in directives(text) if x.startswith(("NotifyClamd", "DatabaseCustomURL", "PrivateMirror"))]


def test_freshclam_conf_one_line_per_mirror_and_private_mirrors() -> None:
    d = Definitions(mirrors=["db.local.clamav.net", "mirror.example.test"], database_dir="/srv/clamav", update_frequency="30m")
    lines = directives(freshclam_conf(d, max_attempts=1))
    assert lines[:4] == ["DatabaseDirectory /srv/clamav", "Checks 48", "MaxAttempts 1", "DatabaseMirror db.local.clamav.net"]
    assert "DatabaseMirror mirror.example.test" in lines
    assert not any(x.startswith("DatabaseOwner") for x in lines)

    p = Definitions(mirrors=["http://127.0.0.1:8080/", "https://[::1]:8443"])
    lines = directives(freshclam_conf(p, database_dir="/tmp/db"))
    assert [x for x in lines if "Mirror" in x] == ["PrivateMirror http://127.0.0.1:8080", "PrivateMirror https://[::1]:8443"]
    assert lines[0] == "DatabaseDirectory /tmp/db"


def test_freshclam_conf_custom_signatures_are_ours_not_freshclams() -> None:
    d = Definitions(custom_signatures=["https://sigs.example.test/a.ndb", "local/b.hdb"])
    assert not [x for x in directives(freshclam_conf(d)) if x.startswith("DatabaseCustomURL")]


@pytest.mark.parametrize(
    ("frequency", "checks"),
    [
        ("2h", 12), ("1h", 24), ("30m", 48), ("1d", 1), ("3d", 1), ("1w", 1), ("2w", 1),  # Carbonio writes 24 for 1w
        ("90s", 50), ("1s", 50), ("5m", 50), ("28m", 50), ("29m", 50), ("31m", 46), ("7h", 3), ("13h", 2),
    ],
)  # fmt: skip
def test_checks_per_day_from_the_frequency(frequency: str, checks: int) -> None:
    assert freshclam_checks(Definitions(update_frequency=frequency).update_frequency) == checks


def test_next_run() -> None:
    assert next_run(None, 1000.0, 7200.0) == 1000.0  # never ran: now
    assert next_run(1000.0, 1500.0, 7200.0) == 8200.0
    assert next_run(1000.0, 9000.0, 7200.0) == 8200.0  # overdue: due in the past means run now
    assert next_run(1000.0, 1000.5, 1.0) == 1001.0  # seconds
    assert next_run(0.0, 10.0, 14 * 86400.0) == 14 * 86400.0  # weeks
    # A failed update is tried again after RETRY_AFTER, or the frequency if that is shorter.
    assert next_run(1000.0, 1001.0, 7200.0, failed=True) == 1000.0 + RETRY_AFTER
    assert next_run(1000.0, 1001.0, 10.0, failed=True) == 1010.0
    assert next_run(1000.0, 1001.0, 7200.0, failed=True, retry=60.0) == 1060.0
    # The clock went back a day: wait one interval from now, not a day plus the interval.
    assert next_run(100000.0, 13600.0, 3600.0) == 17200.0


def test_sigtool_output() -> None:
    assert count_listed("Mtaserver.Test.Virus\nOther.Sig\n\n") == 2
    assert count_listed("") == 0
    info = (
        "File: daily.cvd\nBuild time: 01 Dec 2026 08:30 +0000\nVersion: 27473\nSignatures: 2074520\n"
        "Functionality level: 90\nBuilder: raynman\nMD5: 1d5c\nDigital signature: abc\nVerification OK.\n"
    )
    assert parse_cvd_info(info) == {"build_time": "01 Dec 2026 08:30 +0000", "version": 27473, "signatures": 2074520}
    assert parse_cvd_info("ERROR: cvdinfo: Can't read/parse CVD header") == {}


def test_source_file_names() -> None:
    assert source_file_name("https://sigs.example.test/path/foo.ndb?token=x") == "foo.ndb"
    assert source_file_name("http://127.0.0.1:8080/a%2Bb.hdb") == "a+b.hdb"
    assert source_file_name("/etc/clamav-extra/local.ldb") == "local.ldb"
    assert source_file_name("relative/dir/x.ign2") == "x.ign2"
    assert is_signature_file("daily.cld") and is_signature_file("x.NDB") and is_signature_file("x.ign2")
    assert not is_signature_file("freshclam.dat") and not is_signature_file(".x.ndb.mtaserver.tmp")


def test_outcome_text() -> None:
    ok = SourceResult(source="a", file="a.ndb", result="installed")
    same = SourceResult(source="b", file="b.ndb", result="unchanged")
    bad = SourceResult(source="c", file="c.ndb", result="refused: sigtool: Malformed pattern line 1")
    assert summarize([ok, same], "off", "ok") == "ok"
    assert summarize([ok, bad], "ok", "ok") == "failed: c.ndb: refused: sigtool: Malformed pattern line 1"
    assert summarize([], "failed: exit 52", "failed: clamd answered 'UNKNOWN COMMAND'") == (
        "failed: freshclam failed: exit 52; clamd reload failed: clamd answered 'UNKNOWN COMMAND'"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("mirrors", ["http://127.0.0.1:8080", "database.clamav.net"], "not both"),
        ("mirrors", ["ftp://mirror.example.test"], "expected a host name or http(s)://host[:port]"),
        ("mirrors", ["bad host"], "not a domain name"),
        ("mirrors", ["http://host/x y"], "expected a host name"),
        ("custom_signatures", ["https://sigs.example.test/list.txt"], "ClamAV signature extension"),
        ("custom_signatures", ["https://sigs.example.test/"], "ClamAV signature extension"),
        ("custom_signatures", ["ftp://sigs.example.test/a.ndb"], "expected an http(s)://host/path URL"),
        ("custom_signatures", ["a/x.ndb", "https://h.test/x.ndb"], "two sources install the same file 'x.ndb'"),
        ("custom_signatures", ["main.cvd"], "ClamAV signature extension"),
        ("update_frequency", "500ms", "at least 1s"),
        ("update_frequency", 0, "at least 1s"),
        ("database_dir", "var/clamav", "absolute path"),
    ],
)  # fmt: skip
def test_config_refuses(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as err:
        Definitions(**{field: value})
    assert message in str(err.value)


def test_config_accepts_seconds_to_weeks_and_freshclam_needs_a_mirror() -> None:
    assert Definitions(update_frequency="1s").update_frequency == 1.0
    assert Definitions(update_frequency="6w").update_frequency == 6 * 7 * 86400.0
    assert Definitions().freshclam is False  # Debian's clamav-freshclam updates the official databases by default
    with pytest.raises(ValidationError, match="needs at least one mirror"):
        Definitions(freshclam=True, mirrors=[])
