"""The serving image, built and run for real with podman (scripts/setup-podman.sh; `make test` runs it).

deploy/docker/serve.Dockerfile is built from the repository root on the local stand-in of its base
image. The container serves an ONNX export mounted at /app/models, on 127.0.0.1 only, with a
read-only root filesystem (as on Kubernetes). The test waits for /ready, runs the image's own
HEALTHCHECK, posts real photos and checks their labels against the torch reference on this machine,
checks that torch is not in the image, and stops and removes the container by its ID.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from greenr.backends.export import export_onnx
from greenr.data.images import load_model_input
from greenr.data.tensors import normalize
from greenr.model import checkpoint
from greenr.model.inference import predict_proba
from greenr.paths import ONNX_MODEL_PATH
from greenr.processes import free_port
from tests.helpers import serving
from tests.helpers.processes import tool
from tests.helpers.project import DEPLOY, REPO
from tests.helpers.serving import CLASSES, PROBABILITY_ATOL, write_checkpoint

pytestmark = pytest.mark.e2e

PODMAN = REPO / "scripts" / "podman"
DOCKERFILE = DEPLOY / "docker" / "serve.Dockerfile"
IMAGE = "localhost/greenr-serve:test"
# Where the image expects the model (WORKDIR /app + greenr.paths.ONNX_MODEL_PATH).
CONTAINER_MODELS = "/app/" + str(Path(ONNX_MODEL_PATH).parent)
DATASET = REPO.parent / "shared" / "datasets" / "dandelion-grass"
# One real photo per class (the model below is fitted to label them).
PHOTOS = {label: DATASET / label / "00000000.jpg" for label in CLASSES}
BUILD_TIMEOUT_S = 1500


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    """scripts/podman (the project's storage and configuration) with `args`."""
    result = subprocess.run(
        [str(PODMAN), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
    return result


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print past pytest's capture: the figures belong in the CI log."""
    with capsys.disabled():
        print(f"\n[serve image] {line}")


@pytest.fixture(scope="module")
def serve_image() -> Iterator[tuple[str, float, int]]:
    """The image built from deploy/docker/serve.Dockerfile: (name, build seconds, size in bytes)."""
    tool("podman")
    if not (REPO / ".state" / "containers" / "containers.conf").is_file():
        pytest.fail("podman is not configured for this project: run scripts/setup-podman.sh", pytrace=False)
    started = time.monotonic()
    result = podman(
        "build", "--pull=never", "-f", str(DOCKERFILE), "-t", IMAGE, ".", timeout=BUILD_TIMEOUT_S, check=False
    )
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"podman build failed:\n{(result.stdout + result.stderr)[-6000:]}"
    size = int(podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout)
    yield IMAGE, seconds, size


def fitted_checkpoint(path: Path) -> checkpoint.Checkpoint:
    """The tests' small ResNet18 with its last layer fitted to label PHOTOS right, with margin."""
    write_checkpoint(path)
    ckpt = checkpoint.load(path)
    model = ckpt.build()
    images = torch.stack([torch.from_numpy(load_model_input(p, ckpt.spec.preprocessing)) for p in PHOTOS.values()])
    labels = torch.tensor([ckpt.spec.classes.index(label) for label in PHOTOS])
    model.eval()  # features as inference computes them; only the classifier learns
    head, model.fc = model.fc, torch.nn.Identity()
    with torch.no_grad():
        features = model(normalize(images, ckpt.spec.preprocessing))
    optimizer = torch.optim.Adam(head.parameters(), lr=0.01)
    for _ in range(200):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(head(features), labels).backward()
        optimizer.step()
    model.fc = head
    checkpoint.save(path, model, ckpt.spec)
    return checkpoint.load(path)


@pytest.fixture
def onnx_model(tmp_path: Path) -> tuple[Path, dict[str, list[float]]]:
    """A models/ folder holding the ONNX export, and the torch reference's probabilities per photo."""
    for photo in PHOTOS.values():
        if not photo.is_file():
            pytest.fail(f"{photo} is missing: CI has ../shared beside the checkout", pytrace=False)
    ckpt = fitted_checkpoint(tmp_path / "stage-1.pth")
    model = ckpt.build()
    expected = {}
    for label, photo in PHOTOS.items():
        image = torch.from_numpy(load_model_input(photo, ckpt.spec.preprocessing))
        expected[label] = predict_proba(model, image[None], ckpt.spec.preprocessing)[0].tolist()
        assert expected[label][ckpt.spec.classes.index(label)] > 0.9, "the fitted reference must be sure of each photo"
    models = tmp_path / "models"
    models.mkdir(mode=0o755)
    models.chmod(0o755)  # the container's user (uid 10001) reads the mount
    onnx_path = models / Path(ONNX_MODEL_PATH).name
    onnx_path.write_bytes(export_onnx(ckpt))
    onnx_path.chmod(0o644)
    return models, expected


@pytest.fixture
def container(serve_image: tuple[str, float, int], onnx_model: tuple[Path, dict]) -> Iterator[tuple[str, str]]:
    """The image running on 127.0.0.1:<free port>: (container ID, base URL); stopped and removed by ID."""
    image, _, _ = serve_image
    models, _ = onnx_model
    port = free_port()
    run = podman(
        "run",
        "--detach",
        "--read-only",  # as on Kubernetes; podman mounts a tmpfs on /tmp (GREENR_STATE_DIR)
        "--publish",
        f"127.0.0.1:{port}:8000",
        "--volume",
        f"{models}:{CONTAINER_MODELS}:ro",
        "--env",
        "MODEL_PULL=false",  # the model is mounted; no DVC remote here
        "--env",
        "THREADS=2",
        image,
    )
    container_id = run.stdout.strip()
    try:
        yield container_id, f"http://127.0.0.1:{port}"
    finally:
        podman("stop", "--time", "20", container_id, check=False)
        podman("rm", "--force", container_id, check=False)
        left = podman("ps", "--all", "--quiet", "--no-trunc", "--filter", f"id={container_id}").stdout
        assert container_id not in left, f"container {container_id} was not removed"


def wait_ready(container_id: str, url: str, timeout: float = 180) -> dict:
    """Poll GET /ready (podman does not run HEALTHCHECKs by itself here); fail fast if the container exits."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=5) as http:
        while time.monotonic() < deadline:
            state = podman("inspect", "--format", "{{.State.Status}}", container_id).stdout.strip()
            if state != "running":
                logs = podman("logs", container_id, check=False)
                raise AssertionError(f"the container is {state}:\n{(logs.stdout + logs.stderr)[-4000:]}")
            try:
                response = http.get("/ready")
            except httpx.TransportError:
                time.sleep(0.5)
                continue
            if response.status_code == 200:
                return response.json()
            if response.json().get("error"):
                raise AssertionError(f"model failed to load in the container: {response.json()['error']}")
            time.sleep(0.5)
    logs = podman("logs", container_id, check=False)
    raise AssertionError(f"not ready in {timeout} s:\n{(logs.stdout + logs.stderr)[-4000:]}")


@pytest.mark.timeout(BUILD_TIMEOUT_S + 300)
def test_serve_image_labels_real_photos_without_torch(
    serve_image: tuple[str, float, int],
    onnx_model: tuple[Path, dict[str, list[float]]],
    container: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, build_seconds, size = serve_image
    _, expected = onnx_model
    container_id, url = container
    started = time.monotonic()
    wait_ready(container_id, url)
    ready_seconds = time.monotonic() - started
    # The image's own HEALTHCHECK, run by hand (no systemd timer here).
    health = podman("healthcheck", "run", container_id, check=False)
    assert health.returncode == 0, f"HEALTHCHECK failed: {health.stdout}{health.stderr}"

    with httpx.Client(base_url=url, timeout=30) as http:
        serving.wait_ready(http, timeout=60)  # serve first, time later: wait for the full choice
        inference = http.get("/model").json()["inference"]
        # The ONNX backend against the torch reference: same labels, probabilities within the
        # served precision's bound (bf16 serves where the CPU has it natively).
        atol = PROBABILITY_ATOL[inference["precision"]]
        for label, photo in PHOTOS.items():
            response = http.post("/predict", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")})
            assert response.status_code == 200, response.text
            body = response.json()
            assert body["prediction"] == label, body
            got = [body["probabilities"][name] for name in CLASSES]
            assert got == pytest.approx(expected[label], abs=atol), body
        served_by = inference["name"]
    assert inference["settled"] and served_by in {"onnxruntime", "openvino"}, inference

    torch_absent = podman(
        "exec", container_id, "python", "-c", "import importlib.util; print(importlib.util.find_spec('torch') is None)"
    )
    assert torch_absent.stdout.strip() == "True", "torch must not be in the serving image"
    report(
        capsys,
        f"size {size / 1e6:.0f} MB, build {build_seconds:.0f} s, start to /ready {ready_seconds:.1f} s, "
        f"backend {served_by}",
    )
