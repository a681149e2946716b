"""Every path the project uses, resolved in one place."""

from __future__ import annotations

import os
from pathlib import Path

# Every file the pipeline reads or writes, relative to the project root. dvc.yaml names the same
# paths; tests/test_dvc_yaml.py checks that the two agree.
PARAMS_FILE = "params.yaml"
DVC_YAML = "dvc.yaml"
DVC_LOCK = "dvc.lock"
DATA_DIR = "data"
DATA_DVC = "data.dvc"
SPLITS_DIR = "splits"
MODELS_DIR = "models"
MODEL_PATH = "models/stage-1.pth"
# The checkpoint exported to ONNX (stage `export`): what the server and `greenr predict` run.
ONNX_MODEL_PATH = "models/stage-1.onnx"
# Its INT8 quantization (stage `export`, `export.int8`), beside it: greenr.backends.model_file.int8_path.
INT8_MODEL_PATH = "models/stage-1.int8.onnx"
METRICS_DIR = "metrics"
TRAIN_METRICS = "metrics/train.json"
EVALUATE_METRICS = "metrics/evaluate.json"
# The ONNX export's parity with the checkpoint on the test split.
EXPORT_METRICS = "metrics/export.json"
# Statistics of the training images that the server compares requests with (greenr/ops/drift.py).
DRIFT_REFERENCE = "metrics/drift_reference.json"
# Feedback and uncertain inputs waiting to become data: this prefix in the DVC remote's bucket, or
# this folder under the state folder when no store answers (greenr/ops/inbox.py).
INBOX_PREFIX = "inbox"
# Each split's images decoded, resized and packed once into tar shards (stage `prepare`,
# greenr/data/shards.py): what train, evaluate, export and `greenr cv` read.
SHARDS_DIR = "shards"
PLOTS_DIR = "plots"
TRAINING_PLOT = "plots/training.csv"
EVALUATE_PLOTS_DIR = "plots/evaluate"
CONFUSION_PLOT = "plots/evaluate/confusion.csv"
# One CSV per class: `<class>.csv` (2 classes: the positive class only; more: each class against the rest).
ROC_PLOT = "plots/evaluate/roc"
PRC_PLOT = "plots/evaluate/prc"
RELIABILITY_PLOT = "plots/evaluate/reliability.csv"


# The split params the manifests were made with: images keep their split while these stay the same.
SPLIT_RULE = "splits/rule.json"
# The class names, in the order of the model's outputs: the split stage finds them in data/ and
# every later step (train, evaluate, cv, prepare) reads them from here.
CLASSES_FILE = "splits/classes.json"


def split_manifest(name: str) -> str:
    """The committed manifest of one split: `splits/{train,val,test}.csv`."""
    return f"{SPLITS_DIR}/{name}.csv"


_EXP_WORKSPACE_MARKER = (".dvc", "tmp", "exps")


def repo_root() -> Path:
    """The project checkout (or the DVC experiment workspace) we run in.

    `GREENR_ROOT` wins; else the nearest folder above the working directory with both
    `dvc.yaml` and `params.yaml`; else the folder this package was installed from.
    """
    if env := os.environ.get("GREENR_ROOT"):
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / DVC_YAML).is_file() and (folder / PARAMS_FILE).is_file():
            return folder
    return Path(__file__).resolve().parents[1]


def main_checkout(root: Path | None = None) -> Path:
    """The user's checkout, also when running inside `dvc exp run --temp/--queue`.

    DVC runs queued experiments in `<repo>/.dvc/tmp/exps/<tmpdir>`; state such as the MLflow
    database must still go to the user's checkout, not to a folder DVC deletes afterwards.
    """
    root = (root or repo_root()).resolve()
    parts = root.parts
    n = len(_EXP_WORKSPACE_MARKER)
    for i in range(len(parts) - n):
        if parts[i : i + n] == _EXP_WORKSPACE_MARKER:
            return Path(*parts[:i])
    return root


def state_dir() -> Path:
    """Ignored folder for everything that is not source: object-store data, MLflow DB, caches."""
    if env := os.environ.get("GREENR_STATE_DIR"):
        path = Path(env).resolve()
    else:
        path = main_checkout() / ".state"
    path.mkdir(parents=True, exist_ok=True)
    return path
