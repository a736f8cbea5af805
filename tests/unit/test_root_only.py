"""configfile.root_only_changes: what the admin API may not change while server.user is set
(the root supervisor refuses it: admin/rootwriter.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from mtaserver.admin.configfile import ROOT_ONLY_WHY, root_only_changes
from mtaserver.config import Config, load

BASE: dict[str, Any] = {
    "server": {"hostname": "mx.example.test", "data_dir": "/srv/mta"},
    "dkim": {"sign": [{"domain": "a.test", "selector": "s1", "key": "dkim/a.test.s1.key"}]},
    "antivirus": {"definitions": {"custom_signatures": ["/etc/mta/local.ndb"]}},
}


def cfg(**changes: Any) -> Config:
    doc = copy.deepcopy(BASE)
    for dotted, value in changes.items():
        node = doc
        *parents, last = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return load("/etc/mta/mtaserver.yaml", text=yaml.safe_dump(doc))


def refused(new: Config) -> list[str]:
    return [line.split(": ", 1)[0] for line in root_only_changes(cfg(), new)]


@pytest.mark.parametrize("key", [
    "inbound__blocked_extensions", "server__limits__recipients", "postscreen__dnsbl__threshold", "outbound__mynetworks",
])  # fmt: skip
def test_settings_that_name_no_file_may_change(key):
    value = {"inbound__blocked_extensions": ["exe"], "server__limits__recipients": 3, "postscreen__dnsbl__threshold": 2,
             "outbound__mynetworks": ["10.0.0.0/8"]}[key]  # fmt: skip
    assert root_only_changes(cfg(), cfg(**{key: value})) == []


@pytest.mark.parametrize(("key", "value", "named"), [
    ("server__data_dir", "/etc", "server.data_dir"),
    ("server__user", "root", "server.user"),
    ("server__tls", {"cert": "/etc/shadow", "key": "/etc/shadow"}, "server.tls.cert"),
    ("admin__listen", "0.0.0.0:8025", "admin.listen"),
    ("admin__token_file", "/tmp/t", "admin.token_file"),
    ("advanced__log_file", "/etc/passwd", "advanced.log_file"),
    ("auth__users_file", "/etc/shadow", "auth.users_file"),
    ("domains__local_delivery", {"path": "/root"}, "domains.local_delivery.path"),
    ("outbound__relay_auth", {"password_file": "/etc/shadow"}, "outbound.relay_auth.password_file"),
    ("antivirus__definitions", {"database_dir": "/etc"}, "antivirus.definitions.database_dir"),
    ("antivirus__definitions", {"clamscan_path": "/tmp/x"}, "antivirus.definitions.clamscan_path"),
    ("postscreen__cache", {"backend": "redis", "url": "redis://127.0.0.1/0"}, "postscreen.cache.url"),
])  # fmt: skip
def test_files_identities_and_the_admin_surface_are_refused_by_name(key, value, named):
    lines = root_only_changes(cfg(), cfg(**{key: value}))
    assert named in [x.split(": ", 1)[0] for x in lines], lines
    assert all(x.endswith(ROOT_ONLY_WHY) or ROOT_ONLY_WHY + " (" in x for x in lines)


def test_a_dkim_key_elsewhere_is_refused_one_made_by_the_panel_may_be_added():
    sign = BASE["dkim"]["sign"]
    assert refused(cfg(dkim__sign=[{**sign[0], "key": "/etc/shadow"}])) == ["dkim.sign[0].key"]
    assert refused(cfg(dkim__sign=[*sign, {"domain": "b.test", "selector": "s", "key": "../../etc/x"}])) == ["dkim.sign[1].key"]
    assert refused(cfg(dkim__sign=[*sign, {"domain": "b.test", "selector": "s", "key": "dkim/b.test.s.key"}])) == []
    assert refused(cfg(dkim__sign=[])) == []  # removing one is no new file
    assert refused(cfg(dkim__sign=[{**sign[0], "selector": "s2"}])) == []


def test_custom_signatures_only_local_files_are_refused():
    assert refused(cfg(antivirus__definitions={"custom_signatures": ["/etc/mta/local.ndb", "https://sigs.test/x.ndb"]})) == []
    assert refused(cfg(antivirus__definitions={"custom_signatures": []})) == []
    local = refused(cfg(antivirus__definitions={"custom_signatures": ["/etc/mta/other.ndb"]}))
    assert local == ["antivirus.definitions.custom_signatures"]


def test_per_node_overrides_are_checked_for_every_node():
    lines = refused(cfg(servers={"other.test": {"server": {"data_dir": "/etc"}, "inbound": {"blocked_extensions": ["exe"]}},
                                 "mx.example.test": {"advanced": {"log_file": "/etc/x", "log_target": "file"}}}))  # fmt: skip
    assert sorted(lines) == ["advanced.log_file", "advanced.log_target", "servers.mx.example.test.advanced.log_file",
                             "servers.mx.example.test.advanced.log_target", "servers.other.test.server.data_dir"]  # fmt: skip
