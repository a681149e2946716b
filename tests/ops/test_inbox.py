"""The inbox (greenr/ops/inbox.py) in a local folder and in a real S3 server, and `accept` into a real
DVC project: idempotent, content-addressed, nothing lost when a step fails, a re-run completes the job;
votes attributed and never lost to concurrent writers; only trusted labels become data."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from PIL import Image

from greenr.data.dataset import data_version
from greenr.data.upload_corpus import encode
from greenr.errors import GreenrError
from greenr.ops.inbox import (
    ACCEPTED,
    PENDING,
    REJECTED,
    REVIEW,
    ImageLimits,
    Inbox,
    InboxUnavailable,
    LocalItemStore,
    Record,
    S3ItemStore,
    TrustPolicy,
    accept,
    sha256_of,
    voter_id,
)
from tests.helpers.images import jpeg_bytes, scene
from tests.helpers.project import init_project, point_remote_at, project_env, run
from tests.helpers.s3 import S3Server, remote_for, running_s3
from tests.helpers.serving import CLASSES


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(params=["local", "s3"])
def inbox(request: pytest.FixtureRequest, tmp_path: Path) -> Inbox:
    if request.param == "local":
        return Inbox(LocalItemStore(tmp_path / "inbox"))
    server: S3Server = request.getfixturevalue("s3")
    bucket = f"t-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=bucket)
    return Inbox(S3ItemStore(remote_for(server.endpoint, bucket)))


# The mechanics of accept are under test here, not the trust policy: one vote is enough.
TRUSTING = TrustPolicy(trust_feedback=True)
VOTERS = [voter_id("address", f"192.0.2.{i}") for i in range(1, 6)]


def same_store(inbox: Inbox) -> Inbox:
    """A second Inbox on the same store, as another server process has (no lock shared with `inbox`)."""
    store = inbox.store
    twin = LocalItemStore(store.folder) if isinstance(store, LocalItemStore) else S3ItemStore(store.remote)
    return Inbox(twin)


def pipes(cwd: Path, env: dict[str, str]) -> dict:
    return {"cwd": cwd, "env": env, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}


def photo(label: str, seed: int) -> bytes:
    return jpeg_bytes(scene(label, seed, size=64))


# ---------------------------------------------------------------------------- items


def test_the_same_photo_twice_is_one_item(inbox: Inbox):
    data = photo("dandelion", 1)
    first = inbox.add_vote(data, label="dandelion", predicted="grass", confidence=0.61, model_sha256="a" * 64)
    again = inbox.add_vote(data, label="dandelion", predicted="grass", confidence=0.61, model_sha256="a" * 64)
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
    assert sorted(inbox.store.list(PENDING)) == [f"pending/{record.sha256}.jpg", f"pending/{record.sha256}.json"]


def test_an_uncertain_capture_waits_for_review_until_someone_labels_it(inbox: Inbox):
    data = encode(scene("grass", 2, size=64), "PNG")
    inbox.add_vote(data, label=None, source="uncertain", predicted="grass", confidence=0.55)
    assert [r.sha256 for r in inbox.to_review()] == [sha256_of(data)]
    assert inbox.records()[0].suffix == ".png"
    assert inbox.add_vote(data, label=None, source="uncertain").status == "unchanged"
    assert inbox.add_vote(data, label="grass").status == "updated"
    # One vote is a label, not yet a trusted one: the item stays on review until 3 agree.
    assert inbox.records()[0].label == "grass" and len(inbox.to_review()) == 1
    status = inbox.status()
    assert status["labeled"] == {"grass": 1} and status["to_review"] == 1 and status["uncertain"] == 1
    assert status["acceptable"] == 0 and inbox.status(TRUSTING)["acceptable"] == 1
    for voter in VOTERS[1:3]:
        assert inbox.add_vote(data, label="grass", voter=voter).status == "updated"
    assert inbox.to_review() == [] and inbox.status()["acceptable"] == 1
    assert inbox.store.list(REVIEW) == []


def test_conflicting_labels_go_to_review_and_the_reviewer_decides(inbox: Inbox):
    data = photo("dandelion", 3)
    inbox.add_vote(data, label="dandelion")
    inbox.add_vote(data, label="grass")
    (waiting,) = inbox.to_review()
    assert waiting.label is None and waiting.labels_given == ["dandelion", "grass"]
    assert inbox.status()["conflicts"] == 1
    reviewed = inbox.set_label(waiting.sha256[:8], "dandelion")
    assert reviewed.reviewed and reviewed.label == "dandelion"
    assert inbox.add_vote(data, label="grass").status == "unchanged"  # a reviewer's label is final
    assert inbox.records()[0].label == "dandelion" and inbox.to_review() == []


def test_item_ids_must_be_hex_long_enough_and_unambiguous(inbox: Inbox):
    inbox.add_vote(photo("grass", 4), label="grass")
    with pytest.raises(GreenrError, match="not an item id"):
        inbox.find("xyz123")
    with pytest.raises(GreenrError, match="too short: give 6 or more digits"):
        inbox.find("44bd")
    with pytest.raises(GreenrError, match="no pending inbox item"):
        inbox.find("0" * 64)


def test_votes_are_attributed_and_a_clients_repeats_count_once(inbox: Inbox):
    data = photo("dandelion", 7)
    assert inbox.add_vote(data, label="dandelion", voter=VOTERS[0]).status == "new"
    assert inbox.add_vote(data, label="dandelion", voter=VOTERS[0]).status == "unchanged"
    assert inbox.add_vote(data, label="dandelion", voter=VOTERS[1]).status == "updated"
    (record,) = inbox.records()
    assert record.vote_counts() == {"dandelion": 2} and record.votes["dandelion"] == sorted(VOTERS[:2])
    assert TrustPolicy().verdict(record).kind == "few_votes"
    assert TrustPolicy(min_agreeing=2).verdict(record).label == "dandelion"
    # A client that gives both labels disagrees with itself: a conflict, for a reviewer.
    assert inbox.add_vote(data, label="grass", voter=VOTERS[0]).status == "updated"
    (record,) = inbox.records()
    assert record.label is None and record.vote_counts() == {"dandelion": 2, "grass": 1}
    assert TrustPolicy(trust_feedback=True).verdict(record).kind == "conflict"
    assert [r.sha256 for r in inbox.to_review()] == [record.sha256]


def test_the_trust_policy():
    record = Record("a" * 64, ".jpg", "feedback", "2026-01-01T00:00:00+00:00")
    strict, trusting = TrustPolicy(), TrustPolicy(trust_feedback=True)
    assert strict.verdict(record).kind == trusting.verdict(record).kind == "unlabeled"
    record.vote("grass", VOTERS[0])
    assert (strict.verdict(record).label, trusting.verdict(record).label) == (None, "grass")
    assert "1 vote(s) for grass, 3 agreeing needed" in strict.verdict(record).reason
    record.vote("grass", VOTERS[1])
    record.vote("grass", VOTERS[2])
    assert strict.verdict(record) == trusting.verdict(record) and strict.verdict(record).kind == "agreed"
    record.vote("dandelion", VOTERS[3])  # one voice against three is a conflict
    assert strict.verdict(record).label is None and "conflicting votes (dandelion 1, grass 3)" in (
        strict.verdict(record).reason
    )
    record.label, record.reviewed = "grass", True  # the reviewer decides
    assert strict.verdict(record).kind == "reviewed" and strict.verdict(record).label == "grass"
    # Records written before votes were attributed: their labels count as one unknown voter each.
    old = {"sha256": "b" * 64, "suffix": ".jpg", "source": "feedback", "received": "x", "label": "grass"}
    legacy = Record.parse(json.dumps({**old, "labels_given": ["grass"]}).encode(), "legacy.json")
    assert legacy.vote_counts() == {"grass": 1} and strict.verdict(legacy).kind == "few_votes"
    with pytest.raises(GreenrError, match="at least 1"):
        TrustPolicy(min_agreeing=0)


@pytest.mark.parametrize("writers", [2, 8])
def test_concurrent_opposite_votes_from_several_writers_lose_none(inbox: Inbox, writers: int):
    """Each writer has its own Inbox on the same store (as separate server processes have): votes for
    the same photos at the same moment, opposite labels; every vote lands and every item goes to review."""
    photos = [photo("grass", 300 + i) for i in range(6)]
    boxes = [same_store(inbox) for _ in range(writers)]
    start = threading.Barrier(writers)
    failures: list[BaseException] = []

    def vote(k: int) -> None:
        try:
            start.wait()
            for data in photos:
                boxes[k].add_vote(data, label=("dandelion", "grass")[k % 2], voter=voter_id("token", f"writer-{k}"))
        except BaseException as exc:  # reported below, with the others
            failures.append(exc)

    threads = [threading.Thread(target=vote, args=(k,)) for k in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    records = {r.sha256: r for r in inbox.records()}
    assert set(records) == {sha256_of(p) for p in photos}
    for record in records.values():
        assert sum(record.vote_counts().values()) == writers, f"a vote was lost: {record.vote_counts()}"
        assert record.label is None and record.labels_given == ["dandelion", "grass"]
    assert {r.sha256 for r in inbox.to_review()} == set(records), "a conflict is missing from review"
    assert inbox.status()["conflicts"] == len(photos)


def test_a_stopped_store_is_a_clear_error(tmp_path: Path):
    with running_s3(tmp_path / "s3") as server:
        box = Inbox(S3ItemStore(remote_for(server.endpoint, "greenr")))
        box.add_vote(photo("grass", 5), label="grass")
    with pytest.raises(InboxUnavailable) as err:
        box.add_vote(photo("grass", 6), label="grass")
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
    box = Inbox(LocalItemStore(tmp_path / "inbox"))
    new_dandelion, new_grass = photo("dandelion", 10), encode(scene("grass", 11, size=64), "PNG")
    box.add_vote(new_dandelion, label="dandelion")
    box.add_vote(new_grass, label="grass")
    box.add_vote(photo("grass", 12), label=None, source="uncertain")  # waits for a label
    box.add_vote((project / "data/grass/00000001.jpg").read_bytes(), label="grass")  # already in the data
    box.add_vote((project / "data/dandelion/00000002.jpg").read_bytes(), label="grass")  # in the data, other class
    box.add_vote(b"\xff\xd8\xff\xe0 not a jpeg at all", label="grass", suffix=".jpg")  # does not decode
    before, files_before = data_version(project)

    report = accept([box], project, TRUSTING)

    dandelion = f"data/dandelion/inbox-{sha256_of(new_dandelion)[:16]}.jpg"
    grass = f"data/grass/inbox-{sha256_of(new_grass)[:16]}.png"
    assert report.added == [dandelion, grass] or report.added == [grass, dandelion]
    assert (project / dandelion).read_bytes() == new_dandelion and (project / grass).read_bytes() == new_grass
    assert report.already_in_data == ["data/grass/00000001.jpg"]
    reasons = sorted(reason for _, reason in report.rejected)
    assert len(reasons) == 2
    assert reasons[0].startswith("already in the data as data/dandelion/00000002.jpg")
    assert reasons[1].startswith("its image does not decode")
    assert [s.kind for s in report.skipped] == ["unlabeled"]
    assert len(report.sizes) == 2 and {(w, h) for w, h, _ in report.sizes} == {(64, 64)}
    assert "new image sizes: 64x64 to 64x64 px" in report.summary()
    assert report.version_after != before and report.files_after == (files_before or 0) + 2
    assert data_version(project) == (report.version_after, report.files_after)
    assert in_sync(project), "the new data version must be in the DVC remote"
    status = box.status()
    assert (status["pending"], status["accepted"], status["rejected"]) == (1, 3, 2)
    accepted = box.record(sha256_of(new_grass), ACCEPTED)
    assert accepted is not None and accepted.outcome and accepted.outcome["path"] == grass
    assert accepted.outcome["data_version"] == report.version_after
    assert box.store.get(f"{ACCEPTED}/{sha256_of(new_grass)}.png") == new_grass
    assert "data version" in report.summary() and "git add data.dvc" in report.summary()

    # Running it again changes nothing; the same photo sent again is known as accepted.
    again = accept([box], project, TRUSTING)
    assert (again.accepted, again.rejected, again.version_after) == (0, [], None)
    assert data_version(project) == (report.version_after, report.files_after)
    assert box.add_vote(new_dandelion, label="grass").status == "accepted"


def test_a_failed_push_loses_nothing_and_a_rerun_completes_it(project: Path, tmp_path: Path):
    box = Inbox(LocalItemStore(tmp_path / "inbox"))
    items = [photo("dandelion", 20), photo("grass", 21)]
    for data, label in zip(items, CLASSES):
        box.add_vote(data, label=label)
    env = project_env(project, tmp_path / "state")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the remote's folder should be")
    run(["dvc", "remote", "modify", "--local", "folder", "url", str(blocked)], project, env)

    with pytest.raises(GreenrError) as err:
        accept([box], project, TRUSTING)
    assert "dvc push" in err.value.what and "nothing was lost" in (err.value.fix or "")
    # Inbox untouched, data/ and data.dvc agree (dvc add ran), nothing marked accepted.
    assert box.status()["pending"] == 2 and box.status()["accepted"] == 0
    assert "up to date" in run(["dvc", "status", "data.dvc"], project, env).stdout
    version = data_version(project)

    blocked.unlink()
    report = accept([box], project, TRUSTING)
    assert report.added == [] and len(report.already_in_data) == 2  # written by the first run
    assert data_version(project) == version
    assert box.status()["pending"] == 0 and box.status()["accepted"] == 2
    assert in_sync(project)


def test_an_interrupted_move_is_finished_by_the_next_run(project: Path, tmp_path: Path):
    box = Inbox(LocalItemStore(tmp_path / "inbox"))
    data = photo("grass", 30)
    box.add_vote(data, label="grass")
    accept([box], project, TRUSTING)
    # Play a crash after the accepted record was written but before the pending files were deleted.
    sha = sha256_of(data)
    box.store.put(f"{PENDING}/{sha}.jpg", data)
    record = box.record(sha, ACCEPTED)
    assert record is not None
    record.outcome = None
    box.store.put(f"{PENDING}/{sha}.json", record.dumps())
    report = accept([box], project, TRUSTING)
    assert report.accepted == 0 and box.status()["pending"] == 0 and box.status()["orphans"] == 0
    assert box.record(sha, ACCEPTED) is not None and box.record(sha, REJECTED) is None


def test_accept_with_an_empty_inbox_runs_no_dvc(project: Path, tmp_path: Path):
    lock_before = yaml.safe_load((project / "data.dvc").read_text())
    report = accept([Inbox(LocalItemStore(tmp_path / "inbox"))], project, TRUSTING)
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
        box = Inbox(S3ItemStore(remote_for(server.endpoint, "greenr")))
        for i, data in enumerate(photos):
            box.add_vote(data, label=CLASSES[i % 2])
        accept_run = subprocess.Popen(
            ["greenr", "inbox", "accept", "--trust-feedback"],
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
        box = Inbox(S3ItemStore(remote_for(server.endpoint, "greenr")))
        pending = {r.sha256 for r in box.records()}
        accepted = {r.sha256 for r in box.records(ACCEPTED)}
        assert pending | accepted == {sha256_of(p) for p in photos} and not pending & accepted, "an item was lost"
        if kill_at == "$ dvc push":
            assert accepted == set(), "items were marked accepted before their data version was pushed"
        else:
            assert accepted and pending
        rerun = run(["greenr", "inbox", "accept", "--trust-feedback"], project, env)
        assert box.status()["pending"] == 0 and box.status()["accepted"] == items
        assert "pushed to the DVC remote" in rerun.stdout
        assert "in sync" in run(["dvc", "status", "--cloud", "data.dvc"], project, env).stdout
    assert data_version(project)[1] == 20 + items


def test_accept_refuses_to_record_a_data_version_with_images_missing(project: Path, tmp_path: Path):
    box = Inbox(LocalItemStore(tmp_path / "inbox"))
    box.add_vote(photo("grass", 40), label="grass")
    (project / "data" / "grass" / "00000000.jpg").unlink()  # as if data/ had not been pulled completely
    before = (project / "data.dvc").read_text()
    with pytest.raises(GreenrError) as err:
        accept([box], project, TRUSTING)
    assert "holds 19 images but data.dvc records 20" in err.value.what and "greenr pull data.dvc" in (
        err.value.fix or ""
    )
    assert (project / "data.dvc").read_text() == before and box.status()["pending"] == 1


def test_greenr_inbox_status_label_and_json_on_the_local_inbox(tmp_path: Path):
    """The CLI with no object store answering: the local inbox in the state folder."""
    env = project_env(tmp_path / "p", tmp_path / "state")
    project = init_project(tmp_path / "p", env)
    run(["dvc", "remote", "modify", "--local", "minio", "endpointurl", "http://127.0.0.1:9"], project, env)
    box = Inbox(LocalItemStore(tmp_path / "state" / "inbox"))
    data = photo("grass", 50)
    box.add_vote(data, label=None, source="uncertain", predicted="dandelion", confidence=0.51)
    box.add_vote(photo("dandelion", 51), label="dandelion")
    status = run(["greenr", "inbox", "status", "--items"], project, env).stdout
    assert "2 pending (labeled: dandelion 1; 0 acceptable as they stand" in status, status
    assert "2 to review" in status and str(tmp_path / "state" / "inbox") in status
    assert f"{sha256_of(data)[:12]}  (review)" in status and "predicted dandelion (0.51)" in status
    assert "votes: dandelion 1" in status
    labeled = run(["greenr", "inbox", "label", sha256_of(data)[:8], "grass"], project, env)
    assert f"{sha256_of(data)[:12]} labeled grass" in labeled.stdout
    counts = json.loads(run(["greenr", "inbox", "status", "--json"], project, env).stdout)
    assert (counts["labeled"], counts["acceptable"], counts["to_review"]) == (2, 1, 1)
    trusting = json.loads(run(["greenr", "inbox", "status", "--json", "--trust-feedback"], project, env).stdout)
    assert trusting["acceptable"] == 2
    env_min = {**env, "FEEDBACK_MIN_AGREEING": "1"}  # the server's setting, read by the CLI too
    assert json.loads(run(["greenr", "inbox", "status", "--json"], project, env_min).stdout)["acceptable"] == 2

    # Labels: a class folder of data/ (any name), a new one only when asked; ids of 6+ hex digits.
    wrong = run(["greenr", "inbox", "label", sha256_of(data)[:8], "tulip"], project, env, check=False)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert "'tulip' is not a class of data/ (classes: dandelion, grass)" in wrong.stderr
    assert "--new-class" in wrong.stderr
    (project / "data" / "tulip").mkdir()  # an empty folder is no class (the split stage ignores it too)
    empty = run(["greenr", "inbox", "label", sha256_of(data)[:8], "tulip"], project, env, check=False)
    assert empty.returncode == 2 and "'tulip' is not a class of data/" in empty.stderr
    # A class folder of the data with images is a class, whatever its name.
    (project / "data" / "tulip" / "t.jpg").write_bytes(photo("grass", 51))
    assert "labeled tulip" in run(["greenr", "inbox", "label", sha256_of(data)[:8], "tulip"], project, env).stdout
    rose = run(["greenr", "inbox", "label", sha256_of(data)[:8], "rose", "--new-class"], project, env)
    assert "labeled rose" in rose.stdout
    bad = run(["greenr", "inbox", "label", sha256_of(data)[:8], "../x", "--new-class"], project, env, check=False)
    assert bad.returncode == 2 and "cannot be a class folder name" in bad.stderr
    short = run(["greenr", "inbox", "label", sha256_of(data)[:4], "grass"], project, env, check=False)
    assert short.returncode == 2 and "give 6 or more digits" in short.stderr and "no pending" not in short.stderr


# ---------------------------------------------------------------------------- the trust policy at accept


def test_accept_takes_only_trusted_labels_and_says_what_it_skipped(project: Path, tmp_path: Path):
    box = Inbox(LocalItemStore(tmp_path / "inbox"))
    # The poisoning attempt: one anonymous vote for a huge black image.
    black = encode(Image.new("RGB", (3000, 3000)), "PNG")
    box.add_vote(black, label="grass", voter=VOTERS[0])
    agreed = photo("dandelion", 60)
    for voter in VOTERS[:3]:
        box.add_vote(agreed, label="dandelion", voter=voter)
    repeated = photo("grass", 61)  # one client three times: one vote
    for _ in range(3):
        box.add_vote(repeated, label="grass", voter=VOTERS[4])
    disputed = photo("grass", 62)
    for voter, label in zip(VOTERS, ("grass", "grass", "grass", "dandelion")):
        box.add_vote(disputed, label=label, voter=voter)
    reviewed = photo("grass", 63)
    box.add_vote(reviewed, label="dandelion", voter=VOTERS[0])
    box.set_label(sha256_of(reviewed), "grass")
    new_class = photo("dandelion", 64)
    box.add_vote(new_class, label=None, source="uncertain")
    box.set_label(sha256_of(new_class), "rose")  # a reviewer's label that data/ has no folder for

    report = accept([box], project)

    assert sorted(report.added) == sorted(
        [f"data/dandelion/inbox-{sha256_of(agreed)[:16]}.jpg", f"data/grass/inbox-{sha256_of(reviewed)[:16]}.jpg"]
    )
    skipped = {s.sha256: s for s in report.skipped}
    assert skipped[sha256_of(black)].kind == "few_votes" and skipped[sha256_of(repeated)].kind == "few_votes"
    assert skipped[sha256_of(disputed)].kind == "conflict"
    assert skipped[sha256_of(new_class)].kind == "not_a_class"
    assert "'rose' is not a class of data/ (dandelion, grass)" in skipped[sha256_of(new_class)].reason
    summary = report.summary()
    assert "skipped 4 item(s), left in the inbox: 1 with conflicting votes, 2 with too few agreeing votes" in summary
    assert "1 vote(s) for grass, 3 agreeing needed" in summary and "--trust-feedback" in summary
    assert "new image sizes: 64x64 to 64x64 px" in summary
    assert not list((project / "data").rglob(f"inbox-{sha256_of(black)[:16]}*"))
    assert box.status()["pending"] == 4 and box.status()["accepted"] == 2

    # The reviewer's new class, when asked for: its folder is made.
    again = accept([box], project, new_classes=["rose"])
    assert again.added == [f"data/rose/inbox-{sha256_of(new_class)[:16]}.jpg"]
    assert (project / again.added[0]).read_bytes() == new_class
    with pytest.raises(GreenrError, match="cannot be a class folder name"):
        accept([box], project, new_classes=["../escape"])


def test_accept_applies_the_limits_of_predict(project: Path, tmp_path: Path):
    box = Inbox(LocalItemStore(tmp_path / "inbox"))
    big = photo("grass", 70)  # 64x64
    heavy = encode(scene("grass", 71, size=64), "PNG")
    box.add_vote(big, label="grass")
    box.add_vote(heavy, label="grass")
    report = accept([box], project, TRUSTING, limits=ImageLimits(max_bytes=len(heavy) - 1, max_pixels=64 * 64 - 1))
    reasons = sorted(reason for _, reason in report.rejected)
    assert len(reasons) == 2 and report.added == []
    assert any("over the upload limit" in r and "MAX_UPLOAD_BYTES" in r for r in reasons), reasons
    assert any("does not decode within the limits of /predict" in r and "over the limit of 4095" in r for r in reasons)
