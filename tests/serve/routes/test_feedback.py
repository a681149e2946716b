"""POST /feedback, uncertain-input capture and the review API: decoded and limited like /predict, stored
content-addressed in the inbox, capped, token-checked, 503 (never 500) when off or when the store is down."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from greenr.data.upload_corpus import bad_corpus, encode
from greenr.ops.inbox import PENDING, Inbox, LocalItemStore
from greenr.processes import stop
from serve.main import create_app
from tests.helpers.images import jpeg_bytes, scene
from tests.helpers.s3 import dvc_project, running_s3
from tests.helpers.serving import make_settings, wait_ready

MAX_UPLOAD = 10 * 1024 * 1024
CORPUS = bad_corpus(MAX_UPLOAD)
REVIEW_TOKEN = "test-review-token"


@contextmanager
def feedback_app(ckpt: Path, state: Path, **overrides: object) -> Iterator[TestClient]:
    """An app with feedback on and the inbox in `state`/inbox (GREENR_STATE_DIR)."""
    values = {"feedback": True, "feedback_inbox": "local", "review_token": REVIEW_TOKEN, **overrides}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GREENR_STATE_DIR", str(state))
        with TestClient(create_app(make_settings(ckpt, **values)), raise_server_exceptions=False) as client:
            wait_ready(client)
            yield client


def local_inbox(state: Path) -> Inbox:
    return Inbox(LocalItemStore(state / "inbox"))


def upload(data: bytes, label: str | None = "dandelion", **fields: str) -> dict:
    form = {"label": label, **fields} if label is not None else fields
    return {"files": {"file": ("photo.jpg", data, "image/jpeg")}, "data": form}


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("feedback-state")


@pytest.fixture(scope="module")
def client(ckpt_path: Path, state: Path) -> Iterator[TestClient]:
    with feedback_app(ckpt_path, state) as test_client:
        yield test_client


def test_feedback_is_off_by_default(ckpt_path: Path, tmp_path: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GREENR_STATE_DIR", str(tmp_path))
        with TestClient(create_app(make_settings(ckpt_path)), raise_server_exceptions=False) as off:
            wait_ready(off)
            assert off.get("/feedback").json() == {"enabled": False, "token_required": False, "review_enabled": False}
            response = off.post("/feedback", **upload(jpeg_bytes(scene("grass", 1))))
            assert response.status_code == 503 and "FEEDBACK=on" in response.json()["detail"]
            assert off.get("/review/items").status_code == 403
    assert not (tmp_path / "inbox").exists()


def test_feedback_is_stored_once_per_photo_with_its_record(client: TestClient, state: Path):
    data = jpeg_bytes(scene("dandelion", 2))
    sha = hashlib.sha256(data).hexdigest()
    fields = {"predicted": "grass", "confidence": "0.58", "model_sha256": "b" * 64}
    first = client.post("/feedback", **upload(data, "dandelion", **fields))
    assert first.status_code == 201, first.text
    assert first.json() == {"id": sha, "status": "new", "label": "dandelion"}
    again = client.post("/feedback", **upload(data, "dandelion", **fields))
    assert again.status_code == 200 and again.json()["status"] == "unchanged"
    record = json.loads((state / "inbox" / PENDING / f"{sha}.json").read_text())
    assert (record["label"], record["predicted"], record["confidence"], record["model_sha256"]) == (
        "dandelion",
        "grass",
        0.58,
        "b" * 64,
    )
    assert record["source"] == "feedback" and record["received"]
    assert (state / "inbox" / PENDING / f"{sha}.jpg").read_bytes() == data


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"label": "tulip"}, "label 'tulip' is not one of the model's classes"),
        ({"label": "grass", "predicted": "tulip"}, "predicted 'tulip'"),
        ({"label": "grass", "model_sha256": "xyz"}, "model_sha256"),
        ({"label": "grass", "confidence": "1.5"}, "confidence"),
        ({}, "label"),
    ],
)
def test_bad_fields_are_422(client: TestClient, fields: dict, fragment: str):
    response = client.post(
        "/feedback", files={"file": ("a.jpg", jpeg_bytes(scene("grass", 3)), "image/jpeg")}, data=fields
    )
    assert response.status_code == 422 and fragment in response.text, response.text


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_input_corpus_gets_the_same_4xx_as_predict_and_stores_nothing(client: TestClient, state: Path, name: str):
    data, content_type, status = CORPUS[name]
    before = local_inbox(state).count()
    response = client.post("/feedback", files={"file": (f"{name}.bin", data, content_type)}, data={"label": "grass"})
    assert response.status_code == status, response.text
    assert 400 <= response.status_code < 500
    assert local_inbox(state).count() == before


def test_no_5xx_after_the_corpus(client: TestClient):
    assert 'status="500"' not in client.get("/metrics").text


def test_review_lists_labels_and_serves_images_only_with_the_token(client: TestClient, state: Path):
    data = encode(scene("grass", 4), "PNG")
    sha = hashlib.sha256(data).hexdigest()
    client.post("/feedback", files={"file": ("x.png", data, "image/png")}, data={"label": "grass"})
    client.post("/feedback", files={"file": ("x.png", data, "image/png")}, data={"label": "dandelion"})  # conflict
    assert client.get("/review/items").status_code == 401
    assert client.get("/review/items", headers={"Authorization": "Bearer nope"}).status_code == 401
    auth = {"Authorization": f"Bearer {REVIEW_TOKEN}"}
    listed = client.get("/review/items", headers=auth).json()
    assert listed["classes"] == ["dandelion", "grass"]
    (item,) = [i for i in listed["items"] if i["id"] == sha]
    assert item["labels_given"] == ["dandelion", "grass"] and item["source"] == "feedback"
    image = client.get(f"/review/items/{sha}/image", headers=auth)
    assert image.status_code == 200 and image.content == data and image.headers["content-type"] == "image/png"
    assert client.post(f"/review/items/{sha}/label", headers=auth, json={"label": "tulip"}).status_code == 422
    labeled = client.post(f"/review/items/{sha}/label", headers=auth, json={"label": "grass"})
    assert labeled.status_code == 200 and labeled.json()["label"] == "grass"
    assert sha not in [i["id"] for i in client.get("/review/items", headers=auth).json()["items"]]
    assert local_inbox(state).record(sha).reviewed  # type: ignore[union-attr]
    assert client.get(f"/review/items/{'0' * 64}/image", headers=auth).status_code == 404
    assert client.post(f"/review/items/{'0' * 64}/label", headers=auth, json={"label": "grass"}).status_code == 404
    assert client.get("/review/items/not-a-sha/image", headers=auth).status_code == 422


def test_feedback_token(ckpt_path: Path, tmp_path: Path):
    with feedback_app(ckpt_path, tmp_path, feedback_token="s3cret, other-client") as app:
        assert app.get("/feedback").json()["token_required"] is True
        data = jpeg_bytes(scene("grass", 5))
        assert app.post("/feedback", **upload(data, "grass")).status_code == 401
        assert app.post("/feedback", **upload(data, "grass"), headers=bearer("s3cre")).status_code == 401
        ok = app.post("/feedback", **upload(data, "grass"), headers=bearer("s3cret"))
        assert ok.status_code == 201
        assert app.post("/feedback", **upload(data, "grass"), headers=bearer("other-client")).status_code == 200


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_votes_count_once_per_token_and_agreeing_tokens_make_a_label_trusted(ckpt_path: Path, tmp_path: Path):
    """Each FEEDBACK_TOKEN is a voter: one token's repeats count once; three agreeing tokens make an
    item that no longer waits for review (FEEDBACK_MIN_AGREEING, default 3)."""
    with feedback_app(ckpt_path, tmp_path, feedback_token="a,b,c") as app:
        data = jpeg_bytes(scene("dandelion", 9))
        sha = hashlib.sha256(data).hexdigest()
        auth = {"Authorization": f"Bearer {REVIEW_TOKEN}"}
        for _ in range(3):
            app.post("/feedback", **upload(data, "dandelion"), headers=bearer("a"))
        (item,) = app.get("/review/items", headers=auth).json()["items"]
        assert item["id"] == sha and item["votes"] == {"dandelion": 1}
        for token in ("b", "c"):
            assert app.post("/feedback", **upload(data, "dandelion"), headers=bearer(token)).status_code == 200
        assert app.get("/review/items", headers=auth).json()["items"] == []
    record = local_inbox(tmp_path).record(sha)
    assert record is not None and record.vote_counts() == {"dandelion": 3} and len(set(record.votes["dandelion"])) == 3
    assert not any(token in record.dumps().decode() for token in ('"a"', '"b"', '"c"')), "tokens must not be stored"


def test_global_ceiling_and_inbox_size_cap(ckpt_path: Path, tmp_path: Path):
    with feedback_app(ckpt_path, tmp_path / "a", feedback_token="a,b,c", feedback_max_per_hour=2) as app:
        for seed, token in ((6, "a"), (7, "b")):
            sent = app.post("/feedback", **upload(jpeg_bytes(scene("grass", seed)), "grass"), headers=bearer(token))
            assert sent.status_code == 201
        capped = app.post("/feedback", **upload(jpeg_bytes(scene("grass", 8)), "grass"), headers=bearer("c"))
        assert capped.status_code == 429 and "on this server" in capped.json()["detail"]
        # A token bucket: the next slot comes back in 3600/2 s, not after a whole hour.
        assert 1700 < int(capped.headers["retry-after"]) <= 1801
    with feedback_app(ckpt_path, tmp_path / "b", feedback_max_items=2) as app:
        for seed in (6, 7):
            assert app.post("/feedback", **upload(jpeg_bytes(scene("grass", seed)), "grass")).status_code == 201
        full = app.post("/feedback", **upload(jpeg_bytes(scene("grass", 8)), "grass"))
        assert full.status_code == 503 and "inbox is full" in full.json()["detail"]
    assert local_inbox(tmp_path / "b").count() == 2


def test_one_client_at_full_speed_cannot_block_another(ckpt_path: Path, tmp_path: Path):
    """Per-client token buckets: a client over its budget gets 429 with Retry-After; another client is
    unaffected; re-sending the same photo and label costs nothing."""
    settings = {"feedback_token": "greedy,polite", "feedback_client_max_per_hour": 3, "feedback_max_per_hour": 100}
    with feedback_app(ckpt_path, tmp_path, **settings) as app:
        first = jpeg_bytes(scene("grass", 100))
        answers = [
            app.post("/feedback", **upload(jpeg_bytes(scene("grass", 100 + i)), "grass"), headers=bearer("greedy"))
            for i in range(10)
        ]
        assert [a.status_code for a in answers] == [201] * 3 + [429] * 7
        limited = answers[-1]
        assert "from this client" in limited.json()["detail"] and limited.json()["request_id"]
        assert 1100 < int(limited.headers["retry-after"]) <= 1201  # one of 3 per hour comes back in 20 min
        for _ in range(5):  # identical re-sends: answered, never limited
            again = app.post("/feedback", **upload(first, "grass"), headers=bearer("greedy"))
            assert again.status_code == 200 and again.json()["status"] == "unchanged"
        polite = app.post("/feedback", **upload(jpeg_bytes(scene("dandelion", 120)), "grass"), headers=bearer("polite"))
        assert polite.status_code == 201, polite.text
        # The same photo from the other client is a new vote (and costs that client one).
        assert app.post("/feedback", **upload(first, "grass"), headers=bearer("polite")).status_code == 200
    assert local_inbox(tmp_path).count() == 4


@pytest.mark.parametrize(
    ("host", "same_as", "different_from"),
    [
        ("192.0.2.7", "192.0.2.7", "192.0.2.8"),
        ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9", "2001:db8:1:3::1"),  # an IPv6 client counts by its /64
        ("::ffff:192.0.2.7", "192.0.2.7", "192.0.2.8"),
    ],
)
def test_client_identity_by_address(host: str, same_as: str, different_from: str):
    from starlette.requests import Request

    from serve.feedback import client_identity

    def identity(address: str) -> str:
        request = Request({"type": "http", "client": (address, 1234), "headers": [], "method": "POST", "path": "/"})
        return client_identity(request, None, make_settings(Path("m.onnx")))

    assert identity(host) == identity(same_as) != identity(different_from)
    assert host not in identity(host)


def test_uncertain_predictions_are_captured_unlabeled_and_rate_limited(ckpt_path: Path, tmp_path: Path):
    # An untrained model is never fully sure: a threshold of 1.0 captures every prediction.
    with feedback_app(ckpt_path, tmp_path, feedback=False, capture_below_confidence=1.0, capture_max_per_hour=2) as app:
        for seed in range(3):
            response = app.post(
                "/predict", files={"file": ("a.jpg", jpeg_bytes(scene("grass", 20 + seed)), "image/jpeg")}
            )
            assert response.status_code == 200
    # Leaving the app waited for the captures in flight.
    records = local_inbox(tmp_path).records()
    assert len(records) == 2
    assert all(r.label is None and r.source == "uncertain" and r.predicted and r.confidence for r in records)
    assert len(local_inbox(tmp_path).to_review()) == 2
    # Per client too: one client's uncertain photos take at most CAPTURE_CLIENT_MAX_PER_HOUR.
    with feedback_app(
        ckpt_path, tmp_path / "b", feedback=False, capture_below_confidence=1.0, capture_client_max_per_hour=1
    ) as app:
        for seed in range(3):
            photo = jpeg_bytes(scene("grass", 30 + seed))
            assert app.post("/predict", files={"file": ("a.jpg", photo, "image/jpeg")}).status_code == 200
    assert len(local_inbox(tmp_path / "b").records()) == 1


def test_no_capture_above_the_threshold(ckpt_path: Path, tmp_path: Path):
    with feedback_app(ckpt_path, tmp_path, capture_below_confidence=0.01) as app:
        assert (
            app.post("/predict", files={"file": ("a.jpg", jpeg_bytes(scene("grass", 30)), "image/jpeg")}).status_code
            == 200
        )
    assert local_inbox(tmp_path).count() == 0


def test_inbox_in_the_object_store_and_503_when_the_store_goes_down(ckpt_path: Path, tmp_path: Path):
    data = jpeg_bytes(scene("dandelion", 40))
    sha = hashlib.sha256(data).hexdigest()
    with pytest.MonkeyPatch.context() as mp, running_s3(tmp_path / "s3") as s3:
        for key, value in s3.env.items():
            mp.setenv(key, value)
        mp.setenv("GREENR_ROOT", str(dvc_project(tmp_path / "p", s3.endpoint)))
        with feedback_app(ckpt_path, tmp_path / "state", feedback_inbox="store") as app:
            stored = app.post("/feedback", **upload(data, "dandelion"))
            assert stored.status_code == 201, stored.text
            keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket="greenr")["Contents"]]
            # One vote waits for review (fewer than FEEDBACK_MIN_AGREEING): its marker is there too.
            assert sorted(keys) == [f"inbox/pending/{sha}.jpg", f"inbox/pending/{sha}.json", f"inbox/review/{sha}"]
            assert s3.proc is not None
            stop(s3.proc)  # the store goes down under the running server: a clear 503, never a 500
            down = app.post("/feedback", **upload(jpeg_bytes(scene("dandelion", 41)), "dandelion"))
            assert down.status_code == 503, down.text
            assert "not answering" in down.json()["detail"]
            assert app.get("/review/items", headers={"Authorization": f"Bearer {REVIEW_TOKEN}"}).status_code == 503
    assert not (tmp_path / "state" / "inbox").exists(), "nothing may fall back to the local folder"
