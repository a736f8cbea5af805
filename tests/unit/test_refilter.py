"""strip_ours: what the chain added at the end of DATA (as Envelope.extra recorded it) comes off
before a requeue runs the message through the chain again; nothing else does."""

from mtaserver.filters.refilter import received_end, strip_ours

RECEIVED = b"Received: from c (c [192.0.2.1])\r\n\tby mx.example.test (mtaserver) with ESMTP id X; date\r\n"
CLIENT = b"From: a@example.org\r\nSubject: [SPAM] offer\r\nX-Spam-Flag: client's own\r\n\r\nbody\r\nX-Spam-Flag: YES\r\n"
OURS = (b"Authentication-Results: mx.example.test; dkim=none\r\nX-Spam-Flag: YES\r\nX-Spam-Score: 7.0\r\n"
        b"X-Spam-Level: *******\r\nX-Spam-Status: Yes, score=7.0\r\n\ttests=[A]\r\nX-Originating-IP: [192.0.2.1]\r\n")  # fmt: skip
SIG = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test;\r\n\tb=abc\r\n"


def test_strips_exactly_what_was_recorded():
    out = strip_ours(SIG + RECEIVED + OURS + CLIENT, fields=6, tag="[SPAM]", signatures=1)
    assert out == RECEIVED + b"From: a@example.org\r\nSubject: offer\r\nX-Spam-Flag: client's own\r\n\r\nbody\r\nX-Spam-Flag: YES\r\n"
    assert strip_ours(out, 0, "", 0) == out, "nothing recorded, nothing taken"


def test_a_client_header_of_our_names_below_ours_stays():
    client_ar = b"Authentication-Results: mx.example.test; dkim=pass\r\n"
    content = RECEIVED + b"X-Spam-Flag: YES\r\n" + client_ar + b"\r\nbody\r\n"
    assert strip_ours(content, fields=1, tag="", signatures=0) == RECEIVED + client_ar + b"\r\nbody\r\n"


def test_the_tag_only_when_recorded_and_non_ascii_tags():
    content = RECEIVED + b"Subject: [SPAM] real subject\r\n\r\n"
    assert strip_ours(content, 0, "", 0) == content, "a subject that begins like the tag is the client's"
    encoded = RECEIVED + b"Subject: =?utf-8?b?W1NQQU3DiV0=?= x\r\n\r\n"
    assert strip_ours(encoded, 0, "[SPAMÉ]", 0) == RECEIVED + b"Subject: x\r\n\r\n"


def test_not_ours_to_edit():
    weird = b"From: a@example.org\r\nX-Spam-Flag: YES\r\n\r\n"
    assert strip_ours(weird, 1, "[SPAM]", 0) == weird, "without our Received: on top it is not ours to edit"


def test_received_end():
    assert received_end(RECEIVED + CLIENT) == len(RECEIVED)
    assert received_end(CLIENT) == 0
