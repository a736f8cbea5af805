"""The domains.mailboxes file (policy/mailboxes.py): parsing, matching, alias expansion, loops."""

from __future__ import annotations

import pytest

from mtaserver.address import parse_mailbox
from mtaserver.policy.mailboxes import MAX_DEPTH, MailboxesError, load_mailboxes, parse_mailboxes

EXAMPLE = """\
# CONFIG.md's example
alice@example.test                                  # a mailbox: mail for it is delivered
bob@example.test
sales@example.test   alice@example.test, bob@example.test   # an alias: delivered to each target instead
postmaster@example.test  alice@example.test
team@example.test    sales@example.test,postmaster@example.test  carol@remote.test
"""


def test_config_example():
    mb = parse_mailboxes(EXAMPLE)
    assert len(mb) == 5
    assert mb.exists("alice@example.test") and mb.exists("sales@example.test")
    assert not mb.exists("carol@example.test") and not mb.exists("carol@remote.test")
    assert mb.expand("alice@example.test") == ["alice@example.test"]
    assert mb.expand("sales@example.test") == ["alice@example.test", "bob@example.test"]
    assert mb.expand("team@example.test") == ["alice@example.test", "bob@example.test", "carol@remote.test"]  # deduplicated
    assert mb.expand("stranger@remote.test") == ["stranger@remote.test"]
    assert mb.is_alias("sales@example.test") and not mb.is_alias("alice@example.test")


def test_domain_matches_case_insensitively_local_part_exactly():
    mb = parse_mailboxes("Alice@Example.TEST\n")
    assert mb.exists("Alice@example.test") and mb.exists("Alice@EXAMPLE.test.")
    assert mb.exists(parse_mailbox("Alice@example.Test"))
    assert not mb.exists("alice@example.test")
    assert not mb.exists("Alice") and not mb.exists("")


def test_comments_blank_lines_and_continuations():
    text = "\n  \n# only a comment\nlist@example.test  a@example.test,\n    b@example.test  # more\n\tc@remote.test\n"
    mb = parse_mailboxes(text + "a#b@example.test\n")
    assert mb.expand("list@example.test") == ["a@example.test", "b@example.test", "c@remote.test"]
    assert mb.exists("a#b@example.test")  # '#' inside an address is no comment


def test_self_reference_keeps_the_own_mailbox():
    mb = parse_mailboxes("alice@example.test alice@example.test, archive@example.test\narchive@example.test\n")
    assert mb.expand("alice@example.test") == ["alice@example.test", "archive@example.test"]


def test_depth_limit():
    chain = [f"a{i}@example.test" for i in range(MAX_DEPTH + 1)]
    ok = "\n".join(f"{chain[i]} {chain[i + 1]}" for i in range(MAX_DEPTH)) + "\n"  # 10 alias levels
    assert parse_mailboxes(ok).expand(chain[0]) == [chain[MAX_DEPTH]]
    deep = ok + f"a{MAX_DEPTH}@example.test end@example.test\n"  # 11 levels
    with pytest.raises(MailboxesError, match=r"^line 1: aliases nest deeper than 10 levels"):
        parse_mailboxes(deep)


def test_depth_limit_holds_when_the_deep_part_was_expanded_first():
    # b1..b8 (8 levels) is expanded before the entries that reach it from 4 levels up
    text = "".join(f"b{i}@x.test b{i + 1}@x.test\n" for i in range(1, 9))
    ok = text + "a3@x.test b1@x.test\n"
    assert parse_mailboxes(ok).expand("a3@x.test") == ["b9@x.test"]
    deep = text + "a1@x.test a2@x.test\na2@x.test a3@x.test\na3@x.test b1@x.test\n"
    with pytest.raises(MailboxesError, match="nest deeper than 10"):
        parse_mailboxes(deep)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a@x.test b@x.test\nb@x.test a@x.test\n", r"^line \d: alias loop: "),
        ("a@x.test b@x.test\nb@x.test c@x.test\nc@x.test a@x.test\n", "alias loop: a@x.test -> b@x.test -> c@x.test -> a@x.test"),
        ("ok@x.test\nnot an address\n", r"^line 2: address 'not' has no domain"),
        ("a@x.test\nb@x.test\na@X.TEST\n", r"^line 3: a@X.TEST is listed twice \(first on line 1\)"),
        ("alias@x.test good@x.test, bad\n", r"^line 1: alias target 'bad' has no domain"),
        ("alias@x.test <bad>@x.test\n", r"^line 1: alias target '<bad>@x.test' is not an address"),
        ("user\n", r"^line 1: address 'user' has no domain"),
        ("@x.test catchall@x.test\n", r"^line 1: '@x.test': catch-all entries"),
        ("  leading@x.test\n", r"^line 1: continuation line without an entry"),
    ],
)
def test_errors_name_the_line(text, message):
    with pytest.raises(MailboxesError, match=message):
        parse_mailboxes(text)


def test_empty_file_lists_nobody():
    mb = parse_mailboxes("# nobody yet\n")
    assert len(mb) == 0 and not mb.exists("a@example.test")


def test_load_from_a_path(tmp_path):
    p = tmp_path / "mailboxes"
    p.write_text(EXAMPLE)
    assert load_mailboxes(p).exists("bob@example.test")
    p.write_text("a@x.test b@x.test\nb@x.test a@x.test\n")
    with pytest.raises(MailboxesError, match=rf"^{p}: line \d: alias loop"):
        load_mailboxes(str(p))
    with pytest.raises(MailboxesError, match="cannot read"):
        load_mailboxes(tmp_path / "missing")
