"""dvc.yaml agrees with the code: every stage lists what it imports, and writes where greenr.paths says."""

from __future__ import annotations

import copy

import yaml

from greenr import paths
from tests.helpers.imports import stage_dep_problems
from tests.helpers.project import REPO


def _dvc_yaml() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))


def _declared_outputs(dvc_yaml: dict) -> set[str]:
    found = set()
    for stage in dvc_yaml["stages"].values():
        for kind in ("outs", "metrics", "plots"):
            for entry in stage.get(kind) or []:
                found.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return found


def test_every_stage_lists_every_project_module_it_imports() -> None:
    problems = stage_dep_problems(REPO, _dvc_yaml())
    assert problems, "no `python -m stages.X` stage found in dvc.yaml"
    assert all(not found for found in problems.values()), problems


def test_the_check_catches_a_missing_dep() -> None:
    planted = copy.deepcopy(_dvc_yaml())
    deps = planted["stages"]["evaluate"]["deps"]
    deps.remove("greenr/evaluation")
    problems = stage_dep_problems(REPO, planted)
    assert problems["evaluate"] == ["imports greenr/evaluation/metrics.py but does not list it in deps"]
    assert problems["train"] == []
    # A module listed on its own instead of its package covers that module only.
    deps.append("greenr/evaluation/metrics.py")
    assert stage_dep_problems(REPO, planted)["evaluate"] == []


def test_the_check_catches_a_dep_that_does_not_exist() -> None:
    planted = copy.deepcopy(_dvc_yaml())
    planted["stages"]["split"]["deps"].append("greenr/no_such_module.py")
    assert stage_dep_problems(REPO, planted)["split"] == [
        "lists greenr/no_such_module.py in deps, which does not exist"
    ]


def test_stage_outputs_are_the_paths_the_code_writes() -> None:
    written = {
        paths.MODEL_PATH,
        paths.TRAIN_METRICS,
        paths.TRAINING_PLOT,
        paths.EVALUATE_METRICS,
        paths.ONNX_MODEL_PATH,
        paths.INT8_MODEL_PATH,
        paths.EXPORT_METRICS,
        paths.CONFUSION_PLOT,
        paths.ROC_PLOT,
        paths.PRC_PLOT,
        paths.RELIABILITY_PLOT,
        paths.DRIFT_REFERENCE,
        paths.SPLIT_RULE,
        paths.CLASSES_FILE,
        paths.SHARDS_DIR,
        *(paths.split_manifest(name) for name in ("train", "val", "test")),
    }
    assert _declared_outputs(_dvc_yaml()) == written


def test_top_level_plots_read_declared_outputs() -> None:
    dvc_yaml = _dvc_yaml()
    outputs = _declared_outputs(dvc_yaml)
    for plot in dvc_yaml["plots"]:
        (spec,) = plot.values()
        sources = spec["y"] if isinstance(spec["y"], dict) else {}
        assert set(sources) <= outputs, plot


def test_directory_deps_ignore_bytecode() -> None:
    """A package listed as a dep is hashed by DVC as a folder: compiled bytecode in it must not
    count, or every Python version and every import would invalidate the stages."""
    ignored = (REPO / ".dvcignore").read_text(encoding="utf-8").split()
    assert "__pycache__/" in ignored and "*.pyc" in ignored
