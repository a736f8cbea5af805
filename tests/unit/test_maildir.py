"""Maildir delivery writes what mail readers expect: Return-Path and Delivered-To on top, LF line
endings, UTF-8 local parts as UTF-8 directory names, tmp/ -> new/ under unique names."""

from __future__ import annotations

import os

import pytest

from mtaserver.delivery.maildir import deliver, mailbox_dir, to_lf, trace_headers, unique_name

BODY = b"Received: from x\r\nSubject: hi\r\n\r\nline one\r\nbare\rcr\r\n.dot\r\n"


class Pieces:
    """The queue manager's content reader: chunks() yields pieces (here split inside every CRLF)."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size = data, size

    def chunks(self):
        for i in range(0, len(self.data), self.size):
            yield self.data[i : i + self.size]


def stored(root, address):
    new = mailbox_dir(root, address) / "new"
    [name] = os.listdir(new)
    return (new / name).read_bytes()


@pytest.mark.parametrize("body", [BODY, Pieces(BODY, 1), Pieces(BODY, 2), Pieces(BODY, 7)], ids=["bytes", "1", "2", "7"])
def test_return_path_delivered_to_and_lf_endings(tmp_path, body):
    deliver(tmp_path, "user@example.test", body, "s@client.test")
    msg = stored(tmp_path, "user@example.test")
    assert msg == (b"Return-Path: <s@client.test>\nDelivered-To: user@example.test\n"
                   b"Received: from x\nSubject: hi\n\nline one\nbare\rcr\n.dot\n")  # fmt: skip
    assert os.listdir(mailbox_dir(tmp_path, "user@example.test") / "tmp") == []
    assert sorted(os.listdir(mailbox_dir(tmp_path, "user@example.test"))) == ["cur", "new", "tmp"]


def test_null_sender_and_no_header_injection():
    assert trace_headers("", "u@example.test") == b"Return-Path: <>\nDelivered-To: u@example.test\n"
    assert trace_headers("a\r\nX-Evil: 1@x", "u\n@example.test") == b"Return-Path: <aX-Evil: 1@x>\nDelivered-To: u@example.test\n"


def test_utf8_local_part_is_a_utf8_directory(tmp_path):
    address = "jos\u00e9.m\u00fcller@b\u00fccher.example"
    deliver(tmp_path, address, b"Subject: x\r\n\r\nbody\r\n", "s@client.test")
    assert (tmp_path / "b\u00fccher.example" / "jos\u00e9.m\u00fcller" / "new").is_dir()
    assert "%" not in "".join(os.listdir(tmp_path)) + "".join(os.listdir(tmp_path / "b\u00fccher.example"))
    assert b"Delivered-To: " + address.encode() + b"\n" in stored(tmp_path, address)


@pytest.mark.parametrize(("local", "expect"), [
    ("../etc", "%2E.%2Fetc"), ("a/b", "a%2Fb"), ("nul\x00", "nul%00"), (".hidden", "%2Ehidden"),
    ("rtl\u202eexe", "rtl%E2%80%AEexe"), ("bad\udcff", "bad%FF"), ("line\u2028sep", "line%E2%80%A8sep"), ("", "%00"),
])  # fmt: skip
def test_unsafe_names_are_escaped_inside_the_root(tmp_path, local, expect):
    box = mailbox_dir(tmp_path, f"{local}@example.test")
    assert box == tmp_path / "example.test" / expect
    assert box.resolve().is_relative_to(tmp_path.resolve())


def test_unique_names():
    assert unique_name(1795600000.25, 42, 7, "mx/1:a") == "1795600000.M250000P42Q7.mx\\0571\\072a"


def test_each_delivery_is_its_own_file(tmp_path):
    names = {deliver(tmp_path, "u@example.test", b"x\r\n", "s@t.test") for _ in range(5)}
    assert len(names) == 5 and sorted(os.listdir(mailbox_dir(tmp_path, "u@example.test") / "new")) == sorted(names)


@pytest.mark.parametrize("split", range(1, 9))
def test_to_lf_across_pieces(split):
    data = b"\r\n\r\r\n\n\rx\r\r\n" * 3 + b"\r"
    pieces = [data[i : i + split] for i in range(0, len(data), split)]
    assert b"".join(to_lf(pieces)) == data.replace(b"\r\n", b"\n")
