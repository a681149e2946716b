"""End to end: the real dvc CLI, a real local S3 server, a real MLflow store, a fresh clone."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from greenr.processes import free_port
from tests.helpers.project import alarming_lines, init_project, point_remote_at, project_env, run, set_params

pytestmark = pytest.mark.e2e


DETERMINISTIC_OUTPUTS = [
    "metrics/evaluate.json",
    "metrics/train.json",
    "plots/training.csv",
    "plots/evaluate/roc/dandelion.csv",
    "plots/evaluate/reliability.csv",
    "models/stage-1.pth",
    "models/stage-1.onnx",
    "metrics/export.json",
    "splits/train.csv",
]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tree_digests(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("e2e")
    project, state = root / "project", root / "state"
    env = project_env(project, state)
    init_project(project, env, per_class=20)
    port = free_port()
    point_remote_at(project, env, port)
    space = SimpleNamespace(root=root, project=project, state=state, env=env, port=port)
    space.main_job = run(["greenr", "run"], project, env)
    space.first_outputs = {name: digest(project / name) for name in DETERMINISTIC_OUTPUTS}
    yield space
    run(["greenr", "store", "stop"], project, env, check=False)


def greenr(ws: SimpleNamespace, *args: str, check: bool = True):
    return run(["greenr", *args], ws.project, ws.env, check=check)


def dvc(ws: SimpleNamespace, *args: str, cwd: Path | None = None):
    return run(["dvc", *args], cwd or ws.project, ws.env)


def test_main_job_trains_evaluates_pushes_and_stops_the_store_it_started(ws):
    out = ws.main_job.stdout
    assert "Test metrics" in out and "accuracy" in out
    assert alarming_lines(ws.main_job) == [], "a first run on an empty remote is not alarming"
    report = json.loads((ws.project / "metrics/evaluate.json").read_text())
    assert 0.0 <= report["accuracy"] <= 1.0 and report["n"] == 6
    assert 0.0 <= report["ece"] <= 1.0 and report["temperature"] > 0
    with (ws.project / "plots/evaluate/reliability.csv").open() as handle:
        bins = list(csv.DictReader(handle))
    assert sum(int(row["count"]) for row in bins) == report["n"], "every test image falls in one reliability bin"
    assert (ws.project / "models/stage-1.pth").is_file()
    assert not (ws.state / "objectstore" / "weed.pid").exists()
    assert "not answering" in greenr(ws, "store", "status").stdout


def test_mlflow_run_has_params_epoch_metrics_model_and_tags(ws):
    import mlflow

    # A client, not mlflow.set_tracking_uri(): that exports MLFLOW_TRACKING_URI to later tests.
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{ws.state / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("greenr")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, "evaluate must log into the run that trained the checkpoint"
    assert runs[0].info.artifact_uri.startswith((ws.state / "mlflow" / "artifacts").as_uri())
    assert not (ws.project / "mlruns").exists(), "artifacts must not land in the working directory"
    data = runs[0].data
    assert data.params["train.epochs"] == "2" and data.params["model.arch"] == "efficientnet_lite0"
    assert {"val_acc", "train_loss", "test_accuracy", "test_macro_f1"} <= set(data.metrics)
    history = client.get_metric_history(runs[0].info.run_id, "val_acc")
    assert [m.step for m in history] == [1, 2]
    commit = run(["git", "rev-parse", "HEAD"], ws.project, ws.env).stdout.strip()
    assert data.tags["git_commit"] == commit
    lock = (ws.project / "data.dvc").read_text()
    assert data.tags["data_version"] in lock
    assert len(data.tags["checkpoint_sha256"]) == 64
    logged = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert [m.source_run_id for m in logged] == [runs[0].info.run_id]


def test_fresh_clone_pulls_byte_identical_images_and_model(ws):
    greenr(ws, "store", "start")
    try:
        run(["git", "add", "-A"], ws.project, ws.env)
        run(["git", "commit", "-qm", "pipeline outputs"], ws.project, ws.env)
        clone = ws.root / "clone"
        run(["git", "clone", "-q", str(ws.project), str(clone)], ws.root, ws.env)
        assert not (clone / "data").exists() and not (clone / "models" / "stage-1.pth").exists()
        shutil.copy(ws.project / ".dvc" / "config.local", clone / ".dvc" / "config.local")
        dvc(ws, "pull", cwd=clone)
        assert tree_digests(clone / "data") == tree_digests(ws.project / "data")
        for model in ("models/stage-1.pth", "models/stage-1.onnx"):
            assert digest(clone / model) == digest(ws.project / model)
        status = dvc(ws, "status", cwd=clone).stdout
        assert "up to date" in status
    finally:
        greenr(ws, "store", "stop")


def test_nothing_changed_runs_nothing_and_evaluate_param_does_not_retrain(ws):
    assert "Running stage" not in dvc(ws, "repro").stdout
    set_params(ws.project, {"evaluate": {"bootstrap_samples": 40}})
    out = dvc(ws, "repro").stdout
    assert "Running stage 'evaluate'" in out
    assert "Running stage 'train'" not in out and "Running stage 'split'" not in out
    run(["git", "checkout", "params.yaml"], ws.project, ws.env)
    dvc(ws, "repro")


def test_forced_repro_gives_byte_identical_metrics_and_model(ws):
    dvc(ws, "repro", "--force")
    again = {name: digest(ws.project / name) for name in DETERMINISTIC_OUTPUTS}
    assert again == ws.first_outputs


def test_experiments_and_diffs_work(ws):
    run(["git", "add", "-A"], ws.project, ws.env)
    run(["git", "commit", "-qm", "baseline", "--allow-empty"], ws.project, ws.env)
    dvc(ws, "exp", "run", "-n", "lr-high", "-S", "train.lr=0.03")
    table = json.loads(dvc(ws, "exp", "show", "--json").stdout)
    names = [exp.get("name") for rev in table for exp in (rev.get("experiments") or [])]
    assert "lr-high" in json.dumps(table) or "lr-high" in names
    params = json.loads(dvc(ws, "params", "diff", "--json").stdout)
    change = params["params.yaml"]["train.lr"]
    assert (change["old"], change["new"]) == (0.003, 0.03)
    metrics = json.loads(dvc(ws, "metrics", "diff", "--json").stdout)
    assert "metrics/evaluate.json" in metrics
    plots = dvc(ws, "plots", "diff", "--json").stdout
    assert "plots/training.csv" in plots
    run(["git", "checkout", "--", "."], ws.project, ws.env)


def test_wrong_credentials_give_a_clear_error(ws):
    greenr(ws, "store", "start")
    try:
        dvc(ws, "remote", "modify", "--local", "minio", "secret_access_key", "wrong-secret")
        result = greenr(ws, "push", check=False)
        assert result.returncode == 2
        assert "rejected the credentials" in result.stderr and "Traceback" not in result.stderr
    finally:
        greenr(ws, "store", "stop")


def test_stopped_store_and_missing_bucket_give_clear_errors(ws):
    result = greenr(ws, "store", "check", check=False)
    assert result.returncode == 2
    assert "not answering" in result.stderr and "greenr store start" in result.stderr
    assert "Traceback" not in result.stderr
    store_env = dict(ws.env)
    greenr(ws, "store", "start")
    try:
        dvc(ws, "remote", "modify", "--local", "minio", "url", "s3://no-such-bucket/dvc")
        missing = greenr(ws, "store", "check", check=False)
        assert missing.returncode == 2 and "does not exist" in missing.stderr
    finally:
        run(["dvc", "remote", "modify", "--local", "--unset", "minio", "url"], ws.project, store_env)
        greenr(ws, "store", "stop")
