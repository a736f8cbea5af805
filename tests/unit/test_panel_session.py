"""The web panel's pure parts: sessions and their expiry, CSRF, the sign-in limiter, the chart
history (ring buffers, counter deltas, persistence) and the attention list."""

from __future__ import annotations

import json

import pytest

from mtaserver.admin.panel import history as hist
from mtaserver.admin.panel.attention import attention
from mtaserver.admin.panel.render import NAV, environment
from mtaserver.admin.panel.session import (
    ABSOLUTE_TTL,
    IDLE_TTL,
    SessionStore,
    SigninLimiter,
    csrf_ok,
    safe_next,
)
from mtaserver.admin.tokens import Role, Token

ADMIN = Token(role=Role.ADMIN, secret="a" * 32, name="boss")
READER = Token(role=Role.READ, secret="r" * 32, name="viewer")
T0 = 1_800_000_000.0


# -- sessions ----------------------------------------------------------------------------------


def test_session_is_found_by_its_id_and_touched() -> None:
    store = SessionStore()
    s = store.create(ADMIN, "127.0.0.1", T0)
    assert s.name == "boss" and s.role is Role.ADMIN and not s.readonly
    assert s.id != s.csrf and len(s.id) >= 40
    got = store.get(s.id, T0 + 10, [ADMIN, READER])
    assert got is s and got.last_seen == T0 + 10
    assert store.get("nope", T0 + 10, [ADMIN]) is None
    assert store.get(None, T0 + 10, [ADMIN]) is None


def test_session_keeps_no_token() -> None:
    s = SessionStore().create(ADMIN, "127.0.0.1", T0)
    assert ADMIN.secret not in repr(s) and ADMIN.secret not in s.digest and s.id not in repr(s)


def test_idle_expiry() -> None:
    store = SessionStore()
    s = store.create(ADMIN, "127.0.0.1", T0)
    assert store.get(s.id, T0 + IDLE_TTL - 1, [ADMIN]) is s  # used just in time: the idle clock restarts
    assert store.get(s.id, T0 + 2 * IDLE_TTL - 2, [ADMIN]) is s
    assert store.get(s.id, T0 + 3 * IDLE_TTL, [ADMIN]) is None
    assert len(store) == 0


def test_absolute_expiry_even_when_used() -> None:
    store = SessionStore()
    s = store.create(ADMIN, "127.0.0.1", T0)
    t = T0
    while t + 3600 < T0 + ABSOLUTE_TTL:
        t += 3600
        assert store.get(s.id, t, [ADMIN]) is s
    assert store.get(s.id, T0 + ABSOLUTE_TTL + 1, [ADMIN]) is None


def test_a_removed_token_ends_its_sessions_and_a_new_role_applies() -> None:
    store = SessionStore()
    s = store.create(ADMIN, "127.0.0.1", T0)
    demoted = Token(role=Role.READ, secret=ADMIN.secret, name="boss")
    assert store.get(s.id, T0 + 1, [demoted]).role is Role.READ  # type: ignore[union-attr]
    assert s.readonly and not s.may(Role.OPERATOR) and s.may("read")
    assert store.get(s.id, T0 + 2, [READER]) is None  # its token is gone from the file
    assert len(store) == 0


def test_drop_and_expire() -> None:
    store = SessionStore()
    a = store.create(ADMIN, "127.0.0.1", T0)
    b = store.create(READER, "127.0.0.2", T0 + IDLE_TTL)
    assert store.drop(a.id) and not store.drop(a.id)
    assert store.expire(T0 + 2 * IDLE_TTL + 1) == 1 and store.get(b.id, T0 + 2 * IDLE_TTL + 1, [READER]) is None


def test_csrf_compare() -> None:
    s = SessionStore().create(ADMIN, "127.0.0.1", T0)
    assert csrf_ok(s, s.csrf)
    assert not csrf_ok(s, None) and not csrf_ok(s, "") and not csrf_ok(s, s.csrf + "x") and not csrf_ok(s, s.id)


def test_flashes_are_shown_once() -> None:
    s = SessionStore().create(ADMIN, "127.0.0.1", T0)
    s.flash("saved: changed a, b")
    assert s.take_flashes() == ["saved: changed a, b"] and s.take_flashes() == []


@pytest.mark.parametrize(("target", "want"), [
    ("/queues/deferred?q=x", "/queues/deferred?q=x"), ("/", "/"), (None, "/"), ("", "/"),
    ("https://evil.test/", "/"), ("//evil.test/x", "/"), ("/\\evil.test", "/"), ("queues", "/"),
])  # fmt: skip
def test_safe_next(target: str | None, want: str) -> None:
    assert safe_next(target) == want


# -- the sign-in limiter -----------------------------------------------------------------------


def test_limiter_blocks_after_a_few_failures_per_ip_then_forgets() -> None:
    lim = SigninLimiter(limit=3, window=60)
    for i in range(3):
        assert lim.blocked("10.0.0.1", T0 + i) == 0
        lim.failed("10.0.0.1", T0 + i)
    assert lim.blocked("10.0.0.1", T0 + 3) == pytest.approx(57)
    assert lim.blocked("10.0.0.2", T0 + 3) == 0  # per address
    assert lim.blocked("10.0.0.1", T0 + 60) == 0  # the first failure left the window
    lim.succeeded("10.0.0.1")
    assert lim.blocked("10.0.0.1", T0 + 3) == 0


# -- history -----------------------------------------------------------------------------------


def samples(**named: float) -> list[tuple[str, dict[str, str], float]]:
    return [(k, {}, v) for k, v in named.items()]


def test_extract_names() -> None:
    got = hist.extract([
        ("mtaserver_smtpd_messages_accepted_total", {"sasl_method": ""}, 3.0),
        ("mtaserver_smtpd_messages_accepted_total", {"sasl_method": "PLAIN"}, 1.0),
        ("mtaserver_smtpd_rejects_total", {"stage": "rcpt", "code": "554", "reason": "relay_denied"}, 2.0),
        ("mtaserver_smtpd_rejects_total", {"stage": "data", "code": "554", "reason": "virus"}, 1.0),
        ("mtaserver_delivery_recipients_total", {"status": "sent"}, 5.0),
        ("mtaserver_delivery_recipients_total", {"status": "bounced"}, 1.0),
        ("mtaserver_delivery_recipients_total", {"status": "expired"}, 1.0),
        ("mtaserver_delivery_recipients_total", {"status": "deferred"}, 9.0),
        ("mtaserver_queue_messages_deferred_total", {}, 4.0),
        ("mtaserver_postscreen_results_total", {"test": "dnsbl", "result": "ignore"}, 6.0),
        ("mtaserver_filter_results_total", {"filter": "clamav", "result": "virus"}, 1.0),
        ("mtaserver_queue_messages", {"queue": "hold"}, 2.0),
        ("mtaserver_smtpd_connections_total", {"listener": "smtp"}, 50.0),
    ])  # fmt: skip
    assert got == {
        "accepted": 4.0, "rejected": 3.0, "rejected:relay_denied": 2.0, "rejected:virus": 1.0, "delivered": 5.0,
        "bounced": 2.0, "deferred": 4.0, "postscreen:dnsbl:ignore": 6.0, "filter:clamav:virus": 1.0, "queue:hold": 2.0,
    }  # fmt: skip
    assert hist.extract([]) == {"accepted": 0.0, "rejected": 0.0, "deferred": 0.0, "delivered": 0.0, "bounced": 0.0}


def test_hour_series_are_per_minute_changes_of_counters_and_values_of_gauges() -> None:
    h = hist.History()
    h.record(T0, {"accepted": 2.0, "queue:incoming": 1.0})
    h.record(T0 + 60, {"accepted": 5.0, "queue:incoming": 4.0})
    h.record(T0 + 120, {"accepted": 5.0, "queue:incoming": 0.0, "rejected:spam": 1.0})
    assert h.series("accepted", "hour") == [(T0, 2.0), (T0 + 60, 3.0), (T0 + 120, 0.0)]
    assert h.series("queue:incoming", "hour") == [(T0, 1.0), (T0 + 60, 4.0), (T0 + 120, 0.0)]
    assert h.series("rejected:spam", "hour") == [(T0, 0.0), (T0 + 60, 0.0), (T0 + 120, 1.0)]
    assert h.names() == ["accepted", "queue:incoming", "rejected:spam"]
    assert h.totals("hour") == {"accepted": 5.0, "rejected:spam": 1.0}
    assert h.peek(T0 + 150, {"accepted": 7.0, "queue:incoming": 3.0}) == {"accepted": 2.0, "queue:incoming": 3.0}
    assert h.series("accepted", "hour")[-1] == (T0 + 120, 0.0)  # peek records nothing


def test_a_counter_that_went_down_was_reset() -> None:
    h = hist.History()
    h.record(T0, {"accepted": 10.0})
    h.record(T0 + 60, {"accepted": 3.0})  # the server restarted: its counters began again
    assert h.series("accepted", "hour")[-1] == (T0 + 60, 3.0)


def test_the_hour_keeps_sixty_samples() -> None:
    h = hist.History()
    for i in range(100):
        h.record(T0 + 60 * i, {"accepted": float(i)})
    s = h.series("accepted", "hour")
    assert len(s) == hist.HOUR_SLOTS and s[0][0] == T0 + 60 * 40 and all(v == 1.0 for _, v in s)


def test_day_buckets_sum_ten_minutes_and_show_the_bucket_being_filled() -> None:
    h = hist.History()
    start = (T0 // 600) * 600
    for i in range(25):  # 25 minutes: two full buckets and half of a third
        h.record(start + 60 * i, {"accepted": float(2 * (i + 1)), "queue:deferred": float(i)})
    day = h.series("accepted", "day")
    assert [v for _, v in day] == [20.0, 20.0, 10.0]
    assert [t for t, _ in day][:2] == [start + 600, start + 1200]
    assert [v for _, v in h.series("queue:deferred", "day")] == [9.0, 19.0, 24.0]  # a gauge: its last value


def test_day_keeps_its_slots_and_drops_rows_older_than_a_day() -> None:
    h = hist.History()
    for i in range(2 * 24 * 6):  # two days, one sample per 10 minutes
        h.record(T0 + 600 * i, {"accepted": float(i)})
    day = h.series("accepted", "day")
    assert len(day) <= hist.DAY_SLOTS and day[-1][0] - day[0][0] < 86400


def test_history_survives_a_restart(tmp_path) -> None:
    h = hist.History()
    for i in range(15):
        h.record(T0 + 60 * i, {"accepted": float(i), "queue:hold": 1.0})
    path = tmp_path / "state" / "history.json"
    hist.save(h, path)
    back = hist.load(path)
    assert back.series("accepted", "hour") == h.series("accepted", "hour")
    assert back.series("accepted", "day") == h.series("accepted", "day")
    # After a restart the counters start at 0 again: the first sample counts from 0.
    back.record(T0 + 60 * 20, {"accepted": 2.0, "queue:hold": 0.0})
    assert back.series("accepted", "hour")[-1] == (T0 + 1200, 2.0)


def test_a_damaged_history_file_gives_empty_charts(tmp_path) -> None:
    p = tmp_path / "history.json"
    p.write_text("{not json")
    assert hist.load(p).names() == []
    p.write_text(json.dumps({"format": 1, "hour": [["x", {}]]}))
    assert hist.load(p).names() == []
    assert hist.load(tmp_path / "missing.json").names() == []


def test_table_aligns_names_on_shared_times() -> None:
    h = hist.History()
    h.record(T0, {"accepted": 1.0})
    h.record(T0 + 60, {"accepted": 1.0, "rejected:spam": 2.0})
    want = {"t": [T0, T0 + 60], "accepted": [1.0, 0.0], "rejected:spam": [0.0, 2.0]}
    assert h.table("hour", ["accepted", "rejected:spam"]) == want
    live = h.table("hour", ["accepted"], (T0 + 90, {"accepted": 4.0}))
    assert live == {"t": [T0, T0 + 60, T0 + 90], "accepted": [1.0, 0.0, 4.0]}
    assert h.table("hour", ["accepted"], (T0 + 60, {"accepted": 4.0}))["t"] == [T0, T0 + 60]  # not newer: ignored
    with pytest.raises(ValueError):
        h.series("accepted", "week")  # type: ignore[arg-type]


# -- attention ---------------------------------------------------------------------------------


def test_attention_lists_a_scanner_down_stuck_mail_and_a_refusing_relay() -> None:
    services = [
        {"name": "antivirus", "engine": "clamd", "configured": True, "error": "clamd: Connection refused"},
        {"name": "antispam", "engine": "spamd", "configured": False, "error": ""},
        {"name": "dkim", "configured": True, "error": ""},
    ]
    reply = "451 4.3.0 relay says no"
    deferred = [
        {"arrival_time": T0 - 5 * 3600, "recipients": [{"address": "a@x.test", "delay_reason": reply}]},
        {"arrival_time": T0 - 60, "recipients": [{"address": "b@x.test", "delay_reason": reply}, {"address": "c@x.test"}]},
    ]
    items = attention(services, deferred, relay_host="[relay.test]:25", delay_warning=4 * 3600, now=T0)
    assert [i["title"] for i in items] == [
        "antivirus is down (clamd)", "mail stuck in deferred: oldest 5h 0m", "relay host [relay.test]:25 refusing",
    ]  # fmt: skip
    assert items[0]["level"] == "error" and "Connection refused" in items[0]["detail"]
    assert items[1]["detail"].startswith("1 message(s)")
    assert items[2]["detail"] == f"2 recipient(s): {reply}"


def test_attention_is_empty_when_all_is_well() -> None:
    services = [{"name": "antivirus", "engine": "clamd", "configured": True, "error": ""}]
    assert attention(services, [{"arrival_time": T0 - 60, "recipients": [{"address": "a@x"}]}],
                     relay_host=None, delay_warning=4 * 3600, now=T0) == []  # fmt: skip
    assert attention([], [], relay_host=None, delay_warning=3600, now=T0) == []


# -- templates ---------------------------------------------------------------------------------


def test_nav_names_every_page_of_the_seed() -> None:
    assert [label for _, label in NAV] == ["Overview", "Inbound Flow & Security", "Postscreen Tuning", "Outbound Flow",
                                           "Antivirus & Antispam", "Advanced", "Queues", "Single Server"]  # fmt: skip


def test_templates_escape_mail_text() -> None:
    html = environment.get_template("services_table.html").render(
        services=[{"name": "antivirus", "engine": "clamd", "configured": True, "reachable": False,
                   "error": "<script>alert(1)</script>", "last_error": None}])  # fmt: skip
    assert "<script>alert" not in html and "&lt;script&gt;" in html
    field = environment.from_string("{{ csrf_field() }}").render(csrf_token='x"><b>')
    assert field == '<input type="hidden" name="csrf" value="x&#34;&gt;&lt;b&gt;">'
