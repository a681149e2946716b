"""The README tells the truth: its params table is params.yaml, its command tables are the CLI and
the Makefile."""

from __future__ import annotations

import re

import yaml

from greenr.cli import parser
from tests.helpers.project import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")
MAKEFILE = (REPO / "Makefile").read_text(encoding="utf-8")


def _leaves(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def _yaml_text(value: object) -> str:
    return yaml.safe_dump(value).removesuffix("\n...\n").strip()


def readme_params() -> dict[str, str]:
    """key -> default as the README's params table states them (`a`, `b` | `1`, `2` rows too)."""
    table = README.split("### Params (`params.yaml`)", 1)[1].split("\n\n")[2]
    found: dict[str, str] = {}
    for row in table.splitlines()[2:]:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        keys = re.findall(r"`([^`]+)`", cells[0])
        values = re.findall(r"`([^`]*)`", cells[1])
        assert len(keys) == len(values), f"README params row needs one default per key: {row}"
        found |= dict(zip(keys, values))
    return found


def test_params_table_lists_every_key_with_its_default() -> None:
    in_yaml = {
        key: _yaml_text(value) for key, value in _leaves(yaml.safe_load((REPO / "params.yaml").read_text())).items()
    }
    assert readme_params() == in_yaml


def test_every_cli_command_is_in_the_commands_table() -> None:
    commands = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    sub = next(a for a in parser()._actions if a.dest == "command")
    for name in sub.choices:  # type: ignore[union-attr]
        assert f"`greenr {name}" in commands, f"`greenr {name}` is missing from the README's Commands table"


def test_every_make_target_is_in_make_help_and_the_readme() -> None:
    phony = MAKEFILE.split(".PHONY:", 1)[1].splitlines()[0].split()
    helped = set(re.findall(r"make ([a-z-]+)", "\n".join(re.findall(r'@echo "(.*)"', MAKEFILE))))
    commands = README.split("## Commands", 1)[1].split("\n## ", 1)[0]
    for target in phony:
        if target in ("help", "test-tools"):  # `make` itself; an internal step of `make test`
            continue
        assert target in helped, f"`make help` does not mention `make {target}`"
        assert f"`make {target}" in commands, f"`make {target}` is missing from the README's Commands table"
