"""The sans-IO SMTP engine: bytes in, events and replies out; no sockets, no event loop.

Every script is also fed split at every byte (and one byte at a time), and must give the same
replies and events as when fed whole: the engine may not depend on how TCP cuts the stream.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from mtaserver import model as R
from mtaserver.datastream import BareNewline
from mtaserver.model import CONTINUE, Reply, Verdict
from mtaserver.smtp import engine as E

HOST = "mx.example.test"


def settings(**kw) -> E.Settings:
    base = dict(hostname=HOST, error_sleep=0.0, auth_mechanisms=("PLAIN", "LOGIN"))
    base.update(kw)
    return E.Settings(**base)


Resolver = Callable[[E.Engine, E.Event], None]


def default_resolver(engine: E.Engine, ev: E.Event) -> None:
    """What a permissive shell does with each event: accept everything."""
    match ev:
        case E.Helo() | E.Mail() | E.Rcpt():
            engine.resolve(CONTINUE)
        case E.Data():
            engine.data_started()
        case E.StartTls():
            engine.tls_started()
        case E.AuthLogin():
            ok = (ev.login, ev.password) == ("alice", "secret")
            engine.auth_done(ev.login if ok else None, R.AUTH_OK if ok else R.AUTH_FAILED)
        case E.Observe():
            engine.observed(True)


def run(engine: E.Engine, pieces: list[bytes], resolver: Resolver = default_resolver) -> tuple[bytes, list[str]]:
    """Feed `pieces` one after another, handling every event; the replies and event names."""
    out = b""
    events: list[str] = []
    for piece in pieces:
        engine.feed(piece)
        while (ev := engine.next_event()) is not None:
            events.append(type(ev).__name__)
            resolver(engine, ev)
            if isinstance(ev, E.Data):
                return out + engine.take_output(), events  # the shell streams DATA from here
        out += engine.take_output()
    return out, events


def splits(data: bytes) -> list[list[bytes]]:
    """The script whole, one byte at a time, and cut once at every position."""
    ways = [[data], [data[i : i + 1] for i in range(len(data))]]
    ways += [[data[:i], data[i:]] for i in range(1, len(data))]
    return ways


def same_at_every_split(make: Callable[[], E.Engine], script: bytes, resolver: Resolver = default_resolver) -> tuple[bytes, list[str]]:
    expected = run(make(), [script], resolver)
    for pieces in splits(script):
        assert run(make(), pieces, resolver) == expected, pieces
    return expected


def codes(out: bytes) -> list[str]:
    """The last line of each reply: '250 2.1.0 Ok' ..."""
    return [line for line in out.decode().split("\r\n") if line and line[3:4] == " "]


# -- the basic transaction ------------------------------------------------------------------------


def test_a_transaction_is_the_same_at_every_split():
    script = b"EHLO client.test\r\nMAIL FROM:<s@client.test>\r\nRCPT TO:<a@example.test>\r\nDATA\r\n"
    out, events = same_at_every_split(lambda: E.Engine(settings()), script)
    assert events == ["Helo", "Mail", "Rcpt", "Data"]
    lines = out.decode().split("\r\n")
    assert lines[0] == f"250-{HOST}"
    assert "250-PIPELINING" in lines and "250-SIZE 10240000" in lines and "250-SMTPUTF8" in lines and "250 CHUNKING" in lines
    assert codes(out)[1:] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]


def test_the_tx_after_data_done_and_the_stats():
    e = E.Engine(settings())
    run(e, [b"HELO c.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"])
    assert e.tx is not None and [str(r) for r in e.tx.recipients] == ["a@example.test", "b@example.test"]
    e.data_done(Reply(250, "2.0.0", "Ok: queued as X"))
    assert e.tx is None
    out, events = run(e, [b"QUIT\r\n"])
    assert codes(out)[-2:] == ["250 2.0.0 Ok: queued as X", "221 2.0.0 Bye"]
    assert events == ["Quit"] and e.closed
    assert e.stats() == " helo=1 mail=1 rcpt=2 data=1 quit=1 commands=6"


def test_hook_verdicts_are_the_replies_and_count_as_failures():
    def refuse_rcpt(engine: E.Engine, ev: E.Event) -> None:
        if isinstance(ev, E.Rcpt):
            engine.resolve(Verdict.reject(Reply(554, "5.7.1", f"<{ev.recipient}>: Relay access denied")))
        else:
            default_resolver(engine, ev)

    e = E.Engine(settings())
    out, _ = run(e, [b"EHLO c\r\nMAIL FROM:<s@c.test>\r\nRCPT TO:<u@remote.test>\r\nDATA\r\n"], refuse_rcpt)
    assert codes(out)[-2:] == ["554 5.7.1 <u@remote.test>: Relay access denied", "503 5.5.1 Error: need RCPT command"]
    assert "rcpt=0/1" in e.stats() and "data=0/1" in e.stats()


@pytest.mark.parametrize(
    ("script", "reply"),
    [
        (b"MAIL FROM:<a@b.test>\r\n", "503 5.5.1 Error: send HELO/EHLO first"),
        (b"HELO c\r\nRCPT TO:<a@b.test>\r\n", "503 5.5.1 Error: need MAIL command"),
        (b"HELO c\r\nMAIL FROM:<a@b.test>\r\nDATA\r\n", "503 5.5.1 Error: need RCPT command"),
        (b"HELO c\r\nMAIL FROM:<a@b.test>\r\nMAIL FROM:<a@b.test>\r\n", "503 5.5.1 Error: nested MAIL command"),
        (b"HELO c\r\nMAIL FROM:<a@b.test> SIZE=1\r\n", "555 5.5.4 Unsupported option: SIZE"),
        (b"EHLO c\r\nMAIL FROM:<a@b.test> SIZE=99999999999\r\n", "552 5.3.4 Message size exceeds fixed limit"),
        (b"EHLO c\r\nMAIL FROM:<a@b.test> BODY=9BIT\r\n", "501 5.5.4 Bad BODY keyword: 9BIT"),
        (b"EHLO c\r\nMAIL FROM:<j\xc3\xb6rg@b.test>\r\n", "553 5.6.7 Must declare SMTPUTF8 to send unicode address"),
        (b"EHLO c\r\nMAIL FROM:<a@@b.test>\r\n", "501 5.1.7 Bad sender address syntax"),
        (b"EHLO c\r\nMAIL TO:<a@b.test>\r\n", "501 5.5.4 Syntax: MAIL FROM:<address>"),
        (b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<>\r\n", "501 5.1.3 Bad recipient address syntax"),
        (b"EHLO\r\n", "501 5.5.4 Syntax: EHLO hostname"),
        (b"FOO\r\n", "502 5.5.2 Error: command not recognized"),
        (b"VRFY root\r\n", "502 5.5.1 VRFY command is disabled"),
        (b"STARTTLS\r\n", "502 5.5.1 Error: command not implemented"),
        (b"\r\n", "500 5.5.2 Error: bad syntax"),
        (b"AUTH PLAIN\r\n", "503 5.5.1 Error: authentication not enabled"),
        (b"EHLO c\r\nMAIL FROM:<a@b.test> AUTH=a b\r\n", "555 5.5.4 Unsupported option: B"),
        (b"EHLO c\r\nMAIL FROM:<a@b.test> AUTH=a+2\r\n", "501 5.5.4 Bad AUTH parameter syntax"),
    ],
)
def test_refusals_settled_by_the_engine(script, reply):
    out, _ = same_at_every_split(lambda: E.Engine(settings(auth="none")), script)
    assert codes(out)[-1] == reply


def test_auth_parameter_on_mail_is_accepted():
    out, _ = run(E.Engine(settings()), [b"EHLO c\r\nMAIL FROM:<a@b.test> AUTH=<>\r\nRSET\r\nMAIL FROM:<a@b.test> AUTH=a+2Bb@b.test\r\n"])
    assert codes(out)[1:] == ["250 2.1.0 Ok", "250 2.0.0 Ok", "250 2.1.0 Ok"]


def test_postmaster_without_domain_is_qualified():
    e = E.Engine(settings(postmaster_domain="example.test"))
    seen: list[str] = []

    def resolver(engine: E.Engine, ev: E.Event) -> None:
        if isinstance(ev, E.Rcpt):
            seen.append(str(ev.recipient))
        default_resolver(engine, ev)

    run(e, [b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<Postmaster>\r\n"], resolver)
    assert seen == ["Postmaster"]  # the hooks see it bare: RFC 5321 4.5.1, no check applies
    assert e.tx is not None and [str(r) for r in e.tx.recipients] == ["Postmaster@example.test"]


def test_recipient_limit():
    e = E.Engine(settings(recipients=2))
    out, events = run(e, [b"HELO c\r\nMAIL FROM:<>\r\n" + b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(3))])
    assert events.count("Rcpt") == 2
    assert codes(out)[-1] == "452 4.5.3 Error: too many recipients"


def test_recipient_overshoot_is_no_error_and_the_transaction_stays():
    """A pipelining client past the recipient limit: 452 for the extra ones, counted as no
    error until the overshoot limit (Postfix smtpd_recipient_overshoot_limit), so the accepted
    recipients stay and DATA goes on."""
    rcpts = b"".join(b"RCPT TO:<u%d@example.test>\r\n" % i for i in range(6))
    script = b"EHLO c\r\nMAIL FROM:<>\r\n" + rcpts + b"DATA\r\n"
    out, events = same_at_every_split(lambda: E.Engine(settings(recipients=2, hard_error_limit=3)), script)
    assert codes(out)[-5:] == ["452 4.5.3 Error: too many recipients"] * 4 + ["354 End data with <CR><LF>.<CR><LF>"]
    assert events == ["Helo", "Mail", "Rcpt", "Rcpt", "Data"]
    # past the overshoot limit each 452 counts: the hard error limit ends the session
    e = E.Engine(settings(recipients=2, hard_error_limit=3, recipient_overshoot=1))
    out, events = run(e, [script])
    assert codes(out)[-1] == f"421 4.7.0 {HOST} Error: too many errors" and events[-1] == "Close"
    assert codes(out).count("452 4.5.3 Error: too many recipients") == 4


def test_hop_count_counts_our_received_header():
    """Postfix hopcount_limit: the Received: headers with the one we add reach the limit -> 554 5.4.0."""
    hops = b"Received: from a by b; Mon, 1 Jan 2026 00:00:00 +0000\r\n"
    for n, refused in ((3, False), (4, True)):
        scanner = E.Engine(settings(hop_count=5)).data_scanner()
        scanner.feed(hops * n + b"Subject: x\r\n\r\nbody\r\n.\r\n")
        assert [E.DATA_REPLIES[p].line() for p in scanner.problems] == (["554 5.4.0 Error: too many hops"] if refused else [])


# -- line limits, bare newlines, the error budget ---------------------------------------------------


def test_overlong_command_line_is_refused_and_skipped_at_every_split():
    script = b"NOOP " + b"x" * 600 + b"\r\nNOOP\r\n"
    out, _ = same_at_every_split(lambda: E.Engine(settings(command_line=512)), script)
    assert codes(out) == ["500 5.5.2 Error: command line too long", "250 2.0.0 Ok"]


def test_bare_lf_command_is_refused_and_closes():
    out, events = same_at_every_split(lambda: E.Engine(settings()), b"HELO c\nNOOP\r\n")
    assert codes(out) == ["550 5.5.2 Error: bare <LF> received"]
    assert events == ["Close"]


@pytest.mark.parametrize("policy", [BareNewline.NORMALIZE, BareNewline.NOTE])
def test_bare_lf_command_normalized(policy):
    out, events = run(E.Engine(settings(bare_newline=policy)), [b"HELO c\nNOOP\r\n"])
    assert codes(out) == [f"250 {HOST}", "250 2.0.0 Ok"]
    assert events == (["Helo"] if policy is BareNewline.NORMALIZE else ["Log", "Helo"])


def test_hard_error_limit_closes_with_421():
    e = E.Engine(settings(hard_error_limit=3))
    out, events = run(e, [b"FOO\r\nFOO\r\nFOO\r\nNOOP\r\n"])
    assert codes(out)[-1] == f"421 4.7.0 {HOST} Error: too many errors"
    assert events == ["Close"] and e.closed


def test_soft_error_limit_asks_for_a_pause():
    e = E.Engine(settings(soft_error_limit=1, error_sleep=1.0))
    _, events = run(e, [b"FOO\r\nFOO\r\n"])
    assert events == ["Pause"]


def test_non_smtp_command_says_goodbye():
    out, events = same_at_every_split(lambda: E.Engine(settings()), b"GET / HTTP/1.0\r\n")
    assert codes(out) == ["221 2.7.0 Error: I can break rules, too. Goodbye."]
    assert events == ["Close"]


def test_content_pipelined_before_354_is_refused():
    e = E.Engine(settings())
    out, events = run(e, [b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nDATA\r\nSubject: x\r\n"])
    assert "503 5.5.0 <DATA>: Data command rejected: Improper use of SMTP command pipelining" in codes(out)
    assert "Log" in events and "Data" not in events


def test_pipelined_replies_are_batched_until_no_line_is_pending():
    e = E.Engine(settings())
    e.feed(b"NOOP\r\nNOOP\r\n")
    assert e.next_event() is None
    assert not e.has_pending_line() and e.output_pending == 2


# -- STARTTLS --------------------------------------------------------------------------------------


def test_starttls_offered_then_forgotten_state():
    e = E.Engine(settings(starttls=True))
    out, events = run(e, [b"EHLO c\r\n"])
    assert "250-STARTTLS" in out.decode().split("\r\n")
    out, events = run(e, [b"STARTTLS\r\n"])
    assert codes(out) == ["220 2.0.0 Ready to start TLS"] and events == ["StartTls"]
    assert e.tls and e.helo is None
    out, _ = run(e, [b"MAIL FROM:<>\r\nSTARTTLS\r\n"])
    assert codes(out) == ["503 5.5.1 Error: send HELO/EHLO first", "554 5.5.1 Error: TLS already active"]


def test_require_tls_before_starttls():
    e = E.Engine(settings(starttls=True, require_tls=True, auth="require"))
    out, _ = run(e, [b"EHLO c\r\nMAIL FROM:<>\r\nNOOP\r\n"])
    assert codes(out)[1:] == ["530 5.7.0 Must issue a STARTTLS command first", "250 2.0.0 Ok"]


# -- AUTH ------------------------------------------------------------------------------------------


def b64(text: bytes) -> bytes:
    return base64.b64encode(text)


def tls_engine(**kw) -> E.Engine:
    e = E.Engine(settings(auth=kw.pop("auth", "offer"), implicit_tls=True, **kw))
    run(e, [b"EHLO c\r\n"])
    return e


def test_auth_offered_only_under_tls():
    plain = E.Engine(settings(auth="offer", starttls=True))
    out, _ = run(plain, [b"EHLO c\r\nAUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\n"])
    assert "AUTH" not in out.decode().split("\r\n250-")[0:1][0] and "250-AUTH" not in out.decode()
    assert codes(out)[-1] == "538 5.7.11 Encryption required for requested authentication mechanism"
    e = E.Engine(settings(auth="offer", implicit_tls=True))
    out, _ = run(e, [b"EHLO c\r\n"])
    assert "250-AUTH PLAIN LOGIN" in out.decode().split("\r\n")


def test_auth_plain_with_initial_response_at_every_split():
    script = b"EHLO c\r\nAUTH PLAIN " + b64(b"\0alice\0secret") + b"\r\nMAIL FROM:<alice@example.test>\r\n"
    out, events = same_at_every_split(lambda: E.Engine(settings(auth="require", implicit_tls=True)), script)
    assert events == ["Helo", "AuthLogin", "Mail"]
    assert codes(out)[1:] == ["235 2.7.0 Authentication successful", "250 2.1.0 Ok"]


def test_auth_login_exchange():
    e = tls_engine()
    out, events = run(e, [b"AUTH LOGIN\r\n", b64(b"alice") + b"\r\n", b64(b"secret") + b"\r\n"])
    assert out.decode().split("\r\n")[:3] == ["334 VXNlcm5hbWU6", "334 UGFzc3dvcmQ6", "235 2.7.0 Authentication successful"]
    assert e.login == "alice" and events == ["AuthLogin"]
    out, _ = run(e, [b"AUTH PLAIN\r\n"])
    assert codes(out) == ["503 5.5.1 Error: already authenticated"]
    assert "auth=1/2" in e.stats()


def test_auth_failure_and_the_error_budget():
    e = tls_engine()
    out, _ = run(e, [b"AUTH PLAIN " + b64(b"\0alice\0wrong") + b"\r\n"])
    assert codes(out) == ["535 5.7.8 Error: authentication failed"]
    assert e.login is None and e.errors == 1


@pytest.mark.parametrize(
    ("lines", "reply"),
    [
        ([b"AUTH CRAM-MD5\r\n"], "504 5.5.4 Unsupported authentication mechanism"),
        ([b"AUTH LOGIN\r\n", b"*\r\n"], "501 5.7.0 Authentication aborted"),
        ([b"AUTH PLAIN\r\n", b"!!notbase64\r\n"], "501 5.5.2 Cannot decode response"),
        ([b"AUTH PLAIN\r\n", b"A" * 13000 + b"\r\n"], "500 5.5.6 Authentication exchange line is too long"),
        ([b"MAIL FROM:<>\r\n", b"AUTH PLAIN\r\n"], "503 5.5.1 Error: MAIL transaction in progress"),
    ],
)
def test_auth_refusals(lines, reply):
    out, _ = run(tls_engine(), lines)
    assert codes(out)[-1] == reply


def test_auth_before_ehlo():
    e = E.Engine(settings(auth="offer", implicit_tls=True))
    out, _ = run(e, [b"AUTH PLAIN\r\n"])
    assert codes(out) == ["503 5.5.1 Error: send HELO/EHLO first"]


def test_require_auth_before_mail():
    e = tls_engine(auth="require")
    out, _ = run(e, [b"MAIL FROM:<a@b.test>\r\n"])
    assert codes(out) == ["530 5.7.0 Authentication required"]


# -- postscreen's observations ---------------------------------------------------------------------


def test_observations_when_watched():
    seen: list[tuple[str, bytes]] = []

    def resolver(engine: E.Engine, ev: E.Event) -> None:
        if isinstance(ev, E.Observe):
            seen.append((ev.kind, ev.pending))
        default_resolver(engine, ev)

    e = E.Engine(settings(bare_newline=BareNewline.NORMALIZE))
    e.watch = True
    run(e, [b"EHLO c\r\nNOOP\r\nHELO x\n"], resolver)
    assert seen == [("pipelining", b"NOOP\r\nHELO x\n"), ("pipelining", b"HELO x\n"), ("bare_newline", b"")]


def test_non_smtp_observed_then_502_when_postscreen_goes_on():
    e = E.Engine(settings())
    e.watch = True
    out, events = run(e, [b"Subject: hi\r\n", b"NOOP\r\n"])
    assert events == ["Observe"] and codes(out) == ["502 5.5.2 Error: command not recognized", "250 2.0.0 Ok"]


def test_line_limit_is_judged_per_line():
    """An AUTH line may be longer than a command line; the limit is the line's own, also right
    after an over-long line was refused."""
    long_auth = b"AUTH PLAIN " + b64(b"\0alice\0" + b"s" * 900) + b"\r\n"
    assert len(long_auth) > 512
    out, events = same_at_every_split(lambda: tls_engine(), b"NOOP " + b"x" * 600 + b"\r\n" + long_auth)
    assert codes(out) == ["500 5.5.2 Error: command line too long", "535 5.7.8 Error: authentication failed"]
    assert events == ["AuthLogin"]


def test_replies_wait_in_batches_of_64():
    """A flood of pipelined commands: the engine stops taking lines while 64 replies wait."""
    e = E.Engine(settings())
    e.feed(b"EHLO x\r\n" * 500)
    n = 0
    while e.next_event() is not None:
        n += 1
        e.resolve(CONTINUE)
    assert n == E.OUTPUT_BATCH and e.output_pending == E.OUTPUT_BATCH and e.has_pending_line()
    e.take_output()
    assert e.next_event() is not None  # the shell wrote them: the next batch goes on


def test_postscreen_never_sees_auth_arguments():
    seen: list[E.Observe] = []

    def resolver(engine: E.Engine, ev: E.Event) -> None:
        if isinstance(ev, E.Observe):
            seen.append(ev)
        default_resolver(engine, ev)

    e = E.Engine(settings(auth="offer", implicit_tls=True, bare_newline=BareNewline.NORMALIZE))
    e.watch = True
    secret = b64(b"\0alice\0secret")
    run(e, [b"EHLO c\r\nAUTH PLAIN " + secret + b"\r\n"], resolver)
    run(e, [b"AUTH PLAIN " + secret + b"\n"], resolver)
    run(e, [b"AUTH LOGIN\r\n", b64(b"alice") + b"\n", b64(b"secret") + b"\n"], resolver)
    assert seen, "the deep tests did watch"
    for obs in seen:
        assert secret not in obs.line + obs.pending and b"c2VjcmV0" not in obs.line + obs.pending, obs


# -- CHUNKING (RFC 3030) ------------------------------------------------------------------------------


def bdat_shell(taken: list[bytes]) -> Resolver:
    """A shell that reads each BDAT chunk from the engine's input (the scripts hold it whole)."""

    def resolver(engine: E.Engine, ev: E.Event) -> None:
        if isinstance(ev, E.Bdat):
            data = engine.take_input()
            assert len(data) >= ev.size, "the script holds the whole chunk"
            taken.append(data[: ev.size])
            engine.unread(data[ev.size :])
            if ev.last:
                engine.data_done(Reply(250, "2.0.0", "Ok: queued as X"))
            else:
                engine.bdat_done(Reply(250, "2.0.0", f"Ok: {ev.size} bytes"))
        else:
            default_resolver(engine, ev)

    return resolver


def test_bdat_chunks_are_content_as_is_and_commands_follow():
    taken: list[bytes] = []
    seen: list[E.Event] = []

    def resolver(engine: E.Engine, ev: E.Event) -> None:
        seen.append(ev)
        bdat_shell(taken)(engine, ev)

    e = E.Engine(settings())
    script = b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nBDAT 9\r\n.\r\nQUIT\r\nBDAT 3 LAST\r\nxyzNOOP\r\n"
    out, _ = run(e, [script], resolver)
    assert taken == [b".\r\nQUIT\r\n", b"xyz"]  # neither the dot nor QUIT is a command inside a chunk
    assert [ev for ev in seen if isinstance(ev, E.Bdat)] == [E.Bdat(9, False, True), E.Bdat(3, True, False)]
    assert codes(out)[-3:] == ["250 2.0.0 Ok: 9 bytes", "250 2.0.0 Ok: queued as X", "250 2.0.0 Ok"]
    assert e.tx is None and " bdat=2 " in e.stats()


def test_a_refused_bdat_payload_is_discarded_at_every_split():
    """Postfix: a refused BDAT's payload is read and thrown away (never run as commands), and
    after a refused chunk the next ones are discarded too, until BDAT LAST."""
    script = b"EHLO c\r\nMAIL FROM:<>\r\nBDAT 12\r\nQUIT\r\nRSET\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n"
    out, events = same_at_every_split(lambda: E.Engine(settings()), script)
    assert codes(out)[1:] == [
        "250 2.1.0 Ok", "554 5.5.1 Error: no valid recipients", "551 5.0.0 Discarded 6 bytes after earlier error", "250 2.0.0 Ok",
    ]  # fmt: skip
    assert events == ["Helo", "Mail"]
    out, _ = same_at_every_split(lambda: E.Engine(settings()), b"EHLO c\r\nBDAT 6\r\nQUIT\r\nMAIL FROM:<>\r\nRSET\r\nMAIL FROM:<>\r\n")
    assert codes(out)[1:] == ["503 5.5.1 Error: need RCPT command", "503 5.5.1 Error: MAIL after BDAT", "250 2.0.0 Ok", "250 2.1.0 Ok"]


@pytest.mark.parametrize(
    ("after", "reply"),
    [
        (b"DATA\r\n", "503 5.5.1 Error: DATA after BDAT"),
        (b"RCPT TO:<b@example.test>\r\n", "503 5.5.1 Error: RCPT after BDAT"),
        (b"BDAT 0\r\n", "551 5.7.1 Null BDAT request"),
        (b"BDAT 8 LAST\r\n12345678", "552 5.3.4 Chunk exceeds message size limit"),
        (b"BDAT 2 FIRST\r\n", "521 5.5.4 Syntax: BDAT count [LAST]"),
    ],
)
def test_bdat_rules(after, reply):
    e = E.Engine(settings(max_message_size=10))
    taken: list[bytes] = []
    out, events = run(e, [b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@example.test>\r\nBDAT 3\r\nabc" + after + b"NOOP\r\n"], bdat_shell(taken))
    assert taken == [b"abc"]
    if reply.startswith("521"):  # the rest would be content read as commands: hung up
        assert codes(out)[-1] == reply and events[-1] == "Close"
    else:
        assert codes(out)[-2:] == [reply, "250 2.0.0 Ok"]


# -- DSN parameters (RFC 3461) ------------------------------------------------------------------------


def test_dsn_parameters_are_checked_and_kept_at_every_split():
    script = (
        b"EHLO c\r\nMAIL FROM:<s@c.test> RET=hdrs ENVID=QQ+2B1\r\n"
        b"RCPT TO:<a@example.test> NOTIFY=delay,Success ORCPT=rfc822;a+2Bx@example.test\r\n"
        b"RCPT TO:<b@example.test> NOTIFY=NEVER\r\nRCPT TO:<c@example.test>\r\n"
    )
    out, events = same_at_every_split(lambda: E.Engine(settings()), script)
    assert "250-DSN" in out.decode().split("\r\n") and codes(out)[1:] == ["250 2.1.0 Ok"] + ["250 2.1.5 Ok"] * 3
    e = E.Engine(settings())
    run(e, [script])
    assert e.tx is not None and e.tx.params["RET"] == "hdrs" and E.dsn_text(e.tx.params["ENVID"] or "") == "QQ+1"
    assert e.tx.dsn == [("SUCCESS,DELAY", "rfc822;a+x@example.test"), ("NEVER", None), (None, None)]


@pytest.mark.parametrize(
    ("command", "reply"),
    [
        (b"MAIL FROM:<s@c.test> RET=ALL", "501 5.5.4 Bad RET parameter syntax"),
        (b"MAIL FROM:<s@c.test> ENVID=a+0Ab", "501 5.5.4 Bad ENVID parameter syntax"),  # a line break once decoded
        (b"MAIL FROM:<s@c.test> ENVID=a+zz", "501 5.5.4 Bad ENVID parameter syntax"),
        (b"MAIL FROM:<s@c.test> ENVID=" + b"x" * 101, "501 5.5.4 Bad ENVID parameter syntax"),
        (b"RCPT TO:<a@example.test> NOTIFY=NEVER,SUCCESS", "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
        (b"RCPT TO:<a@example.test> NOTIFY=FAILURE,FAILURE", "501 5.5.4 Error: Bad NOTIFY parameter syntax"),
        (b"RCPT TO:<a@example.test> ORCPT=a@example.test", "501 5.5.4 Error: Bad ORCPT parameter syntax"),
        (b"RCPT TO:<a@example.test> ORCPT=rfc822;", "501 5.5.4 Error: Bad ORCPT parameter syntax"),
        (b"RCPT TO:<a@example.test> ORCPT=rfc822;a+0D+0Ab", "501 5.5.4 Error: Bad ORCPT parameter syntax"),
        (b"RCPT TO:<a@example.test> FOO=1", "555 5.5.4 Unsupported option: FOO"),
    ],
)
def test_bad_dsn_parameters(command, reply):
    prefix = b"EHLO c\r\n" + (b"MAIL FROM:<s@c.test>\r\n" if command.startswith(b"RCPT") else b"")
    out, _ = run(E.Engine(settings()), [prefix + command + b"\r\n"])
    assert codes(out)[-1] == reply


def test_dsn_parameters_need_ehlo():
    out, _ = run(E.Engine(settings()), [b"HELO c\r\nMAIL FROM:<s@c.test>\r\nRCPT TO:<a@example.test> NOTIFY=NEVER\r\n"])
    assert codes(out)[-1] == "555 5.5.4 Unsupported option: NOTIFY"
