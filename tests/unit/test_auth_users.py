"""The users file: parsing with line numbers, the three hash schemes, address ownership.

Hashes are made here with the libraries (cheap argon2/bcrypt parameters: verification reads
them from the hash), sha512-crypt is checked against Drepper's published vectors and, where
Python still has it, against the stdlib crypt module (glibc's crypt(3)).
"""

import os
import warnings

import argon2
import bcrypt
import pytest

from mtaserver.auth import hashes
from mtaserver.auth.users import Users, UsersFile

FAST_ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)


def argon2id(password: str) -> str:
    return FAST_ARGON2.hash(password)


def bcrypt_hash(password: str, prefix: bytes = b"2b") -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4, prefix=prefix)).decode()


# Drepper, "Unix crypt using SHA-256 and SHA-512", test vectors for SHA-512.
SHA512_VECTORS = [
    ("$6$saltstring", "Hello world!",
     "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1"),
    ("$6$rounds=10000$saltstringsaltstring", "Hello world!",
     "$6$rounds=10000$saltstringsaltst$OW1/O6BYHV6BcXZu8QVeXbDWra3Oeqh0sbHbbMCVNSnCM/UrjmM0Dp8vOuZeHBy/YTBmSK6H9qs/y3RnOaw5v."),
    ("$6$rounds=5000$toolongsaltstring", "This is just a test",
     "$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0"),
    ("$6$rounds=1400$anotherlongsaltstring",
     "a very much longer text to encrypt.  This one even stretches over morethan one line.",
     "$6$rounds=1400$anotherlongsalts$POfYwTEok97VWcjxIiSOjiykti.o/pQs.wPvMxQ6Fm7I6IoYN3CmLs66x9t0oSwbtEW7o7UmJEiDwGqd8p4ur1"),
    ("$6$rounds=77777$short", "we have a short salt string but not a short password",
     "$6$rounds=77777$short$WuQyW2YR.hBNpjjRhpYD/ifIw05xdfeEyQoMxIXbkvr0gge1a1x3yRULJ5CCaUeOxFmtlcGZelFl5CxtgfiAc0"),
    ("$6$rounds=10$roundstoolow", "the minimum number is still observed",
     "$6$rounds=1000$roundstoolow$kUMsbe306n21p9R.FRkW3IGn.S9NPN0x50YhH1xhLsPuWGsUSklZt58jaTfF4ZEQpyUNGc0dqbpBYYBaHHrsX."),
]  # fmt: skip


@pytest.mark.parametrize("setting,password,expected", SHA512_VECTORS)
def test_sha512_crypt_spec_vectors(setting, password, expected):
    assert hashes.sha512_crypt(password.encode(), setting) == expected
    assert hashes.verify(expected, password)
    assert not hashes.verify(expected, password + "x")


def test_sha512_crypt_agrees_with_the_stdlib_crypt_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        crypt = pytest.importorskip("crypt")  # gone in Python 3.13
    for n in (0, 1, 31, 63, 64, 65, 127, 200, 500):  # glibc refuses passphrases over 512 bytes
        password = os.urandom(n).hex()[:n]
        setting = crypt.mksalt(crypt.METHOD_SHA512)
        assert hashes.sha512_crypt(password.encode(), setting) == crypt.crypt(password, setting), n


def test_argon2id_verify():
    h = argon2id("pässword")
    assert hashes.scheme_of(h) == "argon2id"
    assert hashes.verify(h, "pässword")
    assert not hashes.verify(h, "password")


def test_hash_password_makes_argon2id_that_verifies():
    h = hashes.hash_password("correct horse")
    assert h.startswith("$argon2id$v=19$")
    assert hashes.verify(h, "correct horse") and not hashes.verify(h, "correct horse ")
    assert hashes.hash_password("correct horse") != h  # a fresh salt every time


@pytest.mark.parametrize("prefix", [b"2b", b"2a"])
def test_bcrypt_verify(prefix):
    h = bcrypt_hash("s3cret", prefix)
    assert hashes.scheme_of(h) == "bcrypt"
    assert hashes.verify(h, "s3cret") and not hashes.verify(h, "s3creT")


def test_bcrypt_2y_from_php_and_htpasswd():
    h = bcrypt_hash("s3cret").replace("$2b$", "$2y$", 1)
    assert hashes.scheme_of(h) == "bcrypt"
    assert hashes.verify(h, "s3cret") and not hashes.verify(h, "other")


def test_bcrypt_uses_the_first_72_bytes_like_every_implementation():
    long = "x" * 72
    h = bcrypt_hash(long)
    assert hashes.verify(h, long + "anything after byte 72")
    assert not hashes.verify(h, "x" * 71)


def test_over_long_passwords_never_match_and_never_raise():
    h = hashes.sha512_crypt(b"p" * 10, "$6$salt")
    assert not hashes.verify(h, "p" * (hashes.MAX_PASSWORD + 1))
    assert not hashes.verify(argon2id("p"), "p" * (hashes.MAX_PASSWORD + 1))


@pytest.mark.parametrize(
    "stored",
    ["$argon2id$garbage", "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$", "$2b$04$short", "$2b$99$" + "a" * 53,
     "$6$salt$tooshort", "$6$rounds=x$salt$" + "a" * 86, "", "plain"],
)  # fmt: skip
def test_malformed_hashes_fail_to_verify_without_raising(stored):
    assert not hashes.verify(stored, "anything")
    with pytest.raises(ValueError):
        hashes.scheme_of(stored)


@pytest.mark.parametrize("stored,shown", [("$1$abc$def", "$1$"), ("$5$salt$x", "$5$"), ("$argon2i$v=19$x", "$argon2i$")])
def test_unknown_schemes_are_named(stored, shown):
    with pytest.raises(ValueError, match=f"unknown password hash scheme {shown.replace('$', '[$]')}"):
        hashes.scheme_of(stored)


def test_a_plaintext_password_in_the_file_is_not_echoed():
    with pytest.raises(ValueError) as err:
        hashes.scheme_of("hunter2")
    assert "hunter2" not in str(err.value) and "hun" not in str(err.value)


def test_dummy_verify_is_false_and_does_real_work():
    assert hashes.dummy_verify("anything") is False
    assert hashes._dummy_hash().startswith("$argon2id$")  # the same scheme and cost as hash_password


# --- the file


def users_yaml() -> str:
    return f"""# the users of example.test
alice:
  password: "{argon2id('alice-pw')}"
  addresses: [alice@example.test, sales@Example.TEST]
bob:
  password: '{bcrypt_hash('bob-pw')}'
  addresses:
    - bob@example.test
    - sales@example.test
"007":
  password: "{hashes.sha512_crypt(b'bond-pw', '$6$rounds=1000$abcdefgh')}"
carol:
  password: "{argon2id('carol-pw')}"
  addresses: []
"""


@pytest.fixture(scope="module")
def users() -> Users:
    return UsersFile.parse(users_yaml())


def test_load_from_a_file(tmp_path):
    path = tmp_path / "users.yaml"
    path.write_text(users_yaml())
    loaded = UsersFile.load(path)
    assert sorted(loaded.by_login) == ["007", "alice", "bob", "carol"]
    assert len(loaded) == 4 and "alice" in loaded and "mallory" not in loaded


@pytest.mark.parametrize(
    "login,password,ok",
    [("alice", "alice-pw", True), ("alice", "bob-pw", False), ("bob", "bob-pw", True), ("bob", "Bob-pw", False),
     ("007", "bond-pw", True), ("007", "", False), ("Alice", "alice-pw", False), ("mallory", "alice-pw", False),
     ("", "", False)],
)  # fmt: skip
def test_verify_all_three_schemes(users, login, password, ok):
    assert users.verify(login, password) is ok


def test_owners_and_addresses(users):
    assert users.owners("alice@example.test") == {"alice"}
    assert users.owners("sales@example.test") == {"alice", "bob"}
    assert users.owners("sales@EXAMPLE.test.") == {"alice", "bob"}  # the domain is case-insensitive
    assert users.owners("Sales@example.test") == frozenset()  # the local part is exact
    assert users.owners("nobody@example.test") == frozenset()
    assert users.owners("") == frozenset()
    assert users.owners("not an address") == frozenset()
    assert users.addresses("alice") == ("alice@example.test", "sales@Example.TEST")
    assert users.addresses("007") == () and users.addresses("carol") == () and users.addresses("mallory") == ()


def test_owners_takes_a_parsed_mailbox(users):
    from mtaserver.address import parse_mailbox

    assert users.owners(parse_mailbox("bob@Example.Test")) == {"bob"}


def test_users_are_frozen(users):
    with pytest.raises((AttributeError, TypeError)):
        users.by_login["eve"] = users.by_login["alice"]  # type: ignore[index]
    with pytest.raises(AttributeError):
        users.by_login = {}  # type: ignore[misc]


def test_repr_shows_no_hash(users):
    assert "$argon2id$" not in repr(users.by_login["alice"])


def test_empty_file_is_no_users():
    assert len(UsersFile.parse("")) == 0
    assert len(UsersFile.parse("# nobody yet\n")) == 0


def errors_of(text: str) -> list[str]:
    with pytest.raises(ValueError) as err:
        UsersFile.parse(text)
    return str(err.value).splitlines()


GOOD = hashes.sha512_crypt(b"x", "$6$rounds=1000$salt")


@pytest.mark.parametrize(
    "text,expected",
    [
        (f"alice:\n  password: '{GOOD}'\n  adresses: [a@b.test]\n", "line 3: login 'alice': unknown key 'adresses'"),
        ("alice:\n  password: '$1$abc$def'\n", "line 2: login 'alice': unknown password hash scheme $1$"),
        ("alice:\n  password: '$6$salt$short'\n", "line 2: login 'alice': malformed sha512-crypt hash"),
        ("alice:\n  password: 12345\n", "line 2: login 'alice': password must be a hash string"),
        (f"alice:\n  password: '{GOOD}'\n  addresses: [alice]\n",
         "line 3: login 'alice': bad address 'alice': expected local@domain"),
        (f"alice:\n  password: '{GOOD}'\n  addresses:\n    - ok@example.test\n    - 'a b@example.test'\n",
         "line 5: login 'alice': bad address 'a b@example.test': bad local part"),
        (f"alice:\n  password: '{GOOD}'\n  addresses: alice@example.test\n", "line 3: login 'alice': addresses must be a list"),
        ("alice:\n  addresses: []\n", "line 2: login 'alice': password is missing"),
        ("alice: secret\n", "line 1: login 'alice': expected a mapping with password and addresses"),
        (f"alice:\n  password: '{GOOD}'\nalice:\n  password: '{GOOD}'\n", "line 3: login 'alice': duplicate"),
        (f"'al ice':\n  password: '{GOOD}'\n", "line 1: login 'al ice': no spaces or control characters allowed"),
        ("- alice\n", "line 1: expected a mapping of logins"),
        ("alice: [unclosed\n", "line 2:"),
    ],
)  # fmt: skip
def test_bad_entries_name_the_line(text, expected):
    errors = errors_of(text)
    assert any(e.startswith(expected) for e in errors), errors


def test_every_problem_is_reported_at_once():
    text = (
        f"alice:\n  password: '$1$x$y'\n"  # 1-2
        f"bob:\n  password: '{GOOD}'\n  colour: blue\n"  # 3-5
        f"carol:\n  password: '{GOOD}'\n  addresses: ['@example.test']\n"  # 6-8
    )
    errors = errors_of(text)
    assert [e.split(":")[0] for e in errors] == ["line 2", "line 5", "line 8"], errors


def test_error_messages_never_contain_the_hash():
    bad = "$6$salt$" + "a" * 10
    assert all(bad not in e for e in errors_of(f"alice:\n  password: '{bad}'\n"))
