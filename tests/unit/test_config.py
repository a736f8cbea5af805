from __future__ import annotations

from pathlib import Path

import pytest
from builders import config_errors

from mtaserver import config
from mtaserver.config import load, parse_duration, parse_size

CONF = Path(__file__).resolve().parents[2] / "conf" / "mtaserver.yaml"


def test_shipped_config_is_valid_and_covers_every_section():
    cfg = load(CONF)
    assert cfg.server.listeners[0].address.host == "127.0.0.1"
    assert cfg.data_path == CONF.parent.parent / "var"
    text = CONF.read_text()
    for section in config.Config.model_fields:
        if section != "source":
            assert f"\n{section}:" in text, f"conf/mtaserver.yaml lacks {section}"


def _keys(model, prefix=""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, config.Strict):
            yield from _keys(ann, f"{prefix}{name}.")
        else:
            yield prefix + name


def test_shipped_config_documents_every_key():
    text = CONF.read_text()
    missing = [k for k in _keys(config.Config) if k != "source" and f"{k.rsplit('.', 1)[-1]}:" not in text]
    assert missing == []


@pytest.mark.parametrize(
    "text, expected",
    [
        ("server:\n  workers: lots\n", "m.yaml:2: server.workers: "),
        ("server:\n  nope: 1\n", "m.yaml:2: server.nope: unknown key"),
        ("bogus: {}\n", "m.yaml:1: bogus: unknown key"),
        ("server:\n  listeners:\n    - {name: a, address: 'x'}\n", "m.yaml:3: server.listeners[0].address: 'x' has no port"),
        ("queue:\n  min_backoff: 2h\n  max_backoff: 1h\n", "m.yaml:1: queue: min_backoff must not exceed max_backoff"),
        ("advanced:\n  max_message_size: 10Q\n", "m.yaml:2: advanced.max_message_size: expected a size"),
        ("queue:\n  max_lifetime: soon\n", "m.yaml:2: queue.max_lifetime: expected a duration"),
        ("queue:\n  wakeup_delay: 2s\n", "m.yaml:2: queue.wakeup_delay: "),
        ("outbound:\n  mynetworks: ['10.0.0.0/33']\n", "m.yaml:2: outbound.mynetworks[0]: not a network"),
        ("domains:\n  local: ['bad domain']\n", "m.yaml:2: domains.local: not a domain name"),
        ("server:\n  hostname: a\n  hostname: b\n", "m.yaml:3: server.hostname: duplicate key"),
        ("server: [1\n", "m.yaml:2: (yaml):"),
        ("inbound:\n  bare_newline: maybe\n", "m.yaml:2: inbound.bare_newline: "),
        ("servers:\n  mx2.example.test:\n    queue: {min_free: -1}\n", "m.yaml:3: servers.mx2.example.test.queue.min_free: "),
    ],
)
def test_errors_name_file_line_and_key(tmp_path, text, expected):
    errs = config_errors(text, tmp_path)
    assert any(e.startswith(str(tmp_path / expected)) for e in errs), errs


def test_every_error_is_reported(tmp_path):
    errs = config_errors("server:\n  workers: 0\n  x: 1\nqueue:\n  y: 2\n", tmp_path)
    assert len(errs) == 3


def test_per_node_override_applies_to_this_hostname(tmp_path):
    p = tmp_path / "m.yaml"
    p.write_text(
        "server: {hostname: mx2.example.test}\n"
        "servers:\n"
        "  mx2.example.test: {outbound: {mynetworks: ['10.0.0.0/8']}}\n"
        "  mx3.example.test: {outbound: {mynetworks: ['10.9.0.0/16']}}\n"
    )
    cfg = load(p)
    assert [str(n) for n in cfg.outbound.mynetworks] == ["10.0.0.0/8"]


def test_units():
    assert parse_duration("6s") == 6 and parse_duration("5m") == 300 and parse_duration("1h") == 3600
    assert parse_duration("30d") == 30 * 86400 and parse_duration("2w") == 14 * 86400 and parse_duration(7) == 7
    assert parse_duration("20ms") == pytest.approx(0.02) and parse_duration("1.5s") == 1.5
    assert parse_size("10M") == 10 * 1024**2 and parse_size("500K") == 512000 and parse_size(10240000) == 10240000
    for bad in ("-1s", "1y", "5mss", True, ""):
        with pytest.raises(ValueError):
            parse_duration(bad)
