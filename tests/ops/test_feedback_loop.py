"""The loop, end to end, with the real local object store, a real server process and the real CLI:

feedback for several photos (a duplicate and bad inputs among them) -> inbox objects in the store ->
`greenr inbox accept` (which leaves single votes alone; `--trust-feedback` takes them) -> a new data
version in which the old images keep their split -> `dvc repro` retrains -> the promotion gate ->
`POST /model/reload` -> /model shows the new checkpoint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
import yaml

from greenr.data.dataset import SPLITS, data_version, read_manifest
from greenr.data.upload_corpus import bad_corpus, encode
from greenr.paths import ONNX_MODEL_PATH
from tests.helpers.images import jpeg_bytes, scene
from tests.helpers.project import TINY_PARAMS, git, init_project, point_remote_at, project_env, run
from tests.helpers.s3 import running_s3
from tests.helpers.serving import RELOAD_TOKEN, Server

pytestmark = pytest.mark.e2e

# The loop's mechanics are under test here, not the model's quality: the gate's floors are off.
PARAMS = {
    **TINY_PARAMS,
    "promote": {"min_accuracy": 0.0, "min_macro_f1": 0.0, "max_accuracy_drop": 1.0, "max_macro_f1_drop": 1.0},
}


def splits_of(project: Path) -> dict[str, str]:
    return {row.path: name for name in SPLITS for row in read_manifest(project / "splits" / f"{name}.csv")}


def test_feedback_becomes_the_next_data_version_and_the_next_model(tmp_path: Path):
    env = project_env(tmp_path / "p", tmp_path / "state")
    project = init_project(tmp_path / "p", env, per_class=20, params=PARAMS)
    with running_s3(tmp_path / "s3") as s3:
        env |= s3.env
        point_remote_at(project, env, int(s3.endpoint.rsplit(":", 1)[1]))
        run(["greenr", "run"], project, env)  # the champion: trained, evaluated, pushed
        git(project, "add", "-A")
        git(project, "commit", "-qm", "pipeline outputs")
        version_before = data_version(project)
        splits_before = splits_of(project)

        server = Server(
            {
                **s3.env,
                "GREENR_ROOT": str(project),
                "GREENR_STATE_DIR": str(tmp_path / "state"),
                "MODEL_PULL": "false",
                "RELOAD_TOKEN": RELOAD_TOKEN,
                "THREADS": "2",
                "FEEDBACK": "on",
                "FEEDBACK_INBOX": "store",
            },
            tmp_path / "server.log",
        )
        try:
            champion = server.wait_ready()["model"]["sha256"]
            with httpx.Client(base_url=server.url, timeout=60) as http:

                def feedback(data: bytes, label: str, name: str = "photo.jpg", kind: str = "image/jpeg"):
                    return http.post("/feedback", files={"file": (name, data, kind)}, data={"label": label})

                photos = [(jpeg_bytes(scene(c, 70 + i)), c) for i in range(3) for c in ("dandelion", "grass")]
                photos.append((encode(scene("grass", 80), "PNG"), "grass"))
                for data, label in photos:
                    assert feedback(data, label).status_code == 201
                duplicate = feedback(photos[0][0], photos[0][1])
                assert duplicate.status_code == 200 and duplicate.json()["status"] == "unchanged"
                in_data = (project / "data" / "grass" / "00000003.jpg").read_bytes()
                assert feedback(in_data, "grass").status_code == 201  # new to the inbox, not to the data
                for name, (data, kind, status) in bad_corpus(10 * 1024 * 1024).items():
                    assert feedback(data, "grass", name, kind).status_code == status, name
                assert feedback(photos[1][0], "tulip").status_code == 422

                keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="greenr", Prefix="inbox/")["Contents"]]
                expected = {hashlib.sha256(d).hexdigest() for d, _ in photos} | {hashlib.sha256(in_data).hexdigest()}
                assert {Path(k).stem for k in keys if k.startswith("inbox/pending/")} == expected
                # Each: its image, its record, and a review marker (one vote is fewer than 3 agreeing).
                assert len(keys) == 3 * len(expected)
                assert {Path(k).name for k in keys if k.startswith("inbox/review/")} == expected

                # One vote each, from one client: the default trust policy leaves them all for review.
                waiting = run(["greenr", "inbox", "accept"], project, env)
                assert "nothing to accept" in waiting.stdout and f"skipped {len(expected)} item(s)" in waiting.stdout
                assert data_version(project) == version_before
                accepted = run(["greenr", "inbox", "accept", "--trust-feedback"], project, env)
                assert f"accepted {len(expected)} item(s): {len(photos)} new image(s) in data/, 1 already there" in (
                    accepted.stdout
                ), accepted.stdout + accepted.stderr
                version_after = data_version(project)
                assert version_after[0] != version_before[0] and version_after[1] == (version_before[1] or 0) + 7
                assert f"data version {version_after[0]}" in accepted.stdout
                left = s3.client().list_objects_v2(Bucket="greenr", Prefix="inbox/pending/").get("Contents", [])
                assert left == []

                run(["dvc", "repro"], project, env)  # the split keeps old images where they were, then retrains
                splits_after = splits_of(project)
                assert {path: splits_after[path] for path in splits_before} == splits_before
                new_paths = set(splits_after) - set(splits_before)
                assert len(new_paths) == len(photos) and all("/inbox-" in p for p in new_paths)
                lock = yaml.safe_load((project / "dvc.lock").read_text())
                data_dep = next(d for d in lock["stages"]["split"]["deps"] if d["path"] == "data")
                assert data_dep["md5"] == version_after[0]

                gate = run(["greenr", "promote", "--base", "main"], project, env)
                assert "promoted" in gate.stdout
                run(["greenr", "push"], project, env)

                reloaded = http.post("/model/reload", headers={"Authorization": f"Bearer {RELOAD_TOKEN}"})
                assert reloaded.status_code == 200, reloaded.text
                model = http.get("/model").json()
                # The server serves the ONNX export of the retrained checkpoint (its MODEL_PATH default).
                candidate = hashlib.sha256((project / ONNX_MODEL_PATH).read_bytes()).hexdigest()
                assert model["sha256"] == candidate != champion
                assert model["matches_dvc_lock"] is True
        finally:
            server.stop()
        assert "Traceback" not in server.log_path.read_text(errors="replace")
