"""Error answers reveal nothing about the server (no absolute paths, host names or stack traces),
carry a request id that the log files the full detail under, and /ready tells a failed reload
apart from a server without a model."""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from greenr.data.upload_corpus import bad_corpus, encode, photo
from serve.main import create_app
from tests.helpers.project import REPO
from tests.helpers.serving import RELOAD_TOKEN, make_settings, wait_ready, write_checkpoint

AUTH = {"Authorization": f"Bearer {RELOAD_TOKEN}"}
MAX_UPLOAD = 10 * 1024 * 1024
# An absolute path on this machine: a slash, then one of the folders at its root.
ABSOLUTE_PATH = re.compile(rf"(?<![\w.~/-])/(?:{'|'.join(map(re.escape, os.listdir('/')))})(?:/|\b)")


def assert_reveals_nothing(response: httpx.Response, *secrets: str) -> None:
    """No path of this machine, no host name, no stack trace; a request id in header and body."""
    text = response.text
    where = f"{response.request.method} {response.request.url.path} -> {response.status_code}: {text[:500]}"
    assert not ABSOLUTE_PATH.search(text), f"absolute path in {where}"
    for secret in (str(REPO), socket.gethostname(), *secrets):
        assert secret not in text, f"{secret!r} in {where}"
    assert "Traceback" not in text and 'File "' not in text, where
    rid = response.headers.get("x-request-id")
    assert rid, f"no X-Request-ID on {where}"
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
    if response.status_code >= 400 and isinstance(body, dict) and "detail" in body:
        assert body.get("request_id") == rid, where


@pytest.fixture(scope="module")
def errors_app(ckpt_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(ckpt_path)), raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.mark.parametrize("name", list(bad_corpus(MAX_UPLOAD)))
def test_bad_input_answers_reveal_nothing(errors_app: TestClient, name: str) -> None:
    data, content_type, status = bad_corpus(MAX_UPLOAD)[name]
    single = errors_app.post("/predict", files={"file": (f"{name}.bin", data, content_type)})
    assert single.status_code == status
    assert_reveals_nothing(single)
    batch = errors_app.post(
        "/predict/batch",
        files=[
            ("files", ("ok.png", encode(photo(), "PNG"), "image/png")),
            ("files", (f"{name}.bin", data, content_type)),
        ],
    )
    assert batch.status_code == 200
    assert_reveals_nothing(batch)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/predict", {}, 422),
        ("post", "/predict", {"json": {"file": "x"}}, 422),
        ("post", "/predict/batch", {"data": {"files": "just a string"}}, 422),
        ("get", "/no/such/path", {}, 404),
        ("delete", "/predict", {}, 405),
        ("post", "/model/reload", {}, 401),
        ("post", "/model/reload", {"headers": {"Authorization": "Bearer wrong"}}, 401),
    ],
)
def test_request_errors_reveal_nothing(errors_app: TestClient, method: str, path: str, kwargs: dict, status: int):
    response = getattr(errors_app, method)(path, **kwargs)
    assert response.status_code == status, response.text
    assert_reveals_nothing(response)


def test_reload_of_a_bad_revision_tells_the_client_little_and_the_log_everything(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "stage-1.pth"
    write_checkpoint(path)
    with TestClient(create_app(make_settings(path)), raise_server_exceptions=False) as client:
        wait_ready(client)
        with caplog.at_level(logging.INFO, logger="serve.errors"):
            failed = client.post("/model/reload", json={"rev": "no-such-rev"}, headers=AUTH)
        assert failed.status_code == 409
        assert_reveals_nothing(failed, str(tmp_path))
        detail = failed.json()["detail"]
        assert "'no-such-rev' is not a git revision" in detail and "still serving" in detail
        rid = failed.headers["x-request-id"]
        logged = [r.getMessage() for r in caplog.records if rid in r.getMessage()]
        assert logged and str(REPO) in logged[0], "the log must keep the full detail under the request id"

        # Still ready: the failed reload is its own field, not the `error` of a server without a model.
        ready = client.get("/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["ready"] is True and body["error"] is None
        assert "is not a git revision" in body["last_reload_error"]
        assert_reveals_nothing(ready, str(tmp_path))

        # A corrupt file on reload: the same, and a good reload clears the field.
        good = path.read_bytes()
        path.write_bytes(b"corrupt")
        corrupt = client.post("/model/reload", headers=AUTH)
        assert corrupt.status_code == 409 and "not a readable checkpoint" in corrupt.json()["detail"]
        assert_reveals_nothing(corrupt, str(tmp_path))
        path.write_bytes(good)
        assert client.post("/model/reload", headers=AUTH).status_code == 200
        assert client.get("/ready").json()["last_reload_error"] is None


@pytest.mark.parametrize("fault", ["corrupt", "missing"])
def test_no_model_answers_reveal_nothing(tmp_path: Path, fault: str) -> None:
    path = tmp_path / "models" / "stage-1.pth"
    if fault == "corrupt":
        path.parent.mkdir()
        path.write_bytes(b"this is not a checkpoint")
    with TestClient(create_app(make_settings(path)), raise_server_exceptions=False) as client:
        with pytest.raises(AssertionError, match="not a readable checkpoint|does not exist"):
            wait_ready(client)
        answers = [
            client.get("/ready"),
            client.get("/model"),
            client.post("/predict", files={"file": ("a.png", encode(photo(), "PNG"), "image/png")}),
            client.post("/predict/batch", files=[("files", ("a.png", encode(photo(), "PNG"), "image/png"))]),
        ]
    assert [a.status_code for a in answers] == [503] * 4
    for answer in answers:
        assert_reveals_nothing(answer, str(tmp_path))
    ready = answers[0].json()
    assert ready["ready"] is False and ready["error"] and ready["last_reload_error"] is None


def test_feedback_errors_reveal_nothing(ckpt_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bad uploads to /feedback, and an inbox that cannot be written (a file where its folder goes)."""
    monkeypatch.setenv("GREENR_STATE_DIR", str(tmp_path / "state"))
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "inbox").write_text("a file where the inbox folder should be")
    settings = make_settings(ckpt_path, feedback=True, feedback_inbox="local")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        answers = [
            client.post("/feedback", files={"file": (name, data, ctype)}, data={"label": "grass"})
            for name, (data, ctype, _) in bad_corpus(MAX_UPLOAD).items()
        ]
        answers.append(
            client.post(
                "/feedback", files={"file": ("a.png", encode(photo(), "PNG"), "image/png")}, data={"label": "grass"}
            )
        )
        answers.append(client.post("/feedback", files={"file": ("a.png", b"x", "image/png")}, data={"label": "tulip"}))
    assert answers[-2].status_code == 503, answers[-2].text  # the inbox cannot be written
    assert all(a.status_code >= 400 for a in answers)
    for answer in answers:
        assert_reveals_nothing(answer, str(tmp_path))


def test_an_unexpected_exception_is_a_plain_500_with_the_trace_in_the_log(
    ckpt_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(make_settings(ckpt_path))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"secret detail {tmp_path}/x")

    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.ERROR):
        response = client.get("/boom")
    assert response.status_code == 500
    assert_reveals_nothing(response, str(tmp_path), "secret detail")
    rid = response.headers["x-request-id"]
    record = next(r for r in caplog.records if rid in r.getMessage())
    assert record.exc_info and "secret detail" in str(record.exc_info[1])


def test_an_app_that_was_never_started_answers_with_a_request_id(ckpt_path: Path) -> None:
    never_started = TestClient(create_app(make_settings(ckpt_path)), raise_server_exceptions=False)
    answer = never_started.get("/model")
    assert answer.status_code == 503
    assert_reveals_nothing(answer)


def test_request_id_is_taken_from_the_client_when_sane(errors_app: TestClient) -> None:
    given = "3f2c9a1e-7b7d-4a51-9d4e-2b1b0f6f8e11"
    assert errors_app.get("/health", headers={"X-Request-ID": given}).headers["x-request-id"] == given
    for insane in ("a b", "x" * 129, "<script>", "id;rm -rf"):
        answer = errors_app.get("/health", headers={"X-Request-ID": insane}).headers["x-request-id"]
        assert answer != insane and re.fullmatch(r"[0-9a-f]{32}", answer)
    generated = {errors_app.get("/health").headers["x-request-id"] for _ in range(3)}
    assert len(generated) == 3


@pytest.mark.parametrize(
    ("detail", "public"),
    [
        (
            "checkpoint /srv/app/models/stage-1.pth does not exist\n  fix: run `dvc pull models/stage-1.pth`",
            "checkpoint <path> does not exist; fix: run `dvc pull models/stage-1.pth`",
        ),
        ("could not connect to http://minio.internal:9000/greenr", "could not connect to <url>"),
        ("database sqlite:////home/me/.state/mlflow.db is locked", "database <url> is locked"),
        ("see ~/greenr/.state/weed.log", "see <path>"),
        ("peer 10.1.2.3 refused; 127.0.0.1 answered", "peer <address> refused; 127.0.0.1 answered"),
        ("use POST /model/reload or GET /ready", "use POST /model/reload or GET /ready"),
    ],
)
def test_public_message_redacts_paths_urls_and_addresses_only(detail: str, public: str) -> None:
    from serve.errors import public_message

    assert public_message(detail) == public


def test_public_message_hides_this_host_and_keeps_both_ends_of_a_long_one() -> None:
    from serve.errors import MAX_MESSAGE, public_message

    host = socket.gethostname()
    assert host not in (public_message(f"{host} said no " + "x" * 1000) or "")
    short = public_message("head " + "y" * 1000 + "\x1b[1m; fix: do this") or ""
    assert len(short) == MAX_MESSAGE and short.startswith("head ") and short.endswith("; fix: do this")


def test_100_kb_fields_come_back_and_go_to_the_log_only_as_a_short_prefix(
    ckpt_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every client value, however long, is quoted by a short prefix in the answer and in the log."""
    monkeypatch.setenv("GREENR_STATE_DIR", str(tmp_path))
    huge = 100_000
    review = {"Authorization": "Bearer review-token"}
    settings = make_settings(ckpt_path, feedback=True, feedback_inbox="local", review_token="review-token")
    image = ("a.png", encode(photo(), "PNG"), "image/png")
    sha = "0" * 64
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        wait_ready(client)
        with caplog.at_level(logging.INFO):
            answers = [
                client.post("/feedback", files={"file": image}, data={"label": "x" * huge}),
                client.post("/feedback", files={"file": image}, data={"label": "grass", "predicted": "y" * huge}),
                client.post("/feedback", files={"file": image}, data={"label": "grass", "model_sha256": "z" * huge}),
                client.post("/feedback", files={"file": image}, data={"label": "grass", "confidence": "9" * huge}),
                client.get(f"/review/items/{'a' * 9000}/image", headers=review),
                client.post(f"/review/items/{sha}/label", headers=review, json={"label": "q" * huge}),
                client.post(f"/review/items/{sha}/label", headers=review, json=["v" * huge, {"k" * huge: 1}]),
                client.post("/model/reload", headers=AUTH, json={"rev": "r" * huge}),
                client.post("/model/reload", headers=AUTH, json={"rev": "--output=/tmp/x"}),
                client.get("/" + "p" * 9000),
                client.post("/predict", files={"file": image}, headers={"X-Request-ID": "i" * huge}),
            ]
            batch = client.post("/predict/batch", files=[("files", ("f" * 4_000 + ".png", image[1], "image/png"))])
    statuses = [a.status_code for a in answers]
    assert statuses == [422, 422, 422, 422, 422, 422, 422, 422, 422, 404, 200], statuses
    for answer in [*answers[:-1]]:
        body = answer.json()
        assert set(body) == {"detail", "request_id"} and body["request_id"] == answer.headers["x-request-id"], body
        assert len(answer.content) < 2_000, f"{answer.request.url.path[:40]}: {len(answer.content)} bytes"
    assert "x" * 64 in answers[0].json()["detail"] and "x" * 65 not in answers[0].json()["detail"]
    assert len(answers[-1].headers["x-request-id"]) == 32  # an insane id is replaced, not echoed
    assert batch.status_code == 200 and len(batch.content) < 2_000
    logged = [r for r in caplog.records if r.name.startswith(("serve", "greenr", "uvicorn"))]  # not httpx's
    assert any("-> 422" in r.getMessage() for r in logged)
    for record in logged:
        message = record.getMessage()
        assert len(message) < 2_500, f"{len(message)}-character log line: {message[:200]}"
        for letter in "xyz9aqvrpif":
            assert letter * 300 not in message, f"a client value logged at length: {message[:200]}"
