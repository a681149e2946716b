"""Helpers shared by tests: synthetic images and throwaway copies of the project."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def class_image(label: str, seed: int, size: int = 48) -> Image.Image:
    """Two visibly different classes: yellow blobs on green ("dandelion"), green noise ("grass")."""
    rng = np.random.default_rng(seed)
    green = np.zeros((size, size, 3), dtype=np.float64)
    green[..., 1] = rng.uniform(90, 170, (size, size))
    green[..., 0] = rng.uniform(20, 70, (size, size))
    green[..., 2] = rng.uniform(10, 50, (size, size))
    if label == "dandelion":
        yy, xx = np.mgrid[0:size, 0:size]
        for _ in range(rng.integers(2, 5)):
            cy, cx = rng.uniform(0.2, 0.8, 2) * size
            radius = rng.uniform(0.12, 0.25) * size
            blob = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
            green[blob] = (240, 210, 30)
    return Image.fromarray(green.astype(np.uint8), mode="RGB")


def jpeg_bytes(img: Image.Image, **save_args: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=90, **save_args)
    return buffer.getvalue()


def make_images(folder: Path, label: str, count: int, size: int = 48, seed: int = 0) -> list[Path]:
    """`count` generated JPEGs of one class in `folder`, named like the real data set."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:08d}.jpg"
        path.write_bytes(
            jpeg_bytes(class_image(label, seed=seed * 100_000 + sum(map(ord, label)) * 100 + i, size=size))
        )
        paths.append(path)
    return paths


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


def copy_project(dest: Path) -> Path:
    """The project's source files (tracked or not ignored) without data, state or outputs."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    skip_prefixes = ("data.dvc", "dvc.lock", "metrics/", "plots/", "splits/", ".dvc/config.local")
    for rel in filter(None, listed):
        if rel.startswith(skip_prefixes) or not (REPO / rel).is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, target)
    return dest


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
