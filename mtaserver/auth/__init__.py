"""auth: SMTP AUTH (RFC 4954) building blocks; the SMTP session wires them together.

    sasl.py      the PLAIN and LOGIN exchanges, sans-IO, and every AUTH reply (CONFIG.md's table)
    failures.py  failed AUTHs per client address: when to answer 421 4.7.0 and close
    hashes.py    argon2id, bcrypt and sha512-crypt: verify, and make argon2id (`mtaserver auth hash`)
    users.py     the users file: logins, password hashes, the addresses each login owns
    dovecot.py   a client of Dovecot's authentication protocol (Postfix smtpd_sasl_type = dovecot)
    backend.py   `Authenticator`: FileAuthenticator, DovecotAuthenticator, build(cfg)

sasl.py, failures.py, hashes.py and users.py are pure (hashes and users do CPU work, which
the backend runs off the event loop); dovecot.py is a thin asyncio shell over pure parsing.
"""
