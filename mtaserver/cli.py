"""The `mtaserver` command: run, check-config, auth hash.

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

    problems = check_files(cfg)
    for key, message in problems:
        print(f"{path}:{config_mod.key_line(path, key)}: {key}: {message}", file=sys.stderr)
    if problems:
        return 1
    print("ok")
    return 0


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
    args = parser.parse_args(argv)
    if args.command == "auth":
        return _auth_hash()
    path = args.config or app.default_config_path()
    if args.command == "check-config":
        return _check_config(path)
    return app.run(path)


if __name__ == "__main__":
    sys.exit(main())
