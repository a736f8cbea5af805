import pytest

from mtaserver.address import AddressError, parse_mailbox, parse_params, parse_path


@pytest.mark.parametrize(
    "arg, local, domain, routed",
    [
        ("FROM:<a@example.test>", "a", "example.test", False),
        ("FROM: <a@example.test>", "a", "example.test", False),  # Postfix tolerates the space
        ("FROM:a@example.test", "a", "example.test", False),  # and missing brackets
        ("from:<A.B+c@Example.Test>", "A.B+c", "Example.Test", False),
        ("FROM:<>", "", "", False),
        ('FROM:<"john doe"@example.test>', '"john doe"', "example.test", False),
        ("FROM:<u@[192.0.2.1]>", "u", "[192.0.2.1]", False),
        ("FROM:<u@[IPv6:2001:db8::1]>", "u", "[IPv6:2001:db8::1]", False),
        ("FROM:<user%remote.test@example.test>", "user%remote.test", "example.test", True),
        ("FROM:<remote.test!user@example.test>", "remote.test!user", "example.test", True),
        ("FROM:<@a.test,@b.test:user@example.test>", "user", "example.test", True),
        ('FROM:<"user@remote.test"@example.test>', '"user@remote.test"', "example.test", True),
        ("FROM:<user>", "user", "", False),
    ],
)
def test_parses_paths(arg, local, domain, routed):
    mb, params = parse_path(arg, "FROM", utf8_allowed=False)
    assert (mb.local, mb.domain, mb.routed) == (local, domain, routed)
    assert params == {}


@pytest.mark.parametrize(
    "arg",
    [
        "FROM<a@b.test>",
        "TO:<a@b.test>",
        "FROM:<a@b.test",
        "FROM:a@b.test>",
        "FROM:<<a@b.test>>",
        "FROM:<a@@b.test>",
        "FROM:<a@b@c.test>",
        "FROM:<@b.test>",
        "FROM:<a@-b.test>",
        "FROM:<a@b_c.test>",
        "FROM:<a..@[1.2.3]>",
        "FROM:<a@[300.1.1.1]>",
        "FROM:<a b@c.test>",
        'FROM:<"unterminated@c.test>',
        "FROM:<a@c.test>junk",
        "FROM:<a\x00@c.test>",
        "FROM:<" + "a" * 250 + "@c.test>",
        "FROM:<ü@c.test>",  # UTF-8 without SMTPUTF8 offered
    ],
)
def test_refuses_bad_paths(arg):
    with pytest.raises(AddressError):
        parse_path(arg, "FROM", utf8_allowed=False)


def test_utf8_when_allowed():
    mb, params = parse_path("FROM:<jörg@bücher.test> SMTPUTF8", "FROM", utf8_allowed=True)
    assert mb.local == "jörg" and mb.domain == "bücher.test"
    assert params == {"SMTPUTF8": None}


def test_params():
    assert parse_params(" SIZE=100  body=8BITMIME SMTPUTF8") == {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": None}
    for bad in ("SIZE=", "=1", "SI ZE=1=2x=", "K=v=w", "-X=1"):
        with pytest.raises(AddressError):
            parse_params(bad)


def test_domain_key_normalizes_case_and_trailing_dot():
    assert parse_mailbox("u@Example.TEST.").domain_key == "example.test"
