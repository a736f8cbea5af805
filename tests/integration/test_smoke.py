import smtplib


def test_trusted_client_queues_a_message(mta):
    with smtplib.SMTP("127.0.0.1", mta.port, source_address=("127.0.0.1", 0)) as c:
        c.ehlo("client.test")
        refused = c.sendmail("s@client.test", ["a@example.test"], b"Subject: hi\r\n\r\nbody\r\n")
    assert refused == {}
    [qid] = mta.queued()
    body = mta.body(qid)
    assert body.startswith(b"Received: from client.test (unknown [127.0.0.1])")
    assert body.endswith(b"Subject: hi\r\n\r\nbody\r\n")
    assert f"{qid}: from=<s@client.test>, size=" in mta.log()
