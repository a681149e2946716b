"""uv.lock is universal in fact, not only in its header: every package that installs on Linux x86_64
under one supported CPython installs under the others too (a lock carried over from a 3.11-only
resolution keeps 3.11-only wheel lists, and `uv sync` on 3.13 then stops)."""

from __future__ import annotations

import tomllib

from packaging.utils import parse_wheel_filename

from tests.helpers.project import REPO

SUPPORTED = ("cp311", "cp312", "cp313")


def _installs_on(wheels: list[str], python: str) -> bool:
    for name in wheels:
        for tag in parse_wheel_filename(name)[3]:
            if "x86_64" not in tag.platform and tag.platform != "any":
                continue
            if tag.interpreter == python or tag.interpreter in ("py3", "py2.py3") or tag.abi == "abi3":
                return True
    return False


def test_every_locked_binary_package_has_wheels_for_every_supported_python() -> None:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    missing = []
    for package in lock["package"]:
        wheels = [w["url"].rsplit("/", 1)[1] for w in package.get("wheels", [])]
        if not wheels or "sdist" in package:
            continue
        on = {python: _installs_on(wheels, python) for python in SUPPORTED}
        if any(on.values()) and not all(on.values()):
            missing.append(
                f"{package['name']} {package['version']}: no wheel for {[p for p, ok in on.items() if not ok]}"
            )
    assert not missing, "re-lock them: uv lock --upgrade-package NAME==VERSION\n" + "\n".join(missing)
