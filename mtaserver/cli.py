"""The `mtaserver` command: run, check-config, auth hash, queue (queue/ops.py).

CONFIG
    -c FILE, else $MTASERVER_CONFIG, else conf/mtaserver.yaml
"""

from __future__ import annotations

import argparse
import sys

from . import app
from . import config as config_mod


def _check_config(path: str) -> int:
    """The file's syntax and values, then the files it names: what `run` would refuse."""
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    from .runtime import check_files

    problems = _file_problems(cfg)
    tls_named = any(key.startswith("server.tls.") for key, _ in problems)
    problems += [(k, m) for k, m in check_files(cfg) if not (tls_named and k == "server.tls")]  # said more precisely above
    for key, message in problems:
        print(f"{path}:{config_mod.key_line(path, key)}: {key}: {message}", file=sys.stderr)
    if problems:
        return 1
    print("ok")
    return 0


def _file_problems(cfg: config_mod.Config) -> list[tuple[str, str]]:
    """The TLS certificate and key (there, a regular file, readable by us and by server.user, who
    reads them again on reload) and the admin token file's lines: (key, message) pairs."""
    import os

    from .admin.tokens import TokenFileError, parse_tokens

    problems = []
    for key, name in (("server.tls.cert", cfg.server.tls.cert), ("server.tls.key", cfg.server.tls.key)):
        if name:
            path = config_mod.resolve_path(cfg.source, name)
            why = _unusable(path, cfg.server.user, cfg.server.group)
            if why:
                problems.append((key, f"{path}: {why}"))
    token_path = cfg.data_path / cfg.admin.token_file  # made on first start when missing: only a file that is there
    if os.path.lexists(token_path):
        try:
            parse_tokens(token_path.read_text(encoding="utf-8"), str(token_path))
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(("admin.token_file", f"{token_path}: cannot read the token file: {getattr(exc, 'strerror', None) or exc}"))
        except TokenFileError as exc:
            problems += [("admin.token_file", line) for line in exc.errors]  # file:line: message, never a token
    return problems


def _unusable(path: object, user: str | None, group: str | None) -> str | None:
    """Why a file the server reads cannot be read: missing, not a regular file, not readable (by us,
    or by server.user / server.group judged by the mode bits); None when it can."""
    import grp
    import os
    import pwd
    import stat

    try:
        st = os.stat(path)  # type: ignore[arg-type]
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    try:
        with open(path, "rb"):  # type: ignore[call-overload]
            pass
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if user is None:
        return None
    try:
        pw = pwd.getpwnam(user)
        gid = grp.getgrnam(group).gr_gid if group else pw.pw_gid
    except KeyError:
        return None  # the config's own check names the unknown user or group
    if pw.pw_uid == 0:
        return None
    groups = {gid, *os.getgrouplist(user, gid)}
    if st.st_uid == pw.pw_uid:
        ok = bool(st.st_mode & stat.S_IRUSR)
    elif st.st_gid in groups:
        ok = bool(st.st_mode & stat.S_IRGRP)
    else:
        ok = bool(st.st_mode & stat.S_IROTH)
    return None if ok else f"not readable by server.user {user} (mode {stat.S_IMODE(st.st_mode):04o}; a reload reads it after the drop)"


def _auth_hash() -> int:
    """Read a password (twice from a terminal, else one line of stdin) and print its argon2id hash."""
    import getpass

    from .auth.hashes import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("mtaserver auth hash: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        print("mtaserver auth hash: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


# ---------------------------------------------------------------------------------------------
# mtaserver queue ... (queue/ops.py does the work; the admin API when the server runs)


def _queue_parser(sub: argparse._SubParsersAction) -> None:
    from .queue.ops import ACTIONS
    from .queue.store import STATES

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", default=None, help="config file (default: $MTASERVER_CONFIG, else conf/mtaserver.yaml)")
    common.add_argument("--json", action="store_true", help="JSON output (list: one object per message and line)")
    common.add_argument("--token", default=None, help="admin API token (default: $MTASERVER_TOKEN, else from admin.token_file)")
    sel = argparse.ArgumentParser(add_help=False)
    sel.add_argument("ids", nargs="*", metavar="ID|ALL", help="queue ids, or ALL")
    sel.add_argument("--queue", choices=STATES, help="only messages in this queue")
    sel.add_argument("--from", dest="sender", metavar="ADDRESS|DOMAIN", help="sender address, or domain; <> = null sender")
    sel.add_argument("--to", dest="recipient", metavar="ADDRESS|DOMAIN", help="a recipient's address, or domain")
    sel.add_argument("--older-than", metavar="AGE", help="arrived at least this long ago (30m, 2h, 7d)")
    sel.add_argument("--newer-than", metavar="AGE", help="arrived less than this long ago")
    q = sub.add_parser("queue", help="look at and act on the mail queue (postqueue, postsuper, qshape)")
    verbs = q.add_subparsers(dest="queue_command", required=True)
    verbs.add_parser("stats", parents=[common], help="messages per queue and the time of the count")
    p = verbs.add_parser("list", parents=[common, sel], help="the queued messages, like postqueue -p / -j")
    p.add_argument("--after", metavar="ID", help="start after this queue id (paging)")
    p.add_argument("--limit", type=int, default=None, help="at most this many (default: all)")
    p = verbs.add_parser("show", parents=[common], help="one message: envelope, per-recipient status, headers, decision trail")
    p.add_argument("id")
    for action, text in zip(ACTIONS, ("postsuper -h: put on hold", "postsuper -H: release from hold",
                                      "postsuper -r: queue again (content filters again)", "postsuper -d: remove"), strict=True):  # fmt: skip
        p = verbs.add_parser(action, parents=[common, sel], help=text)
        p.add_argument("--dry-run", action="store_true", help="change nothing; say which messages it would act on")
        if action == "delete":
            p.add_argument("--bounce", action="store_true", help="return each message to its sender (a non-delivery notification)")
    verbs.add_parser("flush", parents=[common], help="postqueue -f: retry all deferred mail now")
    p = verbs.add_parser("shape", parents=[common], help="qshape: messages per recipient domain and age (minutes)")
    p.add_argument("--queue", choices=STATES, help="default: incoming, active and deferred")


def _queue_selector(args: argparse.Namespace) -> object:
    from .queue.ops import OpsError, Selector
    from .values import parse_duration

    def age(text: str | None, flag: str) -> float | None:
        try:
            return parse_duration(text) if text is not None else None
        except ValueError as exc:
            raise OpsError(f"{flag}: {exc}") from None

    ids = [i for i in args.ids if i != "ALL"]
    return Selector(ids=ids, all="ALL" in args.ids, queue=args.queue, sender=args.sender, recipient=args.recipient,
                    older_than=age(args.older_than, "--older-than"), newer_than=age(args.newer_than, "--newer-than"))  # fmt: skip


def _queue_token(args: argparse.Namespace, cfg: config_mod.Config) -> str | None:
    """--token, else $MTASERVER_TOKEN, else the token file's first token of the lowest role the
    verb needs: read for stats, list, show, shape; operator for the actions (then the higher roles)."""
    import os

    if args.token or os.environ.get("MTASERVER_TOKEN"):
        return args.token or os.environ["MTASERVER_TOKEN"]
    try:
        lines = (cfg.data_path / cfg.admin.token_file).read_text().splitlines()
    except OSError:
        return None
    tokens: dict[str, str] = {}
    for line in lines:
        words = line.split()
        if len(words) >= 2 and not words[0].startswith("#"):
            tokens.setdefault(words[0], words[1])
    reads = args.queue_command in ("stats", "list", "show", "shape")
    order = ("read", "operator", "admin") if reads else ("operator", "admin")
    return next((tokens[r] for r in order if r in tokens), None)


def _queue_print(ops: object, args: argparse.Namespace) -> int:
    import asyncio
    import json

    from .queue import ops as q

    verb = args.queue_command
    out = sys.stdout
    if verb == "stats":
        result = ops.stats()  # type: ignore[attr-defined]
        print(json.dumps(result) if args.json else q.format_stats(result), file=out)
    elif verb == "list":
        sel = _queue_selector(args)
        after, left, n, size = args.after, args.limit, 0, 0
        if not args.json:
            print(q.format_list_header(), file=out)
        while True:
            page = ops.list(None, sel, after, min(left, 10000) if left is not None else 10000)  # type: ignore[attr-defined]
            for m in page["messages"]:
                print(json.dumps(m) if args.json else q.format_message(m) + "\n", file=out)
                n, size = n + 1, size + (m.get("message_size") or 0)
            after = page.get("next")
            if left is not None:
                left -= len(page["messages"])
            if after is None or (left is not None and left <= 0):
                break
        if not args.json:
            print(f"-- {(size + 1023) // 1024} Kbytes in {n} Request{'s' if n != 1 else ''}." if n else "Mail queue is empty", file=out)
    elif verb == "show":
        result = ops.show(args.id)  # type: ignore[attr-defined]
        if result is None:
            print(f"mtaserver queue show: {args.id}: no such message", file=sys.stderr)
            return 1
        print(json.dumps(result) if args.json else q.format_show(result), file=out)
    elif verb == "shape":
        result = ops.shape(args.queue)  # type: ignore[attr-defined]
        print(json.dumps(result) if args.json else q.format_shape(result), file=out)
    else:
        if verb == "flush":
            coro = ops.flush()  # type: ignore[attr-defined]
        else:
            kw = {"dry_run": args.dry_run} | ({"bounce": args.bounce} if verb == "delete" else {})
            coro = getattr(ops, verb)(_queue_selector(args), **kw)
        result = asyncio.run(coro)
        print(json.dumps(result) if args.json else (f"flush: {result.get('count', 0)} deferred message(s) to retry now"
                                                   if verb == "flush" else q.format_action(result)), file=out)  # fmt: skip
    return 0


def _queue(args: argparse.Namespace) -> int:
    """Through the admin API when a server holds the data_dir's instance lock; else on the spool,
    holding that lock for the actions (so that no server starts meanwhile)."""
    import os

    from . import supervisor
    from .queue.ops import OpsError, QueueOps, RemoteQueueOps
    from .queue.store import QueueStore

    path = args.config or app.default_config_path()
    try:
        cfg = config_mod.load(path)
    except config_mod.ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return 1
    verb = args.queue_command
    try:
        try:
            running = supervisor.holder_pid(cfg.data_path) is not None
        except PermissionError:
            raise OpsError(f"cannot read {cfg.data_path} (it belongs to the server's user): run this as root "
                           "or as that user") from None  # fmt: skip
        if running:
            ep = cfg.admin.listen
            if ep is None:
                raise OpsError("the server is running without an admin API (admin.listen: null): set admin.listen and "
                               "restart it, or stop it to act on the spool directly")  # fmt: skip
            if ep.unix_path:
                raise OpsError("admin.listen is a UNIX socket: the queue commands need it on host:port")
            host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(ep.host, ep.host)
            base = f"http://[{host}]:{ep.port}" if ":" in host else f"http://{host}:{ep.port}"
            return _queue_print(RemoteQueueOps(base, _queue_token(args, cfg)), args)
        lock = None
        if verb not in ("stats", "list", "show", "shape") and not getattr(args, "dry_run", False):
            lock = supervisor.InstanceLock(cfg.data_path)
            try:
                lock.acquire()
            except supervisor.AlreadyRunning as exc:
                raise OpsError(f"the server started meanwhile ({exc}): run the command again") from None
            st = os.stat(cfg.data_path)
            if os.geteuid() == 0 and st.st_uid != 0:  # files we make belong to the server's user (server.user)
                os.setgroups([])
                os.setgid(st.st_gid)
                os.setuid(st.st_uid)
        store = QueueStore(cfg.queue_path)
        try:
            if getattr(args, "bounce", False) and not args.dry_run:
                store.open()  # the notifications are queued through the commit
            return _queue_print(QueueOps(store, config=lambda: cfg), args)
        finally:
            store.close()
            if lock is not None:
                lock.release()
    except OpsError as exc:
        print(f"mtaserver queue {verb}: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `mtaserver queue list | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _dkim_parser(sub: argparse._SubParsersAction) -> None:
    verbs = sub.add_parser("dkim", help="DKIM keys").add_subparsers(dest="dkim_command", required=True)
    p = verbs.add_parser("keygen", help="write a private key under data_dir/dkim/, print the TXT record and the dkim.sign entry")
    p.add_argument("-c", "--config", default=None, help="config file (default: $MTASERVER_CONFIG, else conf/mtaserver.yaml)")
    p.add_argument("--domain", required=True, help="the signing domain (d=)")
    p.add_argument("--selector", required=True, help="the selector (s=): the record is <selector>._domainkey.<domain>")
    p.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="rsa (2048 bits, default) or ed25519")
    p.add_argument("--force", action="store_true", help="replace an existing key file")


def _dkim_keygen(args: argparse.Namespace) -> int:
    """`mtaserver dkim keygen`: filters/dkim.py makes and writes the key; this prints what to do with it."""
    from .filters import dkim

    path = args.config or app.default_config_path()
    try:
        cfg = config_mod.load(path)
        entry = config_mod.DkimSign(domain=args.domain, selector=args.selector, key="-")
    except config_mod.ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)
        return 1
    except ValueError as exc:  # pydantic's ValidationError: the domain or the selector
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())  # type: ignore[attr-defined]
        print(f"mtaserver dkim keygen: {problems}", file=sys.stderr)
        return 1
    key_file = dkim.key_path(cfg.data_path, entry.domain, entry.selector)
    pem = dkim.new_key(args.type)
    try:
        dkim.write_key(key_file, pem, force=args.force)
    except (OSError, FileExistsError) as exc:
        print(f"mtaserver dkim keygen: {exc}", file=sys.stderr)
        return 1
    key = dkim.parse_key(pem)
    rel = key_file.relative_to(cfg.data_path)
    print(f"wrote {key_file} ({key.kind}, {key.bits} bits, mode 0600)")
    print("publish this DNS record:")
    print(dkim.txt_record(entry.selector, entry.domain, key))
    print("add this entry to dkim.sign:")
    print(f"  - {{domain: {entry.domain}, selector: {entry.selector}, key: {rel}}}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mtaserver")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sendmail"]:  # sendmail(1)'s own option syntax (-fsender, -oi, -t): not argparse's
        from . import sendmail

        return sendmail.main(argv[1:])
    parser = argparse.ArgumentParser(prog="mtaserver", description="A pure-Python Mail Transfer Agent")
    parser.add_argument("--version", action="version", version=f"mtaserver {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sendmail", help="queue a message read on stdin: sendmail [-t] [-f SENDER] [-i] [-F NAME] [-C FILE] [RCPT...]")
    for name, text in (("run", "run the MTA in the foreground"), ("check-config", "validate the config file")):
        p = sub.add_parser(name, help=text)
        p.add_argument("-c", "--config", default=None, help="config file (default: $MTASERVER_CONFIG, else conf/mtaserver.yaml)")
    auth = sub.add_parser("auth", help="users file helpers").add_subparsers(dest="auth_command", required=True)
    auth.add_parser("hash", help="read a password (terminal or stdin), print an argon2id hash for the users file")
    _queue_parser(sub)
    _dkim_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "dkim":
        return _dkim_keygen(args)
    if args.command == "queue":
        return _queue(args)
    if args.command == "auth":
        return _auth_hash()
    path = args.config or app.default_config_path()
    if args.command == "check-config":
        return _check_config(path)
    return app.run(path)


if __name__ == "__main__":
    sys.exit(main())
