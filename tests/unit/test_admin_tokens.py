"""Admin API tokens (parsing, roles, the constant-time lookup, the bearer header) and the audit
line format: pure, no files, no sockets."""

from __future__ import annotations

import json

import pytest

from mtaserver.admin.audit import format_line
from mtaserver.admin.tokens import (
    MIN_TOKEN_LENGTH,
    Role,
    TokenFileError,
    bearer,
    find_token,
    initial_file_text,
    new_secret,
    parse_tokens,
)

A = "a" * 24
O = "o" * 24
R = "r" * 24


def test_parse_roles_names_comments_and_blank_lines():
    text = f"# tokens\n\nadmin {A} alice\n  operator {O}   # the on-call, unnamed\nread {R} grafana\n"
    tokens = parse_tokens(text, "admin.token")
    assert [(t.role, t.secret, t.name) for t in tokens] == [
        (Role.ADMIN, A, "alice"), (Role.OPERATOR, O, "line4"), (Role.READ, R, "grafana"),
    ]  # fmt: skip


def test_roles_are_ordered():
    assert Role.READ < Role.OPERATOR < Role.ADMIN


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("admin", "expected '<role> <token> [name]'"),
        (f"admin {A} name extra", "expected '<role> <token> [name]'"),
        (f"root {A}", "unknown role 'root' (read, operator or admin)"),
        (f"Admin {A}", "unknown role 'Admin' (read, operator or admin)"),
        ("admin short", f"the token must be at least {MIN_TOKEN_LENGTH} characters"),
        ("admin " + "x" * 20 + "\u00e9", f"the token must be at least {MIN_TOKEN_LENGTH} characters"),
        (f"admin {A} bad|name", "the name must be 1..64 characters"),
    ],
)
def test_a_bad_line_is_an_error_naming_file_and_line(line, message):
    with pytest.raises(TokenFileError) as exc:
        parse_tokens(f"# first\n{line}\n", "/var/admin.token")
    assert len(exc.value.errors) == 1
    assert exc.value.errors[0].startswith(f"/var/admin.token:2: {message}")


def test_every_bad_line_is_reported_and_no_token_is_in_a_message():
    secret = "s" * 30
    with pytest.raises(TokenFileError) as exc:
        parse_tokens(f"superuser {secret}\nadmin {A} x\nread {A} y\nread {R} x\n", "f")
    assert [e.split(": ", 1)[0] for e in exc.value.errors] == ["f:1", "f:3", "f:4"]
    assert "the same token is on an earlier line" in exc.value.errors[1]
    assert "the name 'x' is on an earlier line" in exc.value.errors[2]
    assert not any(secret in e or A in e for e in exc.value.errors)


def test_token_repr_hides_the_secret():
    (t,) = parse_tokens(f"admin {A} alice", "f")
    assert A not in repr(t) and "alice" in repr(t)


def test_find_token():
    tokens = parse_tokens(f"admin {A} alice\nread {R} bob\n", "f")
    assert find_token(tokens, A).name == "alice"
    assert find_token(tokens, R).name == "bob"
    for wrong in ("", A[:-1], A + "a", R.upper(), "\udcff" * 24, "é" * 24):
        assert find_token(tokens, wrong) is None
    assert find_token([], A) is None


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (f"Bearer {A}", A),
        (f"bearer {A}", A),
        (f"  Bearer   {A}  ", A),
        (f"Basic {A}", None),
        ("Bearer", None),
        ("Bearer ", None),
        (f"Bearer {A} {R}", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_header(header, token):
    assert bearer(header) == token


def test_the_initial_file_parses_to_one_admin_token():
    secret = new_secret()
    assert len(secret) >= 43 and secret != new_secret()
    (t,) = parse_tokens(initial_file_text(secret), "f")
    assert (t.role, t.secret, t.name) == (Role.ADMIN, secret, "initial")


# ---------------------------------------------------------------------------------------------
# Audit lines.


def test_audit_line():
    selector, result = {"ids": ["A"], "all": False}, {"status": 200, "count": 1}
    line = format_line(1796168715.567, "alice", "127.0.0.1", "queue.hold", selector, result)
    assert line == '2026-12-01T23:45:15.567Z alice 127.0.0.1 queue.hold {"all":false,"ids":["A"]} {"count":1,"status":200}\n'


def test_audit_line_stays_one_line_whatever_the_client_sent():
    selector = {"from": "x@y\n2026-01-01T00:00:00.000Z admin 1.2.3.4 config.put", "to": "a b\r\u2028c"}
    line = format_line(0.0, "na me\n", "::1", "queue.delete", selector, None)
    assert line.count("\n") == 1 and line.endswith("\n") and "\r" not in line and "\u2028" not in line
    t, name, ip, action, rest = line.rstrip("\n").split(" ", 4)
    assert (t, name, ip, action) == ("1970-01-01T00:00:00.000Z", "na?me?", "::1", "queue.delete")
    sel, end = json.JSONDecoder().raw_decode(rest)
    assert sel == selector and json.loads(rest[end:]) is None
