"""The shipped conf/mtaserver.yaml survives the admin API's rewrite unchanged.

Found by walking README.md: one `PATCH /api/config` (outbound.relay_host) also rewrote the three
postscreen deep-test lines, whose flow mappings were aligned by hand (`bare_newline:     {...}`),
so the operator's diff against the `.bak` showed four changed lines for one key.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from mtaserver.admin.configfile import apply_patch, load_document, render

CONF = Path(__file__).resolve().parents[2] / "conf" / "mtaserver.yaml"


def test_the_shipped_file_renders_back_byte_for_byte():
    text = CONF.read_text()
    out = render(load_document(text), text)
    assert out == text, "".join(difflib.unified_diff(text.splitlines(True), out.splitlines(True), n=0))


def test_a_patch_of_one_key_changes_one_line():
    text = CONF.read_text()
    doc = load_document(text)
    apply_patch(doc, {"outbound": {"relay_host": "[127.0.0.1]:1"}})
    changed = [line for line in difflib.unified_diff(text.splitlines(), render(doc, text).splitlines(), n=0, lineterm="")
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]  # fmt: skip
    assert len(changed) == 2, changed
    assert changed[1].startswith("+  relay_host: '[127.0.0.1]:1' ")
