"""The settings pages' form <-> config mapping (mtaserver/admin/panel/settings.py), pure."""

from __future__ import annotations

from typing import Any

import pytest

from mtaserver.admin.api import config_json
from mtaserver.admin.configfile import merge_patch
from mtaserver.admin.panel.settings import (
    ADVANCED,
    ANTIVIRUS,
    INBOUND,
    MB,
    OUTBOUND,
    PAGES,
    POSTSCREEN,
    SERVER,
    form_patch,
    form_values,
    human_duration,
    node_key,
    page_values,
    place_errors,
    postscreen_stats,
    server_patch,
    server_values,
    size_info,
    submitted,
    tolerance_info,
)  # fmt: skip
from mtaserver.config import Config
from mtaserver.filters.attachments import COMMON_BLOCKED


def defaults() -> dict[str, Any]:
    return config_json(Config(server={"hostname": "mx.example.test"}))


def form_of(page, values: dict[str, Any]) -> dict[str, list[str]]:
    """What a browser posts for `values` (page_values' shape): the inverse of the templates."""
    out: dict[str, list[str]] = {}
    for f in page.fields:
        v = values[f.key]
        match f.kind:
            case "bool":
                if v:
                    out[f.key] = ["on"]
            case "chips" | "addremove":
                out[f.key] = list(v)
            case "tolerance_tag" | "tolerance_kill":
                out[f.key] = [v["level"]]
                out[f.key + ".custom"] = [v["custom"]]
            case "size_mb":
                out[f.key] = [v["mode"]]
                out[f.key + ".mb"] = [v["mb"]]
            case "dkim":
                for p in ("domain", "selector", "key"):
                    out[f"{f.key}.{p}"] = [e[p] for e in v]
            case _:
                out[f.key] = [str(v)]
    return out


@pytest.mark.parametrize("name", sorted(PAGES))
def test_an_unchanged_form_changes_nothing(name):
    page = PAGES[name]
    cfg = defaults()
    assert form_patch(page, form_of(page, page_values(page, cfg)), cfg) == {}


def test_unchanged_with_every_kind_set():
    cfg = defaults()
    cfg = merge_patch(cfg, {
        "inbound": {"blocked_extensions": ["exe", "bat"]},
        "postscreen": {"access_list": ["permit_mynetworks", "192.0.2.0/24 reject"], "greet": {"ttl": 3600.0}},
        "outbound": {"relay_host": "[relay.test]:2525", "mynetworks": ["10.0.0.0/8", "!10.1.0.0/16"]},
        "antispam": {"delivery_tolerance": "40%", "blocking_tolerance": 15.5},
        "advanced": {"max_message_size": 10240000},
        "dkim": {"sign": [{"domain": "example.test", "selector": "mail", "key": "dkim/example.test.mail.key"}]},
    })  # fmt: skip
    for page in PAGES.values():
        assert form_patch(page, form_of(page, page_values(page, cfg)), cfg) == {}, page.name


def test_a_chip_added_is_the_only_key_in_the_patch():
    cfg = defaults()
    form = form_of(INBOUND, page_values(INBOUND, cfg))
    form["inbound.blocked_extensions"] = ["exe", "EXE", "bat"]
    assert form_patch(INBOUND, form, cfg) == {"inbound": {"blocked_extensions": ["exe", "EXE", "bat"]}}


def test_the_common_extensions_are_the_seeds_27():
    assert len(COMMON_BLOCKED) == 27 and len(set(COMMON_BLOCKED)) == 27
    assert {"exe", "bat", "xl", "do"} <= set(COMMON_BLOCKED)


def test_switches_absent_from_the_form_are_off():
    cfg = defaults()
    form = form_of(INBOUND, page_values(INBOUND, cfg))
    del form["inbound.notify_admin"]
    assert form_patch(INBOUND, form, cfg) == {"inbound": {"notify_admin": False}}


def test_numbers_durations_and_choices():
    cfg = defaults()
    form = form_of(POSTSCREEN, page_values(POSTSCREEN, cfg))
    form["postscreen.dnsbl.threshold"] = ["3"]
    form["postscreen.greet.ttl"] = ["1d"]  # the default, written another way: no change
    form["postscreen.pipelining.ttl"] = ["7d"]
    form["postscreen.greet.action"] = ["drop"]
    form["postscreen.dnsbl.whitelist_threshold"] = ["abc"]  # the validator will name it: kept as typed
    assert form_patch(POSTSCREEN, form, cfg) == {"postscreen": {
        "dnsbl": {"threshold": 3, "whitelist_threshold": "abc"}, "pipelining": {"ttl": "7d"}, "greet": {"action": "drop"},
    }}  # fmt: skip


def test_lines_one_per_line():
    cfg = defaults()
    form = form_of(POSTSCREEN, page_values(POSTSCREEN, cfg))
    form["postscreen.access_list"] = ["permit_mynetworks\r\n\r\n  127.0.0.2/32 reject  \r\n"]
    assert form_patch(POSTSCREEN, form, cfg) == {"postscreen": {"access_list": ["permit_mynetworks", "127.0.0.2/32 reject"]}}


def test_optional_text_empty_is_null_and_a_bad_relay_host_is_written_as_typed():
    cfg = merge_patch(defaults(), {"outbound": {"relay_host": "[a.test]:25"}})
    form = form_of(OUTBOUND, page_values(OUTBOUND, cfg))
    form["outbound.relay_host"] = [""]
    assert form_patch(OUTBOUND, form, cfg) == {"outbound": {"relay_host": None}}
    form["outbound.relay_host"] = ["[foo"]
    assert form_patch(OUTBOUND, form, cfg) == {"outbound": {"relay_host": "[foo"}}


def test_mynetworks_compared_as_networks():
    cfg = defaults()  # ["127.0.0.0/8", "::1/128"]
    form = form_of(OUTBOUND, page_values(OUTBOUND, cfg))
    form["outbound.mynetworks"] = ["127.0.0.0/8\n[::1]/128"]
    assert form_patch(OUTBOUND, form, cfg) == {}


def test_tolerance_level_percent_and_score():
    assert tolerance_info("tolerance_tag", "medium") == {"level": "medium", "custom": "", "percent": 33.0, "score": 6.6}
    assert tolerance_info("tolerance_kill", "high")["score"] == 18.0
    assert tolerance_info("tolerance_tag", "40%") == {"level": "custom", "custom": "40%", "percent": 40.0, "score": 8.0}
    assert tolerance_info("tolerance_tag", 6.6) == {"level": "custom", "custom": "6.6", "percent": 33.0, "score": 6.6}
    assert tolerance_info("tolerance_tag", "x")["score"] is None
    f = ANTIVIRUS.field("antispam.delivery_tolerance")
    assert submitted(f, {f.key: ["custom"], f.key + ".custom": ["40%"]}) == "40%"
    assert submitted(f, {f.key: ["custom"], f.key + ".custom": ["6.6"]}) == 6.6
    assert submitted(f, {f.key: ["high"], f.key + ".custom": ["6.6"]}) == "high"


def test_message_size_in_mb_of_1048576_bytes():
    assert MB == 1_048_576
    assert size_info(10240000) == {"mode": "custom", "mb": "9.77", "bytes": 10240000}
    assert size_info(0)["mode"] == "nolimit"
    f = ADVANCED.field("advanced.max_message_size")
    assert submitted(f, {f.key: ["nolimit"], f.key + ".mb": ["9.77"]}) == 0
    assert submitted(f, {f.key: ["custom"], f.key + ".mb": ["20"]}) == 20 * MB
    assert submitted(f, {f.key: ["custom"], f.key + ".mb": ["lots"]}) == "lots"
    cfg = defaults()
    form = form_of(ADVANCED, page_values(ADVANCED, cfg))
    assert form[f.key + ".mb"] == ["9.77"]  # shown rounded; saved as shown: no change
    assert form_patch(ADVANCED, form, cfg) == {}
    form[f.key] = ["nolimit"]
    assert form_patch(ADVANCED, form, cfg) == {"advanced": {"max_message_size": 0}}


def test_dkim_entries_removed_by_index():
    entries = [{"domain": "a.test", "selector": "s1", "key": "dkim/a.test.s1.key"},
               {"domain": "b.test", "selector": "s2", "key": "dkim/b.test.s2.key"}]  # fmt: skip
    cfg = merge_patch(defaults(), {"dkim": {"sign": entries}})
    form = form_of(ANTIVIRUS, page_values(ANTIVIRUS, cfg))
    form["dkim.sign.remove"] = ["0"]
    assert form_patch(ANTIVIRUS, form, cfg) == {"dkim": {"sign": [entries[1]]}}


def test_form_values_keep_what_was_typed():
    cfg = defaults()
    form = form_of(POSTSCREEN, page_values(POSTSCREEN, cfg))
    form["postscreen.dnsbl.threshold"] = ["  x1 "]
    form["postscreen.access_list"] = ["a\nb"]
    shown = form_values(POSTSCREEN, form)
    assert shown["postscreen.dnsbl.threshold"] == "  x1 "
    assert shown["postscreen.access_list"] == "a\nb"


def test_human_duration():
    assert [human_duration(x) for x in (2592000.0, 86400.0, 3600.0, 90.0, 600.0, 0.02, 0.0, 1209600.0)] == [
        "30d", "1d", "1h", "90s", "10m", "20ms", "0s", "2w"]  # fmt: skip


def test_errors_at_their_fields():
    errors = [
        "outbound.relay_host: '[foo': expected host, host:port, [host] or [host]:port",
        "outbound.mynetworks[1]: bad network",
        "postscreen.access_list: entry 2: bad",
        "(reload): refused",
        "server.tls: cannot load",
    ]
    by_key, other = place_errors(OUTBOUND, errors)
    assert by_key == {"outbound.relay_host": ["'[foo': expected host, host:port, [host] or [host]:port"],
                      "outbound.mynetworks": ["line 2: bad network"]}  # fmt: skip
    assert other == errors[2:]
    by_key, other = place_errors(SERVER, ["servers.mx.example.test.outbound.relay_host: bad"], prefix="servers.mx.example.test.")
    assert by_key == {"outbound.relay_host": ["bad"]} and other == []
    by_key, _ = place_errors(ANTIVIRUS, ["dkim.sign[1].selector: expected a selector"])
    assert by_key == {"dkim.sign": ["entry 2 selector: expected a selector"]}


def test_node_key_matches_like_the_loader():
    assert node_key({"MX.Example.Test.": {}, "other.test": {}}, "mx.example.test") == "MX.Example.Test."
    assert node_key({}, "mx.example.test") == "mx.example.test"
    assert node_key(None, "mx.example.test") == "mx.example.test"


def test_server_values_inherited_or_overridden():
    base = defaults()
    override = {"outbound": {"relay_host": "[r2.test]:25"}}
    values, over = server_values(SERVER, base, override)
    assert over["outbound.relay_host"] and not over["outbound.require_auth"]
    assert values["outbound.relay_host"] == "[r2.test]:25"
    assert values["outbound.require_auth"] is True  # the global value


def test_server_patch_override_and_back():
    base = defaults()
    values, _ = server_values(SERVER, base, {})
    form = form_of(SERVER, values)
    assert server_patch(SERVER, form, base, {}, "mx.example.test") == {}  # nothing overridden: no change
    form["override.outbound.relay_host"] = ["on"]
    form["outbound.relay_host"] = ["[r2.test]:25"]
    form["override.advanced.log_level"] = ["on"]  # pinned to the global value: still an override
    assert server_patch(SERVER, form, base, {}, "mx.example.test") == {
        "servers": {"mx.example.test": {"outbound": {"relay_host": "[r2.test]:25"}, "advanced": {"log_level": "info"}}}}
    # back to inherited: the keys go, an emptied section goes, the node goes when nothing is left
    override = {"outbound": {"relay_host": "[r2.test]:25"}, "advanced": {"log_level": "info"}, "queue": {"min_backoff": 60}}
    values, _ = server_values(SERVER, base, override)
    form = form_of(SERVER, values)
    form["override.advanced.log_level"] = ["on"]
    assert server_patch(SERVER, form, base, override, "mx.example.test") == {
        "servers": {"mx.example.test": {"outbound": None}}}  # queue.min_backoff (not on the page) stays
    assert server_patch(SERVER, {}, base, {"outbound": {"relay_host": "x"}}, "mx") == {"servers": {"mx": None}}


def test_postscreen_stats_from_history_totals():
    totals = {"postscreen:pregreet:pass": 4.0, "postscreen:pregreet:ignore": 2.0, "postscreen:denylist:drop": 1.0,
              "postscreen:non_smtp:pass": 0.0}  # fmt: skip
    stats = postscreen_stats(totals)
    assert stats["greet"] == {"ignore": 2, "pass": 4}
    assert stats["blacklist"] == {"drop": 1}
    assert stats["non_smtp_command"] == {}


def test_every_page_field_is_a_config_key():
    cfg = defaults()
    for page in PAGES.values():
        for f in page.fields:
            node: Any = cfg
            for part in f.key.split("."):
                assert isinstance(node, dict) and part in node, f"{page.name}: {f.key}"
                node = node[part]
