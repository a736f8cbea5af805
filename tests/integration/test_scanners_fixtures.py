"""The spamd and clamd fixtures (tests/integration/scanners.py) answer their raw protocols:
GTUBE is spam, a plain message is not; the test virus is found raw, in a text body and in a
base64 attachment, and a clean message passes."""

from __future__ import annotations

import pytest
from scanners import (  # noqa: F401  (the fixtures spamd and clamd)
    GTUBE,
    VIRUS_FOUND,
    VIRUS_PAYLOAD,
    clamd_fixture,
    clamd_instream,
    message,
    message_with_attachment,
    spam_score,
    spamd_fixture,
    spamd_request,
)

pytestmark = pytest.mark.integration

CLEAN_TEXT = "Hello Bob,\r\n" + "Let us meet tomorrow at ten to discuss the quarterly report.\r\n" * 16


def test_spamd_scores_gtube_as_spam(spamd):
    msg = message(GTUBE + "\r\n" + CLEAN_TEXT)
    status, headers, body = spamd_request(spamd.address, "SYMBOLS", msg)
    assert status == b"SPAMD/1.1 0 EX_OK", (status, headers, body)
    spam, score, threshold = spam_score(headers)
    assert spam and score >= 1000 and threshold == 5.0, headers
    assert "GTUBE" in body.decode().split(","), body
    status, headers, body = spamd_request(spamd.address, "CHECK", msg)
    assert status == b"SPAMD/1.1 0 EX_OK" and headers["Spam"] == "True ; 1000.0 / 5.0" and body == b""


def test_spamd_passes_a_plain_message(spamd):
    status, headers, body = spamd_request(spamd.address, "SYMBOLS", message(CLEAN_TEXT))
    assert status == b"SPAMD/1.1 0 EX_OK", (status, headers, body)
    spam, score, _ = spam_score(headers)
    assert not spam and score < 5.0, headers
    assert b"GTUBE" not in body


@pytest.mark.parametrize(
    "data",
    [VIRUS_PAYLOAD, message("Hello Bob,\r\n" + VIRUS_PAYLOAD.decode() + "\r\n"), message_with_attachment(VIRUS_PAYLOAD),
     message_with_attachment(b"\x00" * 100 + VIRUS_PAYLOAD + b"\xff" * 300)],
    ids=["raw", "text-body", "attachment", "inside-an-attachment"],
)  # fmt: skip
def test_clamd_finds_the_test_virus(clamd, data):
    assert clamd_instream(clamd.address, data, chunk=100) == VIRUS_FOUND


def test_the_attachment_carries_the_payload_only_in_base64():
    assert VIRUS_PAYLOAD not in message_with_attachment(VIRUS_PAYLOAD)


@pytest.mark.parametrize(
    "data", [message(CLEAN_TEXT), message_with_attachment(b"just some harmless bytes " * 40)], ids=["text", "attachment"]
)
def test_clamd_passes_a_clean_message(clamd, data):
    assert clamd_instream(clamd.address, data) == b"stream: OK"
