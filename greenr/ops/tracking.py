"""MLflow tracking: embedded SQLite store by default, `MLFLOW_TRACKING_URI` to use a server."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from greenr import scm
from greenr.data.dataset import data_version
from greenr.paths import main_checkout, repo_root, state_dir

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow

log = logging.getLogger(__name__)
EXPERIMENT_NAME = "greenr"


def embedded_tracking_uri() -> str:
    folder = state_dir() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or embedded_tracking_uri()


def default_artifact_location() -> str | None:
    """Artifacts beside the embedded database; a real server decides for itself."""
    # Compared by value: mlflow.set_tracking_uri() itself exports MLFLOW_TRACKING_URI.
    if tracking_uri() != embedded_tracking_uri():
        return None
    folder = state_dir() / "mlflow" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def ui_command(port: int) -> list[str]:
    """`mlflow ui` on 127.0.0.1:`port` over this project's tracking store and artifacts."""
    cmd = [
        str(Path(sys.executable).parent / "mlflow"),
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        # One user on loopback: one worker starts in seconds instead of four.
        "--workers",
        "1",
        "--backend-store-uri",
        tracking_uri(),
    ]
    if artifacts := default_artifact_location():
        cmd += ["--default-artifact-root", artifacts]
    return cmd


def experiment_id() -> str:
    mlflow.set_tracking_uri(tracking_uri())
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT_NAME)
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=default_artifact_location())


def run_tags(stage: str) -> dict[str, str]:
    commit, dirty = scm.head()
    tags = {
        "mlflow.source.git.commit": commit,
        "git_commit": commit,
        "git_dirty": str(dirty).lower(),
        "data_version": data_version(repo_root())[0] or "unknown",
        "dvc_stage": stage,
        "checkout": str(main_checkout()),
    }
    if exp := os.environ.get("DVC_EXP_NAME"):
        tags["dvc_exp_name"] = exp
    return tags


def run_name() -> str:
    if exp := os.environ.get("DVC_EXP_NAME"):
        return exp
    commit, dirty = scm.head()
    return f"{commit[:7]}{'-dirty' if dirty else ''}"


def find_run_id(checkpoint_sha256: str) -> str | None:
    """The latest run that trained the checkpoint with this SHA-256, if any."""
    runs = mlflow.search_runs(
        [experiment_id()],
        filter_string=f"tags.checkpoint_sha256 = '{checkpoint_sha256}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
        output_format="list",
    )
    return runs[0].info.run_id if runs else None


def register_checkpoint_model(checkpoint_sha256: str, name: str, alias: str) -> str:
    """Register the model logged by the run that trained this checkpoint; point `alias` at it.

    Returns the new model version. The version is tagged with the checkpoint's SHA-256 so a
    served model can be traced back to its DVC-tracked file.
    """
    from greenr.errors import GreenrError

    run_id = find_run_id(checkpoint_sha256)
    if run_id is None:
        raise GreenrError(
            f"no MLflow run has tag checkpoint_sha256 = {checkpoint_sha256[:12]}…",
            "train the model on this machine (`dvc repro`), or point "
            "MLFLOW_TRACKING_URI at the server that recorded its training",
        )
    client = mlflow.MlflowClient()
    models = client.search_logged_models(
        experiment_ids=[experiment_id()], filter_string=f"source_run_id = '{run_id}'", max_results=1
    )
    source = f"models:/{models[0].model_id}" if models else f"runs:/{run_id}/model"
    version = mlflow.register_model(source, name, tags={"checkpoint_sha256": checkpoint_sha256})
    client.set_registered_model_alias(name, alias, version.version)
    return str(version.version)


@contextlib.contextmanager
def start_run(stage: str, checkpoint_sha256: str | None = None) -> Iterator[Any]:
    """A run for this pipeline execution.

    `evaluate` joins the run that trained the checkpoint (found by its SHA-256 tag) so that
    training curves and test metrics sit in one MLflow run; if none exists it opens its own.
    """
    exp_id = experiment_id()
    run_id = None
    if checkpoint_sha256 and stage != "train":
        run_id = find_run_id(checkpoint_sha256)
    with mlflow.start_run(run_id=run_id, experiment_id=exp_id, run_name=None if run_id else run_name()) as run:
        mlflow.set_tags({k: v for k, v in run_tags(stage).items() if not (run_id and k == "dvc_stage")})
        yield run


@contextlib.contextmanager
def _without_log_records(logger: str, starting: str) -> Iterator[None]:
    """Drop `logger`'s records whose message starts with `starting`, for the duration."""

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(starting)

    target = logging.getLogger(logger)
    target.addFilter(keep)
    try:
        yield
    finally:
        target.removeFilter(keep)


def log_model(model: Any, checkpoint_path: Path, spec: Any) -> None:
    """Log the model in MLflow's pt2 format, with our checkpoint file beside it."""
    import numpy as np
    import torch

    example = np.zeros((2, 3, spec.image_size, spec.image_size), dtype=np.float32)
    plain = model.cpu().eval().to(memory_format=torch.contiguous_format)
    # uv's environments have no pip: MLflow then warns that conda.yaml lists pip unversioned, which
    # no user of this pipeline can act on (the model's requirements are pinned below).
    with _without_log_records("mlflow.utils.environment", "Failed to resolve installed pip version"):
        mlflow.pytorch.log_model(
            plain,
            name="model",
            input_example=example,
            serialization_format="pt2",
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            extra_files=[str(checkpoint_path)],
        )
