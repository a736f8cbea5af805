"""strip_ours: what the chain added at the end of DATA comes off before a requeue runs it again."""

from mtaserver.filters.refilter import received_end, strip_ours

RECEIVED = b"Received: from c (c [192.0.2.1])\r\n\tby mx.example.test (mtaserver) with ESMTP id X; date\r\n"
CLIENT = b"From: a@example.org\r\nSubject: [SPAM] offer\r\nX-Spam-Flag: client's own\r\n\r\nbody\r\nX-Spam-Flag: YES\r\n"


def test_strips_our_signature_our_block_and_the_tag_only():
    ours = (b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test;\r\n\tb=abc\r\n" + RECEIVED
            + b"Authentication-Results: mx.example.test; dkim=none\r\nX-Spam-Flag: YES\r\nX-Spam-Score: 7.0\r\n"
            + b"X-Spam-Level: *******\r\nX-Spam-Status: Yes, score=7.0\r\n\ttests=[A]\r\nX-Originating-IP: [192.0.2.1]\r\n")  # fmt: skip
    out = strip_ours(ours + CLIENT, "[SPAM]")
    assert out == RECEIVED + b"From: a@example.org\r\nSubject: offer\r\nX-Spam-Flag: client's own\r\n\r\nbody\r\nX-Spam-Flag: YES\r\n"
    assert strip_ours(out, "[SPAM]") == out, "twice is once"


def test_nothing_of_ours_nothing_changes():
    assert strip_ours(RECEIVED + b"From: a@example.org\r\n\r\nbody\r\n", "[SPAM]") == RECEIVED + b"From: a@example.org\r\n\r\nbody\r\n"
    assert strip_ours(RECEIVED + b"\r\nbody\r\n", "") == RECEIVED + b"\r\nbody\r\n"
    weird = b"From: a@example.org\r\nX-Spam-Flag: YES\r\n\r\n"
    assert strip_ours(weird, "[SPAM]") == weird, "without our Received: on top it is not ours to edit"


def test_received_end():
    assert received_end(RECEIVED + CLIENT) == len(RECEIVED)
    assert received_end(CLIENT) == 0
