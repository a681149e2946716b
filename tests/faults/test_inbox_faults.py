"""`greenr inbox accept` killed with SIGKILL (the command and everything it started, as in a crash)
during `dvc push`, or while it moves items to accepted/: the re-run completes, and the inbox,
data/, data.dvc and the remote agree. (tests/ops/test_inbox.py kills the object store instead.)"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from greenr.data.dataset import data_version
from greenr.ops.inbox import ACCEPTED, Inbox, S3ItemStore, sha256_of
from tests.helpers.images import jpeg_bytes, scene
from tests.helpers.processes import process_tree
from tests.helpers.project import init_project, point_remote_at, project_env, run
from tests.helpers.s3 import remote_for, running_s3
from tests.helpers.serving import CLASSES

pytestmark = pytest.mark.e2e
PER_CLASS = 10  # images in the project's data before the inbox adds its own


@pytest.mark.parametrize(("kill_at", "items"), [("$ dvc push", 4), ("accepted ", 20)])
def test_inbox_accept_killed_midway_then_rerun_completes(tmp_path: Path, kill_at: str, items: int) -> None:
    env = project_env(tmp_path / "p", tmp_path / "state")
    project = init_project(tmp_path / "p", env, per_class=PER_CLASS)
    photos = [jpeg_bytes(scene(CLASSES[i % 2], 200 + i, size=64)) for i in range(items)]
    with running_s3(tmp_path / "s3") as server:
        env |= server.env
        point_remote_at(project, env, int(server.endpoint.rsplit(":", 1)[1]))
        box = Inbox(S3ItemStore(remote_for(server.endpoint, "greenr")))
        for i, data in enumerate(photos):
            box.add_vote(data, label=CLASSES[i % 2])

        accept = subprocess.Popen(
            ["greenr", "inbox", "accept", "--trust-feedback"],  # single votes: the faults are under test
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert accept.stderr is not None
        seen = []
        for line in accept.stderr:
            seen.append(line)
            if kill_at in line:
                os.kill(accept.pid, signal.SIGSTOP)  # frozen: it starts nothing more while we look
                for pid in process_tree(accept.pid):  # greenr and the dvc it runs, all at once
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                break
        accept.communicate(timeout=60)
        assert accept.returncode == -signal.SIGKILL, f"accept finished before the kill:\n{''.join(seen)}"

        # Killed: no item lost or in two places; nothing marked accepted before its data version was pushed.
        pending = {r.sha256 for r in box.records()}
        accepted = {r.sha256 for r in box.records(ACCEPTED)}
        assert pending | accepted == {sha256_of(p) for p in photos} and not pending & accepted
        if kill_at == "$ dvc push":
            assert not accepted
        else:
            assert accepted and pending, "the kill was meant to fall between two moves"

        rerun = run(["greenr", "inbox", "accept", "--trust-feedback"], project, env)  # the documented re-run
        assert "pushed to the DVC remote" in rerun.stdout, rerun.stdout
        status = box.status()
        assert (status["pending"], status["accepted"], status["orphans"]) == (0, items, 0)
        assert "up to date" in run(["dvc", "status", "data.dvc"], project, env).stdout
        assert "in sync" in run(["dvc", "status", "--cloud", "data.dvc"], project, env).stdout
        remote = server.client().list_objects_v2(Bucket="greenr", Prefix="dvc/")
        for item in remote.get("Contents", []):
            body = server.client().get_object(Bucket="greenr", Key=item["Key"])["Body"].read()
            *_, head, tail = item["Key"].split("/")
            assert hashlib.md5(body).hexdigest() == head + tail.removesuffix(".dir"), f"corrupt {item['Key']}"

    # Each inbox photo is in data/ exactly once, complete, under its label; nothing half-written.
    added = sorted((project / "data").glob("*/inbox-*"))
    assert len(added) == items
    assert {sha256_of(p.read_bytes()) for p in added} == {sha256_of(p) for p in photos}
    assert not list((project / "data").rglob(".*.tmp"))
    assert data_version(project)[1] == 2 * PER_CLASS + items
