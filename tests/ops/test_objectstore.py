"""The local object store: `greenr store start --foreground` runs it as a child that stops with it."""

from __future__ import annotations

import signal
from pathlib import Path

from greenr.processes import free_port
from tests.helpers.processes import assert_stops_cleanly, spawn, wait_for_tree, wait_for_url
from tests.helpers.project import VENV_BIN, commit_all, copy_project, point_remote_at, project_env, run


def test_store_start_foreground_stops_the_store_on_sigterm(tmp_path: Path):
    project = copy_project(tmp_path / "project")
    env = project_env(project, tmp_path / "state")
    commit_all(project)
    port = free_port()
    point_remote_at(project, env, port)
    with spawn([str(VENV_BIN / "greenr"), "store", "start", "--foreground"], project, tmp_path, env) as proc:
        wait_for_tree(proc.pid, lambda tree: any("weed" in line for line in tree.values()), timeout=120)
        wait_for_url(proc, f"http://127.0.0.1:{port}/", timeout=120, log=tmp_path / "out.log", any_status=True)
        pid_file = tmp_path / "state" / "objectstore" / "weed.pid"
        assert pid_file.is_file()
        status = run([str(VENV_BIN / "greenr"), "store", "status"], project, env).stdout
        assert "answering" in status and "not answering" not in status
        assert assert_stops_cleanly(proc, [port]) == 128 + signal.SIGTERM
    assert not pid_file.exists()
