"""Live configuration's pure parts: JSON merge patch, error text, indentation, and the ruamel
round trip that edits only the keys named (comments kept). No files, no sockets."""

from __future__ import annotations

import pytest
import yaml

from mtaserver.admin.configfile import (
    DocumentError,
    apply_patch,
    guess_indent,
    load_document,
    merge_patch,
    parse_body,
    render,
    strip_location,
    sync,
)

FILE = """\
# top comment
server:
  hostname: mx.example.test        # the name
  workers: 1
  listeners:
    - {name: smtp, address: "127.0.0.1:25"}   # the port
  tls: {cert: null, key: null}
inbound:
  blocked_extensions: []           # none yet
  bare_newline: reject             # smuggling
outbound:
  mynetworks: ["127.0.0.0/8"]      # trusted
"""


# RFC 7396 appendix A, the examples that apply to objects
@pytest.mark.parametrize(
    ("target", "patch", "result"),
    [
        ({"a": "b"}, {"a": "c"}, {"a": "c"}),
        ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
        ({"a": "b"}, {"a": None}, {}),
        ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
        ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
        ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
        ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
        ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
        ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
        ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
    ],
)
def test_merge_patch(target, patch, result):
    assert merge_patch(target, patch) == result


def test_merge_patch_does_not_change_its_input():
    target = {"a": {"b": 1}}
    merge_patch(target, {"a": {"b": 2}})
    assert target == {"a": {"b": 1}}


def test_strip_location():
    assert strip_location("/etc/m.yaml:12: server.workers: bad", "/etc/m.yaml") == "server.workers: bad"
    assert strip_location("other: x", "/etc/m.yaml") == "other: x"


@pytest.mark.parametrize(
    ("text", "indent"),
    [
        (FILE, (2, 4, 2)),
        (yaml.safe_dump({"a": {"b": [1, 2], "c": {"d": 1}}}), (2, 2, 0)),
        ("a:\n    b: 1\n    c:\n      - x\n", (4, 4, 2)),
        ("", (2, 2, 0)),
    ],
)
def test_guess_indent(text, indent):
    assert guess_indent(text) == indent


def test_patch_edits_only_the_keys_named():
    doc = load_document(FILE)
    apply_patch(doc, {"server": {"workers": 2, "limits": {"recipients": 5}}, "inbound": {"bare_newline": "normalize"}})
    out = render(doc, FILE)
    expected = (
        FILE.replace("  workers: 1\n", "  workers: 2\n")
        .replace("  tls: {cert: null, key: null}\n", "  tls: {cert: null, key: null}\n  limits:\n    recipients: 5\n")
        .replace("bare_newline: reject             # smuggling", "bare_newline: normalize          # smuggling")
    )
    assert out == expected


def test_patch_null_removes_and_lists_keep_their_style():
    doc = load_document(FILE)
    apply_patch(doc, {"server": {"tls": None}, "inbound": {"blocked_extensions": ["exe", "on", "yes", "1e3"]},
                      "outbound": {"mynetworks": ["127.0.0.0/8", "10.0.0.0/8"]}})  # fmt: skip
    out = render(doc, FILE)
    assert "tls" not in out
    assert 'blocked_extensions: [exe, "on", "yes", \'1e3\'] # none yet' in out  # ruamel quotes 1e3 itself
    assert 'mynetworks: ["127.0.0.0/8", "10.0.0.0/8"] # trusted' in out
    data = yaml.safe_load(out)  # what the server's loader (PyYAML, YAML 1.1) reads
    assert data["inbound"]["blocked_extensions"] == ["exe", "on", "yes", "1e3"]
    assert data["server"]["listeners"] == [{"name": "smtp", "address": "127.0.0.1:25"}]


def test_sync_touches_only_what_differs():
    doc = load_document(FILE)
    new = yaml.safe_load(FILE)
    new["server"]["hostname"] = "mx2.example.test"
    del new["outbound"]
    new["queue"] = {"manager": False}
    sync(doc, new)
    out = render(doc, FILE)
    assert yaml.safe_load(out) == new
    assert "# the name" in out and "# the port" in out and "# none yet" in out and "# top comment" in out
    assert "trusted" not in out


def test_sync_of_the_same_data_changes_nothing():
    doc = load_document(FILE)
    sync(doc, yaml.safe_load(FILE))
    assert render(doc, FILE) == FILE


def test_null_is_written_as_null():
    doc = load_document("a: 1\n")
    apply_patch(doc, {"b": {"c": [None, 1]}})
    assert yaml.safe_load(render(doc, "a: 1\n")) == {"a": 1, "b": {"c": [None, 1]}}
    assert "null" in render(doc, "a: 1\n")


def test_parse_body_errors():
    assert parse_body(b'{"a": 1}') == {"a": 1}
    assert parse_body(b"a: 1\n") == {"a": 1}
    with pytest.raises(DocumentError) as exc:
        parse_body(b"a: [1\n")
    assert exc.value.errors[0].startswith("(document): does not parse (line 2)")
    with pytest.raises(DocumentError):
        parse_body(b"\xff\xfe")
    with pytest.raises(DocumentError) as exc:
        load_document("a: [1\n")
    assert exc.value.errors[0].startswith("(file): the current file does not parse")
