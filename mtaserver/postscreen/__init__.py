"""postscreen: screening of SMTP clients before (and, inline, during) the SMTP session.

One module per concern, as in DESIGN.md "Postscreen inline":

    checks.py   the vocabulary: Check, Action, which checks are enabled, their pass TTLs
    access.py   postscreen.access_list: permit_mynetworks, "CIDR permit|reject|dunno"
    dnsbl.py    postscreen.dnsbl.sites: patterns, query names, scoring, TTLs, parallel lookups
    cache.py    the temporary allowlist: five expiry stamps per IP, SQLite or Redis store
    verdict.py  test outcome + configured action -> what the session must do, reply catalogue
    logline.py  the log lines of Postfix's postscreen and dnsblog, word for word

Everything but the stores in cache.py and `dnsbl.query_all` is pure: inputs and `now` in,
decisions out. The session (smtpd.py) owns the sockets, the timers and the clock.
"""
