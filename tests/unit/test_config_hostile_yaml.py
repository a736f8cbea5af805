"""A config text built to hurt the loader is refused with a file:line message (check-config, a
reload, and the root supervisor's channel all load through config.load): an unhashable key,
nesting deeper than the parser's stack, aliases that expand a million times."""

from __future__ import annotations

import pytest

from mtaserver import config

LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{n}: &{n} [{','.join([f'*{p}'] * 10)}]\n" for p, n in zip("abcde", "bcdef", strict=True)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [("? [a]\n: b\n", "unhashable"), ("[" * 30000, "nested too deeply"), (LAUGHS, f"more than {config.MAX_NODES} values")],
)
def test_hostile_yaml_is_a_config_error(text, message):
    with pytest.raises(config.ConfigError) as exc:
        config.load("/nonexistent/mtaserver.yaml", text=text)
    assert exc.value.errors[0].startswith("/nonexistent/mtaserver.yaml:") and message in exc.value.errors[0], exc.value.errors
