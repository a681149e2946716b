"""/predict and /predict/batch: the shared inference's answers for every supported image kind, batching,
and the bad-input corpus: every kind of bad request gets its 4xx, never a 500, and the server lives on."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from greenr.data.images import decode_image, load_model_input
from greenr.data.upload_corpus import bad_corpus, encode, good_corpus, photo
from greenr.model import checkpoint
from greenr.model.inference import predict_proba
from serve.main import create_app
from tests.helpers.serving import CLASSES, Server, make_settings

MAX_UPLOAD = 10 * 1024 * 1024
CORPUS = bad_corpus(MAX_UPLOAD)


@pytest.mark.parametrize("name", list(CORPUS))
def test_bad_file_gets_its_status(client: TestClient, name: str) -> None:
    data, content_type, status = CORPUS[name]
    response = client.post("/predict", files={"file": (f"{name}.bin", data, content_type)})
    assert response.status_code == status, response.text
    if status != 413:
        assert response.json()["detail"]  # a message a client can show


@pytest.mark.parametrize("name", [n for n, (_, _, s) in CORPUS.items() if s != 413])
def test_bad_file_in_a_batch_fails_alone(client: TestClient, name: str) -> None:
    data, content_type, status = CORPUS[name]
    files = [
        ("files", ("good.png", encode(photo(), "PNG"), "image/png")),
        ("files", (f"{name}.bin", data, content_type)),
    ]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    assert [r["status"] for r in response.json()["results"]] == [200, status]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({}, 422),  # no body at all
        ({"files": {"image": ("a.png", encode(photo(), "PNG"), "image/png")}}, 422),  # wrong field name
        ({"data": {"file": "just a string"}}, 422),  # a form field, not a file
        ({"json": {"file": "x"}}, 422),  # not multipart
        ({"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=x"}}, 422),
    ],
)
def test_missing_or_malformed_field(client: TestClient, kwargs: dict, status: int) -> None:
    response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    batch = client.post("/predict/batch", **kwargs)
    assert batch.status_code == status, batch.text


def test_oversized_file_in_batch_is_413_for_that_file(client: TestClient) -> None:
    files = [
        ("files", ("good.png", encode(photo(), "PNG"), "image/png")),
        ("files", ("big.jpg", b"\xff\xd8\xff" + b"\0" * MAX_UPLOAD, "image/jpeg")),
    ]
    results = client.post("/predict/batch", files=files).json()["results"]
    assert [r["status"] for r in results] == [200, 413]


def test_server_still_healthy_after_the_corpus(client: TestClient) -> None:
    for data, content_type, _ in CORPUS.values():
        client.post("/predict", files={"file": ("x", data, content_type)})
    response = client.post("/predict", files={"file": ("ok.png", encode(photo(), "PNG"), "image/png")})
    assert response.status_code == 200
    assert 'status="500"' not in client.get("/metrics").text


def _multipart_head(boundary: str) -> bytes:
    return (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()


def test_declared_length_over_limit_rejected_before_reading(server: Server) -> None:
    """A huge Content-Length is refused with 413 before the body is sent at all."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    boundary = "b0undary"
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
    conn.putheader("Content-Length", str(5 * 1024**3))  # 5 GB, never sent
    conn.endheaders()
    conn.send(_multipart_head(boundary))
    response = conn.getresponse()
    assert response.status == 413
    assert_json_error(response.getheader("Content-Type"), response.read(), response.getheader("X-Request-ID"))
    conn.close()


def assert_json_error(content_type: str | None, body: bytes, rid: str | None) -> None:
    """An error answer as the README promises: JSON with `detail` and the request's id."""
    assert (content_type or "").startswith("application/json"), (content_type, body[:200])
    answer = json.loads(body)
    assert answer["detail"] and rid and answer["request_id"] == rid, answer


def test_chunked_upload_over_limit_is_cut_off_while_streaming(server: Server) -> None:
    """Without Content-Length the server counts while reading and stops at the limit."""
    boundary = "b0undary"
    chunk = b"\0" * (1024 * 1024)

    def body():
        yield _multipart_head(boundary)
        for _ in range(40):  # 40 MB offered, far over the limit
            yield chunk

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/predict",
            body=body(),
            encode_chunked=True,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}", "Transfer-Encoding": "chunked"},
        )
        response = conn.getresponse()
        status = response.status
        assert_json_error(response.getheader("Content-Type"), response.read(), response.getheader("X-Request-ID"))
    except (BrokenPipeError, ConnectionResetError):
        pytest.fail("server closed the connection without an answer")
    finally:
        conn.close()
    assert status == 413
    assert server.rss_bytes() < 2 * 1024**3


def test_predict_matches_shared_inference(client: TestClient, ckpt_path: Path) -> None:
    data = encode(photo(), "JPEG")
    response = client.post("/predict", files={"file": ("a.jpg", data, "image/jpeg")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"prediction", "confidence", "probabilities", "model"}
    assert set(body["probabilities"]) == set(CLASSES)
    assert body["prediction"] == max(body["probabilities"], key=body["probabilities"].get)
    assert body["confidence"] == pytest.approx(max(body["probabilities"].values()))
    # Same numbers as the shared code path used by evaluation.
    ckpt = checkpoint.load(ckpt_path)
    image = torch.from_numpy(load_model_input(data, ckpt.spec.preprocessing))
    expected = predict_proba(ckpt.build(), image[None], ckpt.spec.preprocessing)[0]
    got = torch.tensor([body["probabilities"][c] for c in ckpt.spec.classes])
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("name", list(good_corpus()))
def test_every_supported_image_kind_works(client: TestClient, name: str) -> None:
    data, content_type = good_corpus()[name]
    response = client.post("/predict", files={"file": (f"{name}.img", data, content_type)})
    assert response.status_code == 200, response.text
    assert sum(response.json()["probabilities"].values()) == pytest.approx(1, abs=1e-5)


def test_batch_mixes_good_and_bad_files(client: TestClient) -> None:
    files = [
        ("files", ("a.jpg", encode(photo(), "JPEG"), "image/jpeg")),
        ("files", ("b.txt", b"not an image", "text/plain")),
        ("files", ("c.gif", encode(photo(), "GIF"), "image/gif")),
        ("files", ("d.png", encode(photo(), "PNG"), "image/png")),
    ]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == [200, 400, 415, 200]
    assert [r["filename"] for r in results] == ["a.jpg", "b.txt", "c.gif", "d.png"]
    assert results[0]["prediction"] in CLASSES and "error" in results[1]


def test_batch_over_file_count_limit(client: TestClient) -> None:
    files = [("files", (f"{i}.png", encode(photo((8, 8)), "PNG"), "image/png")) for i in range(17)]
    response = client.post("/predict/batch", files=files)
    assert response.status_code == 413
    assert "limit of 16" in response.json()["detail"]


def test_concurrent_requests_are_batched(client: TestClient) -> None:
    data = encode(photo(), "PNG")
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(
            pool.map(lambda _: client.post("/predict", files={"file": ("a.png", data)}).status_code, range(48))
        )
    assert statuses == [200] * 48
    metrics = client.get("/metrics").text
    # Some forward pass must have carried more than one image.
    count = sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("greenr_inference_batch_size_count")
    )
    total = sum(
        float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("greenr_inference_batch_size_sum")
    )
    assert total > count


def test_exif_rotation_is_applied(client: TestClient) -> None:
    from greenr.data.upload_corpus import exif_rotated_jpeg

    rotated, upright = exif_rotated_jpeg()
    assert decode_image(rotated).size == decode_image(upright).size == (80, 60)
    a = client.post("/predict", files={"file": ("r.jpg", rotated, "image/jpeg")}).json()["probabilities"]
    b = client.post("/predict", files={"file": ("u.jpg", upright, "image/jpeg")}).json()["probabilities"]
    for name in CLASSES:
        assert a[name] == pytest.approx(b[name], abs=2e-3)
    assert json.dumps(a)  # plain floats


def test_a_request_without_its_file_answers_422_while_the_model_loads(tmp_path: Path) -> None:
    """The request's shape is checked before the model's state: no model (a missing file) still
    answers 422 to a request that could never succeed, and 503 to one that could."""
    with TestClient(create_app(make_settings(tmp_path / "absent.pth")), raise_server_exceptions=False) as client:
        assert client.post("/predict").status_code == 422
        assert client.post("/predict", content=b"x", headers={"content-type": "image/gif"}).status_code == 415
        image = {"file": ("a.jpg", encode(photo(), "JPEG"), "image/jpeg")}
        assert client.post("/predict", files=image).status_code == 503
