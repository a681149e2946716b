"""Throwaway copies of the project (git + DVC) for tests that run the real CLIs in them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers.images import make_images

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
VENV_BIN = Path(sys.executable).parent
# The pipeline's outputs: left out of a copy that is to produce its own.
OUTPUTS = ("data.dvc", "dvc.lock", "metrics/", "plots/", "splits/", ".dvc/config.local")

TINY_PARAMS = {
    "model": {"image_size": 32},
    "train": {"epochs": 2, "batch_size": 8, "augment": {"color_jitter": 0.0}},
    "evaluate": {"bootstrap_samples": 50},
}


def set_params(project: Path, overrides: dict) -> None:
    path = project / "params.yaml"
    params = yaml.safe_load(path.read_text())

    def merge(dst: dict, src: dict) -> None:
        for key, value in src.items():
            if isinstance(value, dict) and isinstance(dst.get(key), dict):
                merge(dst[key], value)
            else:
                dst[key] = value

    merge(params, overrides)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def project_env(project: Path, state: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PATH": f"{VENV_BIN}{os.pathsep}{env['PATH']}",
            "GREENR_STATE_DIR": str(state),
            "GREENR_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DVC_NO_ANALYTICS": "1",
            "GIT_AUTHOR_NAME": "test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
        }
    )
    for key in ("GREENR_ROOT", "DATA_SOURCE", "MLFLOW_TRACKING_URI", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(key, None)
    return env


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
        )
    return result


def alarming_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    """The lines of a command's output that read as trouble: DVC's and our ERROR/WARNING lines,
    Python warnings, tracebacks."""
    words = ("ERROR", "WARNING", "Warning:", "Traceback", "error:")
    return [line for line in (result.stdout + result.stderr).splitlines() if any(word in line for word in words)]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout


def copy_project(dest: Path, outputs: bool = False) -> Path:
    """The project's source files (tracked, or new and not ignored), without data and state;
    without the pipeline's outputs too unless `outputs`."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for rel in filter(None, listed):
        if (not outputs and rel.startswith(OUTPUTS)) or not (REPO / rel).is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


def commit_all(root: Path, message: str = "test project") -> None:
    """git init (if needed) and commit everything, as a test user."""
    if not (root / ".git").is_dir():
        git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "test@example.invalid")
    git(root, "config", "user.name", "test")
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)


def init_project(
    dest: Path, env: dict[str, str], per_class: int = 10, size: int = 48, params: dict | None = None
) -> Path:
    """A committed copy of the project with synthetic data tracked by data.dvc."""
    copy_project(dest)
    for label in ("dandelion", "grass"):
        make_images(dest / "data" / label, label, per_class, size)
    set_params(dest, params if params is not None else TINY_PARAMS)
    run(["git", "init", "-q", "-b", "main"], dest, env)
    run(["dvc", "add", "-q", "data"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "-qm", "test project"], dest, env)
    return dest


def point_remote_at(project: Path, env: dict[str, str], port: int, url: str | None = None) -> None:
    run(["dvc", "remote", "modify", "--local", "minio", "endpointurl", f"http://127.0.0.1:{port}"], project, env)
    if url:
        run(["dvc", "remote", "modify", "--local", "minio", "url", url], project, env)


def evaluate_metrics(accuracy: float, f1: float, interval: tuple[float, float] = (0.8, 0.95)) -> dict:
    """A metrics/evaluate.json body as the evaluate stage writes it."""
    return {
        "accuracy": accuracy,
        "macro": {"precision": f1, "recall": f1, "f1": f1},
        "roc_auc": 0.95,
        "log_loss": 0.3,
        "n": 60,
        "per_class": {
            "dandelion": {"precision": f1, "recall": f1, "f1": f1, "support": 30},
            "grass": {"precision": f1, "recall": f1, "f1": f1, "support": 30},
        },
        "confusion_matrix": {"dandelion": {"dandelion": 27, "grass": 3}, "grass": {"dandelion": 3, "grass": 27}},
        "bootstrap": {"confidence": 0.95, "samples": 1000, "accuracy": list(interval), "macro_f1": list(interval)},
    }


def metrics_repo(
    root: Path, base: dict, candidate: dict, commit_candidate: bool = True, params_change: dict | None = None
) -> Path:
    """A git + DVC repository at `root` with the project's dvc.yaml and params.yaml: `base` metrics
    committed, `candidate` metrics (and `params_change`) on top, committed if `commit_candidate`."""
    root.mkdir(parents=True)
    git(root, "init", "-q", "-b", "main")
    git(root, "config", "user.email", "t@example.invalid")
    git(root, "config", "user.name", "test")
    dvc = str(VENV_BIN / "dvc")
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([dvc, "init", "-q"], cwd=root, check=True, capture_output=True, env=env)
    subprocess.run([dvc, "config", "core.analytics", "false"], cwd=root, check=True, capture_output=True, env=env)
    (root / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "metrics").mkdir()
    (root / "metrics" / "evaluate.json").write_text(json.dumps(base, indent=2))
    git(root, "add", ".")
    git(root, "commit", "-qm", "base")
    (root / "metrics" / "evaluate.json").write_text(json.dumps(candidate, indent=2))
    if params_change:
        for section, values in params_change.items():
            params[section].update(values)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    if commit_candidate:
        git(root, "commit", "-qam", "candidate")
    return root
