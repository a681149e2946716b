"""Faults in the middle of the pipeline, with real processes and the project's own object store.

Each test kills something with SIGKILL at a bad moment (the train stage mid-epoch, `dvc push`
mid-upload, the object store while `greenr run` runs), checks that the failure is reported
cleanly, runs the documented re-run (the same command again), and then checks that everything
agrees: the workspace matches dvc.lock, no partial file sits where a complete one belongs, the
remote holds every object intact (each object's MD5 is its name), nothing pushed before the
fault is lost, and a fresh clone pulls byte-identical data and model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from greenr.model import checkpoint
from greenr.ops import objectstore
from greenr.paths import EVALUATE_METRICS, MODEL_PATH, SHARDS_DIR
from greenr.processes import free_port
from tests.helpers.processes import parent_pid, port_closed, process_tree, spawn, still_running, wait_for_tree
from tests.helpers.project import TINY_PARAMS, VENV_BIN, init_project, point_remote_at, project_env, run, set_params

pytestmark = pytest.mark.e2e

# The killed training: resnet18 trains end to end, about a second per epoch at 32 px, time to be
# killed mid-epoch (the frozen default's head epochs take milliseconds).
EPOCHS = 10


@dataclass
class Workspace:
    root: Path
    project: Path
    state: Path
    env: dict[str, str]
    port: int

    def greenr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([str(VENV_BIN / "greenr"), *args], self.project, self.env, check=check, timeout=900)

    def dvc(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return run([str(VENV_BIN / "dvc"), *args], cwd or self.project, self.env, timeout=900)


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[Workspace]:
    project, state = tmp_path / "project", tmp_path / "state"
    env = project_env(project, state)
    init_project(project, env, per_class=30, params=TINY_PARAMS)
    port = free_port()
    point_remote_at(project, env, port)
    space = Workspace(tmp_path, project, state, env, port)
    yield space
    space.greenr("store", "stop", check=False)


# ---------------------------------------------------------------------------- the faults


def test_train_stage_killed_mid_epoch_then_rerun_completes(ws: Workspace) -> None:
    set_params(ws.project, {"model": {"arch": "resnet18"}, "train": {"epochs": EPOCHS}})
    with spawn([str(VENV_BIN / "greenr"), "run"], ws.project, _logs(ws, "first"), ws.env) as proc:
        _wait_for_log(ws, "first", proc, f"epoch 2/{EPOCHS}")  # so it is inside epoch 3 now
        _kill(proc.pid, "stages.train")
        code = proc.wait(timeout=300)
    out = _log(ws, "first")
    assert code == 2, out
    assert "`dvc repro` failed" in out and "Traceback" not in out  # a new remote: nothing to pull
    assert not (ws.project / MODEL_PATH).exists(), "no checkpoint may appear from a killed training"
    _assert_no_partial_files(ws.project)
    assert port_closed(ws.port) and not (ws.state / "objectstore" / "weed.pid").exists()

    ws.greenr("run")  # the documented re-run
    _assert_consistent(ws, pushed_before={})


def test_dvc_push_killed_mid_upload_then_rerun_completes(ws: Workspace) -> None:
    ws.dvc("repro")
    cached = [p for p in (ws.project / ".dvc" / "cache" / "files" / "md5").rglob("*") if p.is_file()]
    ws.greenr("store", "start")
    try:
        remote = objectstore.read_remote(ws.project)
        client = objectstore.s3_client(remote)
        proc = subprocess.Popen(
            [str(VENV_BIN / "dvc"), "push"],
            cwd=ws.project,
            env=ws.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 300
            while not client.list_objects_v2(Bucket=remote.bucket, MaxKeys=1).get("KeyCount"):
                assert proc.poll() is None and time.monotonic() < deadline, "dvc push ended before uploading"
                time.sleep(0.01)
            os.kill(proc.pid, signal.SIGKILL)  # the first objects are in: mid-upload
        finally:
            proc.kill()
            proc.wait()
        pushed = _remote_objects(ws)
    finally:
        ws.greenr("store", "stop")
    assert 0 < len(pushed) < len(cached), f"not mid-upload: {len(pushed)} of {len(cached)} objects were in"

    ws.greenr("push")  # the documented re-run (or `greenr run`)
    _assert_consistent(ws, pushed_before=pushed)


def test_object_store_killed_during_run_then_rerun_completes(ws: Workspace) -> None:
    ws.greenr("push")  # the data reach the remote first (the store runs just for the push)
    with _store_up(ws):
        pushed = _remote_objects(ws)
    assert pushed

    with spawn([str(VENV_BIN / "greenr"), "run"], ws.project, _logs(ws, "first"), ws.env) as proc:
        tree = wait_for_tree(proc.pid, lambda lines: any("stages.train" in line for line in lines.values()), 600)
        weed = [pid for pid, line in tree.items() if "weed" in line]
        assert len(weed) == 1, tree
        os.kill(weed[0], signal.SIGKILL)
        code = proc.wait(timeout=600)
    out = _log(ws, "first")
    assert code == 2, out
    assert "stopped answering during the run" in out and "rerun `greenr run`" in out, out
    assert "Traceback" not in out
    _assert_no_partial_files(ws.project)

    ws.greenr("run")  # the documented re-run: it starts the store again on the same data
    _assert_consistent(ws, pushed_before=pushed)


# ---------------------------------------------------------------------------- what consistent means


def _assert_consistent(ws: Workspace, pushed_before: dict[str, str]) -> None:
    _assert_no_partial_files(ws.project)
    assert json.loads(ws.dvc("status", "--json").stdout or "{}") == {}, "workspace differs from dvc.lock"
    lock = yaml.safe_load((ws.project / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            if out["md5"].endswith(".dir"):  # a directory output (the shards): its listing in DVC's cache
                listing = ws.project / ".dvc" / "cache" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]
                recorded = {entry["relpath"]: entry["md5"] for entry in json.loads(listing.read_text())}
                assert _tree_md5s(ws.project / out["path"]) == recorded, f"{out['path']} differs from dvc.lock"
            else:
                assert _md5(ws.project / out["path"]) == out["md5"], f"{out['path']} differs from dvc.lock"
    checkpoint.load(ws.project / MODEL_PATH)
    json.loads((ws.project / EVALUATE_METRICS).read_text())

    with _store_up(ws):
        assert json.loads(ws.dvc("status", "--cloud", "--json").stdout or "{}") == {}, "remote lacks objects"
        objects = _remote_objects(ws)
        broken = {key for key, digest in objects.items() if _name_md5(key) != digest}
        assert not broken, f"partial or corrupt objects on the remote: {broken}"
        lost = {key for key, digest in pushed_before.items() if objects.get(key) != digest}
        assert not lost, f"objects pushed before the fault are gone: {lost}"

        # A fresh clone gets exactly this workspace's data and model.
        run(["git", "add", "-A"], ws.project, ws.env)
        run(["git", "commit", "-qm", "pipeline outputs"], ws.project, ws.env)
        clone = ws.root / "clone"
        run(["git", "clone", "-q", str(ws.project), str(clone)], ws.root, ws.env)
        shutil.copy(ws.project / ".dvc" / "config.local", clone / ".dvc" / "config.local")
        ws.dvc("pull", cwd=clone)
    assert _tree_md5s(clone / "data") == _tree_md5s(ws.project / "data")
    assert _tree_md5s(clone / SHARDS_DIR) == _tree_md5s(ws.project / SHARDS_DIR)
    assert _md5(clone / MODEL_PATH) == _md5(ws.project / MODEL_PATH)


def _assert_no_partial_files(project: Path) -> None:
    """No temporary file of greenr.atomic (`.NAME.XXXX.tmp`) outside git's and DVC's own folders."""
    leftovers = [
        p.relative_to(project).as_posix()
        for p in project.rglob(".*.tmp")
        if p.relative_to(project).parts[0] not in (".git", ".dvc")
    ]
    assert not leftovers, f"partial files left behind: {leftovers}"


@contextlib.contextmanager
def _store_up(ws: Workspace) -> Iterator[None]:
    ws.greenr("store", "start")
    try:
        yield
    finally:
        ws.greenr("store", "stop")


def _remote_objects(ws: Workspace) -> dict[str, str]:
    """Every object in the remote's bucket -> the MD5 of its content (the store must be up)."""
    remote = objectstore.read_remote(ws.project)
    client = objectstore.s3_client(remote)
    objects = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=remote.bucket):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=remote.bucket, Key=item["Key"])["Body"].read()
            objects[item["Key"]] = hashlib.md5(body).hexdigest()
    return objects


def _name_md5(key: str) -> str:
    """DVC names each object by the MD5 of its content: `.../files/md5/ab/cdef...[.dir]`."""
    *_, head, tail = key.split("/")
    return head + tail.removesuffix(".dir")


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _tree_md5s(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _md5(p) for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- processes


def _logs(ws: Workspace, name: str) -> Path:
    folder = ws.root / name
    folder.mkdir(exist_ok=True)
    return folder


def _log(ws: Workspace, name: str) -> str:
    return (ws.root / name / "out.log").read_text(errors="replace")


def _wait_for_log(ws: Workspace, name: str, proc: subprocess.Popen, text: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while text not in _log(ws, name):
        if proc.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"never saw {text!r}:\n{_log(ws, name)[-3000:]}")
        time.sleep(0.05)


def _kill(root: int, command: str) -> None:
    """SIGKILL the one process under `root` whose command line contains `command`.

    A child it forks to run a tool (git, lscpu) carries the same command line until it execs, so
    of the matches the one whose parent is not a match is the stage itself."""
    found = {pid for pid, line in still_running(process_tree(root)).items() if command in line}
    topmost = [pid for pid in found if parent_pid(pid) not in found]
    assert len(topmost) == 1, found
    os.kill(topmost[0], signal.SIGKILL)
