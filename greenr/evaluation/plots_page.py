"""`dvc plots show|diff` pages that render offline.

DVC's default page loads Vega, Vega-Lite and Vega-Embed from a CDN, so without internet it is
blank. This writes an HTML template (`plots.html_template`) with those three scripts inline,
fetched once from the npm registry at the versions DVC's renderer targets and checked against
the registry's published SHA-512, and points `.dvc/config.local` at it. The template has no
`{scripts}` placeholder, so DVC's CDN tags are dropped.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from greenr import scm
from greenr.atomic import atomic_open
from greenr.errors import GreenrError
from greenr.paths import repo_root, state_dir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Script:
    package: str
    version: str
    path: str  # inside the package tarball
    sha512: str  # the registry's `dist.integrity`, base64


# The versions dvc-render's VegaRenderer.SCRIPTS loads from the CDN.
SCRIPTS = (
    Script(
        "vega",
        "5.20.2",
        "package/build/vega.min.js",
        "qmH7aD9GGPpssVdxL1xgcdxTbQzyRUeRR16Os385ymvQhiwCYQNA6+eXUPAZDTVLfk0RXu6Jzj6kUE5jQ80EVw==",
    ),
    Script(
        "vega-lite",
        "5.2.0",
        "package/build/vega-lite.min.js",
        "Yxcg8MvYfxHcG6BbkaKT0oVCIMIcE19UvqIsEwBmyd/7h2nzW7oRnID81T8UrY7hpDrIr6wa2JADOT2dhGNErw==",
    ),
    Script(
        "vega-embed",
        "6.18.2",
        "package/build/vega-embed.min.js",
        "wcDyQPE4J5aiCDc3/suH5RQDvrKkjuLkhzUcbOLwEkNF8/+pp17tS0JghzEvAPNRg+5aG1/N2ydixq8Lk3dOlg==",
    ),
)
PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <!-- Vega, Vega-Lite and Vega-Embed inline (greenr plots-template): the page needs no network. -->
{inline_scripts}
    <style>
        table { border-spacing: 15px; }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def template_path() -> Path:
    return state_dir() / "plots" / f"offline-{'-'.join(s.version for s in SCRIPTS)}.html"


def registry() -> str:
    return (os.environ.get("NPM_CONFIG_REGISTRY") or "https://registry.npmjs.org/").rstrip("/")


def fetch(script: Script, timeout: float = 60) -> str:
    """The script's text from its npm tarball, after checking the tarball's SHA-512."""
    url = f"{registry()}/{script.package}/-/{script.package}-{script.version}.tgz"
    fix = "check the network (the npm registry must be reachable) or set NPM_CONFIG_REGISTRY to a mirror"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
    except OSError as exc:
        raise GreenrError(f"could not download {url}: {exc}", fix) from None
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != script.sha512:
        raise GreenrError(
            f"{url} has SHA-512 {digest[:16]}…, expected {script.sha512[:16]}…",
            "the registry served other bytes than the published release; check NPM_CONFIG_REGISTRY",
        )
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        member = archive.extractfile(script.path)
        if member is None:
            raise GreenrError(f"{url} lacks {script.path}", fix)
        return member.read().decode("utf-8")


def write_template(force: bool = False) -> Path:
    """Write the offline template (unless it exists) and set `plots.html_template` in config.local."""
    path = template_path()
    if force or not path.is_file():
        inline = "\n".join(f"    <script>\n{fetch(script)}\n    </script>" for script in SCRIPTS)
        with atomic_open(path, "w", encoding="utf-8") as handle:
            # `{plot_divs}` and `{refresh_tag}` stay for DVC to fill in; `{scripts}` is left out.
            handle.write(PAGE.replace("{inline_scripts}", inline))
        log.info("wrote %s", path)
    root = repo_root()
    scm.dvc("config", "--local", "plots.html_template", os.path.relpath(path, root / ".dvc"), cwd=root, capture=True)
    return path
