"""Two real server processes on one real object store take feedback for the same photos at the same
moment, with opposite labels: no vote is lost, every conflict reaches review (on both servers), and
agreeing votes of distinct clients add up to a trusted label.

The clients are told apart by address: uvicorn takes X-Forwarded-For from a proxy on loopback (its
FORWARDED_ALLOW_IPS default), which is what this test's requests come through.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from greenr.ops.inbox import Inbox, S3ItemStore, TrustPolicy
from tests.helpers.images import jpeg_bytes, scene
from tests.helpers.s3 import S3Server, dvc_project, remote_for, running_s3
from tests.helpers.serving import Server

pytestmark = pytest.mark.e2e
REVIEW_TOKEN = "processes-review-token"
PHOTOS = 20


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with running_s3(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture(scope="module")
def servers(store: S3Server, ckpt_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Two `python -m serve` processes, feedback on, both with the inbox in `store`."""
    project = dvc_project(tmp_path_factory.mktemp("project") / "p", store.endpoint)
    started: list[Server] = []
    try:
        for name in ("a", "b"):
            folder = tmp_path_factory.mktemp(f"server-{name}")
            env = {
                **store.env,
                "GREENR_ROOT": str(project),
                "GREENR_STATE_DIR": str(folder),
                "MODEL_PATH": str(ckpt_path),
                "MODEL_PULL": "false",
                "THREADS": "1",
                "FEEDBACK": "on",
                "FEEDBACK_INBOX": "store",
                "REVIEW_TOKEN": REVIEW_TOKEN,
            }
            started.append(Server(env, folder / "server.log"))
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()
    for server in started:
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log and "ignores conditional writes" not in log, log[-3000:]


def send(server: Server, data: bytes, label: str, client: str) -> httpx.Response:
    with httpx.Client(base_url=server.url, timeout=60) as http:
        return http.post(
            "/feedback",
            files={"file": ("photo.jpg", data, "image/jpeg")},
            data={"label": label},
            headers={"X-Forwarded-For": client},
        )


def test_opposite_labels_at_once_on_two_processes_lose_no_vote_and_all_reach_review(
    servers: list[Server], store: S3Server
) -> None:
    photos = [jpeg_bytes(scene("dandelion", 500 + i, size=64)) for i in range(PHOTOS)]
    sides = [(servers[0], "dandelion", "192.0.2.1"), (servers[1], "grass", "192.0.2.2")]
    start = threading.Barrier(len(sides))

    def one_side(server: Server, label: str, client: str) -> list[httpx.Response]:
        # Photo by photo in step with the other side: both requests for a photo leave together.
        out = []
        for data in photos:
            start.wait()
            out.append(send(server, data, label, client))
        return out

    with ThreadPoolExecutor(len(sides)) as pool:
        answers = [a for side in pool.map(lambda args: one_side(*args), sides) for a in side]
    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers if a.status_code > 201]
    by_photo: dict[str, list[str]] = {}
    for answer in answers:
        by_photo.setdefault(answer.json()["id"], []).append(answer.json()["status"])
    assert all(sorted(statuses) == ["new", "updated"] for statuses in by_photo.values()), by_photo

    inbox = Inbox(S3ItemStore(remote_for(store.endpoint, "greenr")))
    records = {r.sha256: r for r in inbox.records()}
    shas = {hashlib.sha256(p).hexdigest() for p in photos}
    assert shas <= set(records)
    for sha in shas:
        assert records[sha].vote_counts() == {"dandelion": 1, "grass": 1}, f"a vote was lost: {records[sha].votes}"
        assert records[sha].label is None
    for server in servers:  # each process lists every conflict for review
        with httpx.Client(base_url=server.url, timeout=60) as http:
            listed = http.get(
                "/review/items", params={"limit": 500}, headers={"Authorization": f"Bearer {REVIEW_TOKEN}"}
            )
        assert listed.status_code == 200
        assert shas <= {item["id"] for item in listed.json()["items"]}, "a conflict is missing from /review"
    assert inbox.status()["conflicts"] >= PHOTOS


def test_distinct_clients_agreeing_through_both_processes_make_a_trusted_label(
    servers: list[Server], store: S3Server
) -> None:
    data = jpeg_bytes(scene("grass", 600, size=64))
    jobs = [(servers[i % 2], data, "grass", f"198.51.100.{i}") for i in range(3)]
    jobs += [(servers[1], data, "grass", "198.51.100.0") for _ in range(3)]  # the first client again
    start = threading.Barrier(len(jobs))

    def at_once(job: tuple[Server, bytes, str, str]) -> httpx.Response:
        start.wait()
        return send(*job)

    with ThreadPoolExecutor(len(jobs)) as pool:
        answers = list(pool.map(at_once, jobs))
    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers]
    inbox = Inbox(S3ItemStore(remote_for(store.endpoint, "greenr")))
    record = inbox.record(hashlib.sha256(data).hexdigest())
    assert record is not None and record.vote_counts() == {"grass": 3}
    assert TrustPolicy().verdict(record).label == "grass"
    assert record.sha256 not in {r.sha256 for r in inbox.to_review(limit=500)}
