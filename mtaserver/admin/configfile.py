"""Live configuration: a new document validated, written back keeping the file's comments, applied.

DESCRIPTION
    What PUT and PATCH /api/config do to the YAML file, before the API asks the server to
    apply it (the same reload as SIGHUP):

      PUT, a YAML body   the new file, written as sent (its own comments and layout)
      PUT, a JSON body   the file's document made equal to the body: keys that differ are
                         replaced, missing ones removed, new ones added; every comment of an
                         unchanged key stays where it was; a value with a unit (`5d`, `100M`)
                         stays as written when the body gives the number it means. The body
                         is the file's document, not GET /api/config's effective values: one
                         with a `source` key or a masked secret (`***`) is refused
      PATCH (JSON)       a JSON merge patch (RFC 7396) applied to the file's document: only the
                         keys named change; `null` removes a key (its default applies)

    The edited document is rendered with ruamel.yaml's round-trip dumper (the indentation is
    the file's own), then validated by reading it back exactly as the server will: with
    `config.load` (the same loader, the same errors), plus `runtime.check_files` (the files it
    names must load), plus a check that PyYAML reads back the values that were meant (a
    string such as "on" is quoted so YAML 1.1 does not make it a boolean). Errors are
    `key.path: message`, without the file name and line of the loader's message.

    `root_only_changes(old, new)`: under server.user the admin API's changes are written by
    the root supervisor (rootwriter.py), which refuses those that name what root reads or
    acts on: files, directories, identities and the admin surface (ROOT_ONLY), on the node's
    effective settings and in every `servers.<name>` override. Exceptions that give nothing
    away: a DKIM key added as `dkim/<name>` (the panel's keygen: data_dir belongs to the mail
    user already) and custom signature URLs (only local files are refused).

    `write_atomically` replaces the file: the new text goes to a temporary file in the same
    directory (mkstemp: a random name, O_EXCL; same mode), fsync; the current file is copied
    to `<file>.bak` the same way; then rename over the file and fsync the directory. A
    symbolic link is resolved first (the file it names is replaced; the link stays). A
    process that is not root never writes a file another user owns (the rename would give it
    the writer's owner). An invalid document writes nothing.

SECURITY
    The body comes from a client holding an admin token; it is parsed by ruamel.yaml's and
    PyYAML's safe loaders only (no tags that construct objects), size-limited by the API.
    The rendered file is re-validated before it replaces the old one.

STANDARDS
    RFC 7396 (JSON Merge Patch).

CONFIG
    Every key (it writes the whole file); the file is the one the server was started with.
"""

from __future__ import annotations

import io
import itertools
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError as RuamelError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from .. import config as config_mod
from ..config import Config, ConfigError


class DocumentError(Exception):
    """A document that cannot be applied. `errors` are `key.path: message` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class RootOnlyError(DocumentError):
    """A valid document that changes what only root may change (root_only_changes)."""


# ---------------------------------------------------------------------------------------------
# Pure helpers: merge patch, sync, error text.


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396 on plain data: the patched value (a new object; `target` is not changed). Pure."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strip_location(line: str, filename: str) -> str:
    """`file:12: key.path: message` -> `key.path: message`. Pure."""
    if line.startswith(filename + ":"):
        rest = line[len(filename) + 1 :]
        m = re.match(r"\d+: ", rest)
        return rest[m.end() :] if m else rest
    return line


def guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping indent, sequence indent, dash offset) of a YAML text, for ruamel's dumper. Pure.

    The mapping indent is that of the first nested key; the dash offset is how far the first
    block sequence's dash sits right of its parent key (PyYAML writes 0, conf/mtaserver.yaml 2)."""
    mapping, offset = 2, 0
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    for prev, ln in itertools.pairwise(lines):
        if prev.rstrip().endswith(":") and not ln.lstrip().startswith("- "):
            step = _col(ln) - _col(prev)
            if step > 0:
                mapping = step
                break
    for prev, ln in itertools.pairwise(lines):
        if ln.lstrip().startswith("- ") and re.match(r"\s*[^\s-][^:]*:\s*(#.*)?$", prev):
            offset = max(0, _col(ln) - _col(prev))
            break
    return mapping, max(mapping, offset + 2), offset


def _col(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


# ---------------------------------------------------------------------------------------------
# The ruamel document.


def _yaml(text: str) -> YAML:
    y = YAML()  # round trip
    y.preserve_quotes = True
    y.width = 4096  # never fold a long line the operator wrote on one
    mapping, sequence, offset = guess_indent(text)
    y.indent(mapping=mapping, sequence=sequence, offset=offset)
    # ruamel writes None as an empty value; the file says `null` (conf/mtaserver.yaml does).
    y.representer.add_representer(type(None), lambda r, _v: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    return y


def load_document(text: str) -> CommentedMap:
    """The file's text as a ruamel round-trip document; DocumentError if it does not parse."""
    try:
        doc = _yaml(text).load(text)
    except RuamelError as exc:
        raise DocumentError([f"(file): the current file does not parse: {exc}"]) from None
    if doc is None:
        return CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise DocumentError(["(top): the current file is not a mapping of sections"])
    return doc


def render(doc: CommentedMap, like: str) -> str:
    """The document as YAML text, indented like `like` (the file it came from)."""
    out = io.StringIO()
    _yaml(like).dump(doc, out)
    return out.getvalue()


def _node(value: Any, old: Any = None) -> Any:
    """A plain value as ruamel nodes, replacing `old`: a string is quoted as the old one was, and
    always when PyYAML would read it as something else (`on`); a collection replacing a flow-style
    or empty one (`[a, b]`, `[]`) is written in flow style."""
    if isinstance(value, dict):
        m = CommentedMap((k, _node(v)) for k, v in value.items())
        if isinstance(old, CommentedMap) and (old.fa.flow_style() or not old):  # an empty one is written [] or {}
            m.fa.set_flow_style()
        return m
    if isinstance(value, list):
        like = old[0] if isinstance(old, CommentedSeq) and old else None  # new items are quoted as the old ones were
        s = CommentedSeq(_node(v, like) for v in value)
        if isinstance(old, CommentedSeq) and (old.fa.flow_style() or not old):  # an empty one is written [] or {}
            s.fa.set_flow_style()
        return s
    if isinstance(value, str) and isinstance(old, (DoubleQuotedScalarString, SingleQuotedScalarString)):
        return type(old)(value)
    if isinstance(value, str) and _resolves_as_other(value):
        return DoubleQuotedScalarString(value)
    return value


def _resolves_as_other(text: str) -> bool:
    tag = yaml.resolver.Resolver().resolve(yaml.ScalarNode, text, (True, False))
    return tag != "tag:yaml.org,2002:str" or text != text.strip() or text == ""


def apply_patch(doc: CommentedMap, patch: dict[str, Any]) -> None:
    """RFC 7396 applied in place to a ruamel document: only the keys named are touched."""
    for key, value in patch.items():
        if value is None:
            if key in doc:
                del doc[key]
        elif isinstance(value, dict) and isinstance(doc.get(key), CommentedMap):
            apply_patch(doc[key], value)
        else:
            doc[key] = _node(merge_patch(None, value) if isinstance(value, dict) else value, doc.get(key))


def sync(doc: CommentedMap, new: dict[str, Any]) -> None:
    """Make a ruamel document equal to `new`, touching only what differs (comments of the rest stay)."""
    for key in [k for k in doc if k not in new]:
        del doc[key]
    for key, value in new.items():
        old = doc.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(old, CommentedMap):
            sync(old, value)
        elif old is _MISSING or (_plain(old) != value and not same_quantity(old, value)):
            doc[key] = _node(value, None if old is _MISSING else old)


_MISSING = object()


def same_quantity(old: Any, new: Any) -> bool:
    """True when `old`, a duration or size written with a unit (`5d`, `100M`), is the number
    `new` (432000, 104857600): the file keeps its unit. Pure."""
    from ..values import parse_duration, parse_size

    if not isinstance(old, str) or isinstance(new, bool) or not isinstance(new, (int, float)):
        return False
    if not re.fullmatch(r"\s*\d+(\.\d+)?\s*[A-Za-z]+\s*", old):
        return False
    for parse in (parse_duration, parse_size):
        try:
            if parse(old) == new:
                return True
        except ValueError:
            pass
    return False


def effective_markers(data: Any, path: str = "") -> list[str]:
    """What shows a PUT body was copied from GET /api/config (the effective values, secrets
    masked) instead of the file's document: `key.path: why` lines. Pure."""
    out = []
    if isinstance(data, dict):
        if not path and "source" in data:
            out.append("source: not a key of the file (GET /api/config's output): PUT the file's document "
                       "(GET /api/config/raw)")
        for k, v in data.items():
            out += effective_markers(v, f"{path}.{k}" if path else str(k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += effective_markers(v, f"{path}[{i}]")
    elif isinstance(data, str) and "***" in data:
        out.append(f"{path}: a masked secret (***) from GET /api/config: the real value would be lost")
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, str):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# What only root may change (server.user set).

# Dotted keys (or whole sections) that name files, directories, identities or the admin surface.
ROOT_ONLY = (
    "server.data_dir", "server.user", "server.group", "server.tls.cert", "server.tls.key", "admin",
    "advanced.log_target", "advanced.log_file", "advanced.syslog_socket", "auth.users_file", "auth.dovecot_socket",
    "domains.mailboxes", "domains.local_delivery.path", "outbound.relay_auth.password_file",
    "antivirus.definitions.database_dir", "antivirus.definitions.freshclam_path", "antivirus.definitions.sigtool_path",
    "antivirus.definitions.clamscan_path", "postscreen.cache.url",
)  # fmt: skip
ROOT_ONLY_WHY = "cannot be changed through the API while server.user is set; edit the file as root"
_DKIM_KEY = re.compile(r"dkim\.sign\[\d+\]\.key")
_SAFE_DKIM_KEY = re.compile(r"dkim/[A-Za-z0-9][A-Za-z0-9_.+-]{0,250}")  # filters/dkim.py key_path, relative to data_dir
_CUSTOM = "antivirus.definitions.custom_signatures"


def root_only_changes(old: Config, new: Config) -> list[str]:
    """The changes from `old` to `new` that only root may make (DESCRIPTION): `key.path: why`
    lines, empty when none. Pure."""
    pairs = [("", _fields(old), _fields(new))]
    for name in [*old.servers, *(n for n in new.servers if n not in old.servers)]:
        pairs.append((f"servers.{name}.", old.servers.get(name), new.servers.get(name)))
    out: list[str] = []
    for prefix, a, b in pairs:
        before, after = _leaves(a), _leaves(b)
        for key in [*before, *(k for k in after if k not in before)]:
            if before.get(key, _MISSING) != after.get(key, _MISSING) and _root_only(key):
                out.append(f"{prefix}{key}: {ROOT_ONLY_WHY}")
        old_keys = {v for k, v in before.items() if _DKIM_KEY.fullmatch(k)}
        for key, value in after.items():
            safe = isinstance(value, str) and _SAFE_DKIM_KEY.fullmatch(value) is not None
            if _DKIM_KEY.fullmatch(key) and value not in old_keys and not safe:
                out.append(f"{prefix}{key}: {ROOT_ONLY_WHY} (a key made by the panel, dkim/<name>, may be added)")
        local_before = {s for s in before.get(_CUSTOM) or [] if "://" not in str(s)}
        added = [s for s in after.get(_CUSTOM) or [] if "://" not in str(s) and s not in local_before]
        if added:
            out.append(f"{prefix}{_CUSTOM}: {ROOT_ONLY_WHY} (a local file {str(added[0])!r}; http(s) URLs may be added)")
    return out


def _fields(value: Any) -> Any:
    """A Config as plain data for _leaves (without `servers` and `source`); values that are not
    sections (an Endpoint, a NetMatch) stay whole. Pure."""
    if isinstance(value, BaseModel):
        return {k: _fields(getattr(value, k)) for k in type(value).model_fields if k not in ("servers", "source")}
    if isinstance(value, (list, tuple)):
        return [_fields(v) for v in value]
    return value


def _root_only(key: str) -> bool:
    for p in ROOT_ONLY:
        if key == p or key.startswith(p + ".") or p.startswith(key + "."):
            return True
    return False


def _leaves(value: Any, path: str = "") -> dict[str, Any]:
    """Plain data as {dotted key: value}: mappings and lists of mappings are walked (`a.b[0].c`);
    anything else (a scalar, a list of scalars, an empty list) is one value. Pure."""
    out: dict[str, Any] = {}
    if isinstance(value, dict):  # an empty one has nothing to compare
        for k, v in value.items():
            out.update(_leaves(v, f"{path}.{k}" if path else str(k)))
    elif isinstance(value, list) and any(isinstance(x, dict) for x in value):
        for i, v in enumerate(value):
            out.update(_leaves(v, f"{path}[{i}]"))
    elif path:
        out[path] = value
    return out


# ---------------------------------------------------------------------------------------------
# Validation and writing.


def validate(path: str, text: str, intended: dict[str, Any] | None = None, *, root_only_from: str | None = None) -> Config:
    """The Config this text gives when the server loads it from `path`; DocumentError if none.

    `intended`: the plain data the text was rendered from; reading it back must give the same.
    `root_only_from`: the current file's text (server.user set): a change root_only_changes
    names raises RootOnlyError, before any file the new text names is opened."""
    try:
        cfg = config_mod.load(path, text=text)
    except ConfigError as exc:
        raise DocumentError([strip_location(line, path) for line in exc.errors]) from None
    if intended is not None and yaml.safe_load(text) != intended:
        raise DocumentError(["(document): cannot be written as YAML that reads back the same"])
    if root_only_from is not None:
        try:
            refused = root_only_changes(config_mod.load(path, text=root_only_from), cfg)
        except ConfigError:
            refused = []  # the current file does not load: the root supervisor says so
        if refused:
            raise RootOnlyError(refused)
    from ..runtime import (
        check_files,  # late: the runtime imports the whole receive pipeline
    )

    problems = check_files(cfg)
    if problems:
        raise DocumentError([f"{key}: {message}" for key, message in problems])
    return cfg


def parse_body(body: bytes) -> Any:
    """A request body (YAML or JSON, UTF-8) as plain data; DocumentError naming the line."""
    try:
        return yaml.safe_load(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise DocumentError(["(document): not UTF-8"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise DocumentError([f"(document): does not parse{where}: {getattr(exc, 'problem', None) or exc}"]) from None


def write_atomically(path: Path, text: str, *, backup: bool = True) -> None:
    """Replace `path` with `text` (temp file, fsync, rename, fsync of the directory); the old
    content is kept as `<path>.bak` first, written the same way. A symbolic link is followed
    to the file it names. PermissionError when not root and the file is another user's."""
    path = Path(os.path.realpath(path))
    st = os.stat(path)
    if os.geteuid() != 0 and st.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}: replacing it would make it ours")
    if backup:
        _write_replace(path.with_name(path.name + ".bak"), path.read_bytes(), st)
    _write_replace(path, text.encode("utf-8"), st)


def _write_replace(target: Path, data: bytes, like: os.stat_result) -> None:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)  # O_EXCL, 0600
    tmp = Path(name)
    try:
        try:
            os.fchmod(fd, like.st_mode & 0o777)
            if os.geteuid() == 0:
                os.fchown(fd, like.st_uid, like.st_gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def prepare_put(path: str, current: str, body: bytes, *, yaml_body: bool, root_only: bool = False) -> tuple[str, Config]:
    """PUT: (the new file text, its Config). DocumentError when it cannot be applied (RootOnlyError,
    with `root_only`, when it changes what only root may)."""
    ro = current if root_only else None
    data = parse_body(body)
    if not isinstance(data, dict):
        raise DocumentError(["(top): expected a mapping of sections"])
    if yaml_body:
        text = body.decode("utf-8")
        return text, validate(path, text, root_only_from=ro)
    copied = effective_markers(data)
    if copied:
        raise DocumentError(copied)
    doc = load_document(current)
    sync(doc, data)
    text = render(doc, current)
    return text, validate(path, text, data, root_only_from=ro)


def prepare_patch(path: str, current: str, body: bytes, *, root_only: bool = False) -> tuple[str, Config]:
    """PATCH (a JSON merge patch): (the new file text, its Config). DocumentError when it cannot be
    applied (RootOnlyError, with `root_only`, when it changes what only root may)."""
    patch = parse_body(body)
    if not isinstance(patch, dict):
        raise DocumentError(["(top): a merge patch is an object of the keys to change"])
    base = yaml.safe_load(current) or {}
    if not isinstance(base, dict):
        raise DocumentError(["(top): the current file is not a mapping of sections"])
    doc = load_document(current)
    apply_patch(doc, patch)
    text = render(doc, current)
    return text, validate(path, text, merge_patch(base, patch), root_only_from=current if root_only else None)
