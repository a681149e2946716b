"""The inbox (greenr/ops/inbox.py) in a local folder and in a real S3 server, and `accept` into a real
DVC project: idempotent, content-addressed, nothing lost when a step fails, a re-run completes the job."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from greenr.data.dataset import CLASSES
from greenr.errors import GreenrError
from greenr.ops.inbox import (
    ACCEPTED,
    PENDING,
    REJECTED,
    Inbox,
    InboxUnavailable,
    LocalBackend,
    S3Backend,
    accept,
    data_version,
    sha256_of,
)
from tests.helpers.images import encode, jpeg_bytes, scene
from tests.helpers.project import init_project, point_remote_at, project_env, run
from tests.helpers.s3 import S3Server, remote_for, running_s3


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def inbox(request: pytest.FixtureRequest, tmp_path: Path) -> Inbox:
    if request.param == "local":
        return Inbox(LocalBackend(tmp_path / "inbox"))
    server: S3Server = request.getfixturevalue("s3")
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    return Inbox(S3Backend(remote_for(server.endpoint, bucket)))


def pipes(cwd: Path, env: dict[str, str]) -> dict:
    return {"cwd": cwd, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


def photo(label: str, seed: int) -> bytes:
    return jpeg_bytes(scene(label, seed, size=64))


# ---------------------------------------------------------------------------- items


def test_the_same_photo_twice_is_one_item(inbox: Inbox):
    data = photo("dandelion", 1)
    first = inbox.submit(data, label="dandelion", predicted="grass", confidence=0.61, model_sha256="a" * 64)
    again = inbox.submit(data, label="dandelion", predicted="grass", confidence=0.61, model_sha256="a" * 64)
    assert (first.status, again.status) == ("new", "unchanged")
    assert [r.sha256 for r in inbox.records()] == [sha256_of(data)]
    record = inbox.records()[0]
    assert (record.label, record.predicted, record.confidence, record.model_sha256) == (
        "dandelion",
        "grass",
        0.61,
        "a" * 64,
    )
    assert record.suffix == ".jpg" and record.source == "feedback" and record.received
    assert inbox.image(record) == data
    assert sorted(inbox.backend.list(PENDING)) == [f"pending/{record.sha256}.jpg", f"pending/{record.sha256}.json"]


def test_an_uncertain_capture_waits_for_review_until_someone_labels_it(inbox: Inbox):
    data = encode(scene("grass", 2, size=64), "PNG")
    inbox.submit(data, label=None, source="uncertain", predicted="grass", confidence=0.55)
    assert [r.sha256 for r in inbox.to_review()] == [sha256_of(data)]
    assert inbox.records()[0].suffix == ".png"
    assert inbox.submit(data, label=None, source="uncertain").status == "unchanged"
    assert inbox.submit(data, label="grass").status == "updated"
    assert inbox.to_review() == [] and inbox.records()[0].label == "grass"
    status = inbox.status()
    assert status["labeled"] == {"grass": 1} and status["to_review"] == 0 and status["uncertain"] == 1


def test_conflicting_labels_go_to_review_and_the_reviewer_decides(inbox: Inbox):
    data = photo("dandelion", 3)
    inbox.submit(data, label="dandelion")
    inbox.submit(data, label="grass")
    (waiting,) = inbox.to_review()
    assert waiting.label is None and waiting.labels_given == ["dandelion", "grass"]
    assert inbox.status()["conflicts"] == 1
    reviewed = inbox.set_label(waiting.sha256[:8], "dandelion")
    assert reviewed.reviewed and reviewed.label == "dandelion"
    assert inbox.submit(data, label="grass").status == "unchanged"  # a reviewer's label is final
    assert inbox.records()[0].label == "dandelion" and inbox.to_review() == []


def test_item_ids_must_be_hex_and_unambiguous(inbox: Inbox):
    inbox.submit(photo("grass", 4), label="grass")
    with pytest.raises(GreenrError, match="not an item id"):
        inbox.find("abc")
    with pytest.raises(GreenrError, match="no pending inbox item"):
        inbox.find("0" * 64)


def test_a_stopped_store_is_a_clear_error(tmp_path: Path):
    with running_s3(tmp_path / "s3") as server:
        box = Inbox(S3Backend(remote_for(server.endpoint, "greenr")))
        box.submit(photo("grass", 5), label="grass")
    with pytest.raises(InboxUnavailable) as err:
        box.submit(photo("grass", 6), label="grass")
    assert "not answering" in err.value.what and "greenr store start" in (err.value.fix or "")


# ---------------------------------------------------------------------------- accept into a DVC project


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A committed project (10 images per class in data.dvc) with a local folder as its DVC remote."""
    env = project_env(tmp_path / "p", tmp_path / "state")
    project = init_project(tmp_path / "p", env)
    run(["dvc", "remote", "add", "--local", "-d", "folder", str(tmp_path / "remote")], project, env)
    return project


def in_sync(project: Path) -> bool:
    env = project_env(project, project.parent / "state")
    out = run(["dvc", "status", "--cloud", "data.dvc"], project, env).stdout
    return "in sync" in out


def test_accept_adds_labeled_images_pushes_them_and_only_then_marks_them_accepted(project: Path, tmp_path: Path):
    box = Inbox(LocalBackend(tmp_path / "inbox"))
    new_dandelion, new_grass = photo("dandelion", 10), encode(scene("grass", 11, size=64), "PNG")
    box.submit(new_dandelion, label="dandelion")
    box.submit(new_grass, label="grass")
    box.submit(photo("grass", 12), label=None, source="uncertain")  # waits for a label
    box.submit((project / "data/grass/00000001.jpg").read_bytes(), label="grass")  # already in the data
    box.submit((project / "data/dandelion/00000002.jpg").read_bytes(), label="grass")  # in the data as the other class
    box.submit(b"\xff\xd8\xff\xe0 not a jpeg at all", label="grass", suffix=".jpg")  # does not decode
    before, files_before = data_version(project)

    report = accept([box], CLASSES, project)

    dandelion = f"data/dandelion/inbox-{sha256_of(new_dandelion)[:16]}.jpg"
    grass = f"data/grass/inbox-{sha256_of(new_grass)[:16]}.png"
    assert report.added == [dandelion, grass] or report.added == [grass, dandelion]
    assert (project / dandelion).read_bytes() == new_dandelion and (project / grass).read_bytes() == new_grass
    assert report.already_in_data == ["data/grass/00000001.jpg"]
    reasons = sorted(reason for _, reason in report.rejected)
    assert len(reasons) == 2
    assert reasons[0].startswith("already in the data as data/dandelion/00000002.jpg")
    assert reasons[1].startswith("its image does not decode")
    assert report.waiting == 1
    assert report.version_after != before and report.files_after == (files_before or 0) + 2
    assert data_version(project) == (report.version_after, report.files_after)
    assert in_sync(project), "the new data version must be in the DVC remote"
    status = box.status()
    assert (status["pending"], status["accepted"], status["rejected"]) == (1, 3, 2)
    accepted = box.record(sha256_of(new_grass), ACCEPTED)
    assert accepted is not None and accepted.outcome and accepted.outcome["path"] == grass
    assert accepted.outcome["data_version"] == report.version_after
    assert box.backend.get(f"{ACCEPTED}/{sha256_of(new_grass)}.png") == new_grass
    assert "data version" in report.summary() and "git add data.dvc" in report.summary()

    # Running it again changes nothing; the same photo sent again is known as accepted.
    again = accept([box], CLASSES, project)
    assert (again.accepted, again.rejected, again.version_after) == (0, [], None)
    assert data_version(project) == (report.version_after, report.files_after)
    assert box.submit(new_dandelion, label="grass").status == "accepted"


def test_a_failed_push_loses_nothing_and_a_rerun_completes_it(project: Path, tmp_path: Path):
    box = Inbox(LocalBackend(tmp_path / "inbox"))
    items = [photo("dandelion", 20), photo("grass", 21)]
    for data, label in zip(items, CLASSES):
        box.submit(data, label=label)
    env = project_env(project, tmp_path / "state")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the remote's folder should be")
    run(["dvc", "remote", "modify", "--local", "folder", "url", str(blocked)], project, env)

    with pytest.raises(GreenrError) as err:
        accept([box], CLASSES, project)
    assert "dvc push" in err.value.what and "nothing was lost" in (err.value.fix or "")
    # Inbox untouched, data/ and data.dvc agree (dvc add ran), nothing marked accepted.
    assert box.status()["pending"] == 2 and box.status()["accepted"] == 0
    assert "up to date" in run(["dvc", "status", "data.dvc"], project, env).stdout
    version = data_version(project)

    blocked.unlink()
    report = accept([box], CLASSES, project)
    assert report.added == [] and len(report.already_in_data) == 2  # written by the first run
    assert data_version(project) == version
    assert box.status()["pending"] == 0 and box.status()["accepted"] == 2
    assert in_sync(project)


def test_an_interrupted_move_is_finished_by_the_next_run(project: Path, tmp_path: Path):
    box = Inbox(LocalBackend(tmp_path / "inbox"))
    data = photo("grass", 30)
    box.submit(data, label="grass")
    accept([box], CLASSES, project)
    # Play a crash after the accepted record was written but before the pending files were deleted.
    sha = sha256_of(data)
    box.backend.put(f"{PENDING}/{sha}.jpg", data)
    record = box.record(sha, ACCEPTED)
    assert record is not None
    record.outcome = None
    box.backend.put(f"{PENDING}/{sha}.json", record.dumps())
    report = accept([box], CLASSES, project)
    assert report.accepted == 0 and box.status()["pending"] == 0 and box.status()["orphans"] == 0
    assert box.record(sha, ACCEPTED) is not None and box.record(sha, REJECTED) is None


def test_accept_with_an_empty_inbox_runs_no_dvc(project: Path, tmp_path: Path):
    lock_before = yaml.safe_load((project / "data.dvc").read_text())
    report = accept([Inbox(LocalBackend(tmp_path / "inbox"))], CLASSES, project)
    assert report.summary().startswith("nothing to accept")
    assert yaml.safe_load((project / "data.dvc").read_text()) == lock_before


# ---------------------------------------------------------------------------- the real store, stopped midway


@pytest.mark.e2e
@pytest.mark.parametrize(("kill_at", "items"), [("$ dvc push", 4), ("accepted ", 20)])
def test_greenr_inbox_accept_survives_the_store_dying_midway(tmp_path: Path, kill_at: str, items: int):
    """`greenr inbox accept` with the real local store SIGKILLed during `dvc push`, or while it moves
    items to accepted/: no item is lost, data/ and data.dvc agree, and a re-run completes the job."""
    env = project_env(tmp_path / "p", tmp_path / "state")
    project = init_project(tmp_path / "p", env)
    photos = [photo(CLASSES[i % 2], 100 + i) for i in range(items)]
    with running_s3(tmp_path / "s3") as server:
        env |= server.env
        point_remote_at(project, env, int(server.endpoint.rsplit(":", 1)[1]))
        box = Inbox(S3Backend(remote_for(server.endpoint, "greenr")))
        for i, data in enumerate(photos):
            box.submit(data, label=CLASSES[i % 2])
        accept_run = subprocess.Popen(
            ["greenr", "inbox", "accept"],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        seen = []
        assert accept_run.stderr is not None
        for line in accept_run.stderr:
            seen.append(line)
            if kill_at in line:
                assert server.proc is not None
                server.proc.kill()  # the store dies mid-step, as in a crash
                break
        out, err = accept_run.communicate(timeout=300)
        stderr = "".join(seen) + err
    assert accept_run.returncode == 2, f"accept finished before the store died:\n{stderr}"
    assert "Traceback" not in stderr and "not answering" in stderr and "nothing was lost" in stderr, stderr
    assert "up to date" in run(["dvc", "status", "data.dvc"], project, env).stdout  # data.dvc matches data/

    with running_s3(tmp_path / "s3") as server:  # the same store again, on new ports
        point_remote_at(project, env, int(server.endpoint.rsplit(":", 1)[1]))
        box = Inbox(S3Backend(remote_for(server.endpoint, "greenr")))
        pending = {r.sha256 for r in box.records()}
        accepted = {r.sha256 for r in box.records(ACCEPTED)}
        assert pending | accepted == {sha256_of(p) for p in photos} and not pending & accepted, "an item was lost"
        if kill_at == "$ dvc push":
            assert accepted == set(), "items were marked accepted before their data version was pushed"
        else:
            assert accepted and pending
        rerun = run(["greenr", "inbox", "accept"], project, env)
        assert box.status()["pending"] == 0 and box.status()["accepted"] == items
        assert "pushed to the DVC remote" in rerun.stdout
        assert "in sync" in run(["dvc", "status", "--cloud", "data.dvc"], project, env).stdout
    assert data_version(project)[1] == 20 + items


def test_accept_refuses_to_record_a_data_version_with_images_missing(project: Path, tmp_path: Path):
    box = Inbox(LocalBackend(tmp_path / "inbox"))
    box.submit(photo("grass", 40), label="grass")
    (project / "data" / "grass" / "00000000.jpg").unlink()  # as if data/ had not been pulled completely
    before = (project / "data.dvc").read_text()
    with pytest.raises(GreenrError) as err:
        accept([box], CLASSES, project)
    assert "holds 19 images but data.dvc records 20" in err.value.what and "greenr pull data.dvc" in (
        err.value.fix or ""
    )
    assert (project / "data.dvc").read_text() == before and box.status()["pending"] == 1


def test_greenr_inbox_status_label_and_json_on_the_local_inbox(tmp_path: Path):
    """The CLI with no object store answering: the local inbox in the state folder."""
    env = project_env(tmp_path / "p", tmp_path / "state")
    project = init_project(tmp_path / "p", env)
    run(["dvc", "remote", "modify", "--local", "minio", "endpointurl", "http://127.0.0.1:9"], project, env)
    box = Inbox(LocalBackend(tmp_path / "state" / "inbox"))
    data = photo("grass", 50)
    box.submit(data, label=None, source="uncertain", predicted="dandelion", confidence=0.51)
    box.submit(photo("dandelion", 51), label="dandelion")
    status = run(["greenr", "inbox", "status", "--items"], project, env).stdout
    assert "2 pending (labeled: dandelion 1; 1 to review" in status and str(tmp_path / "state" / "inbox") in status
    assert f"{sha256_of(data)[:12]}  (review)" in status and "predicted dandelion (0.51)" in status
    labeled = run(["greenr", "inbox", "label", sha256_of(data)[:8], "grass"], project, env)
    assert f"{sha256_of(data)[:12]} labeled grass" in labeled.stdout
    counts = json.loads(run(["greenr", "inbox", "status", "--json"], project, env).stdout)
    assert counts["labeled"] == 2 and counts["inboxes"][0]["to_review"] == 0
    wrong = run(["greenr", "inbox", "label", sha256_of(data)[:8], "tulip"], project, env, check=False)
    assert wrong.returncode == 2 and "'tulip' is not a class" in wrong.stderr and "Traceback" not in wrong.stderr
