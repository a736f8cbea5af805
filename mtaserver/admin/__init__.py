"""The admin side of the server: HTTP API, tokens, audit log, live configuration.

DESCRIPTION
    api.py         FastAPI app on an embedded uvicorn server, in the queue manager's process
    tokens.py      admin.token_file: roles and the constant-time check (pure parsing + loader)
    audit.py       admin.audit_log: one line per state-changing request
    configfile.py  PUT/PATCH /api/config: validate, write back keeping comments, atomically
    rootwriter.py  under server.user: the root supervisor writes the file for the API (a private channel)

    Importing the package imports none of them: `run` reads the token file (tokens.py) before
    forking, and only the process that serves the API imports api.py (FastAPI, uvicorn).
"""
