"""EfficientNet-Lite0: shipped weights verified, ImageNet sanity, frozen BN, checkpoint and stages."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.datasets import load_sample_image

from greenr.data.images import Preprocessing, load_model_input, to_uint8_array
from greenr.data.tensors import normalize
from greenr.errors import GreenrError
from greenr.model import checkpoint
from greenr.model.architectures import build_model, get_arch, resolve_finetune, resolve_pretrained
from greenr.model.backbones import efficientnet_lite as lite
from greenr.model.inference import predict_proba
from greenr.model.spec import ModelSpec
from greenr.model.training import make_optimizer, set_train_mode, train_one_epoch
from greenr.params import TrainParams
from tests.helpers.project import run

REPO = Path(__file__).resolve().parents[2]
DAISY = 985  # ImageNet class index


def test_shipped_weights_hash_is_the_release() -> None:
    assert lite.sha256_file(lite.weights_path()).startswith(lite.WEIGHTS_SHA256_PREFIX)
    assert lite.WEIGHTS_SHA256.startswith(lite.WEIGHTS_SHA256_PREFIX)


def test_imagenet_top1_on_flower_is_daisy() -> None:
    model = lite.imagenet_model(pretrained=True).eval()
    spec = get_arch("efficientnet_lite0").preprocessing(224)
    image = Image.fromarray(load_sample_image("flower.jpg"))
    with torch.inference_mode():
        logits = model(normalize(torch.from_numpy(to_uint8_array(image, spec))[None], spec))
    assert int(logits.argmax(1)) == DAISY


def test_preprocessing_is_tf_inception_style() -> None:
    arch = get_arch("efficientnet_lite0")
    assert arch.mean == pytest.approx((127 / 255,) * 3)
    assert arch.std == pytest.approx((128 / 255,) * 3)


def test_tampered_weights_are_rejected(tmp_path: Path) -> None:
    tampered = tmp_path / "efficientnet-lite0-57934424.pth"
    data = bytearray(lite.weights_path().read_bytes())
    data[-100] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(GreenrError, match="SHA-256"):
        lite.load_imagenet_weights(tampered)
    with pytest.raises(GreenrError, match="missing"):
        lite.load_imagenet_weights(tmp_path / "absent.pth")


def test_auto_defaults_per_arch() -> None:
    assert resolve_pretrained("efficientnet_lite0", "auto") is True
    assert resolve_pretrained("resnet18", "auto") is False
    assert resolve_pretrained("resnet18", True) is True
    assert resolve_finetune("efficientnet_lite0", True, "auto") == get_arch("efficientnet_lite0").default_finetune
    assert resolve_finetune("efficientnet_lite0", False, "auto") == "full"  # nothing to freeze
    assert resolve_finetune("resnet18", False, "auto") == "full"
    assert resolve_finetune("efficientnet_lite0", True, "discriminative") == "discriminative"


def test_frozen_backbone_keeps_weights_and_batchnorm_statistics(tmp_path) -> None:
    from tests.helpers.shards import write_arrays

    torch.manual_seed(0)
    model = build_model("efficientnet_lite0", 2, pretrained=True)
    params = TrainParams(finetune="frozen", epochs=1, batch_size=4)
    set_train_mode(model, "efficientnet_lite0", "frozen")
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert batchnorms and not any(m.training for m in batchnorms)
    assert model._fc.training and model._fc[0].training  # the head's dropout stays on
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("_fc.")}
    images = torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8).numpy()
    data = write_arrays(tmp_path, "train", images, ["a", "b"] * 4, ["a", "b"])
    spec = get_arch("efficientnet_lite0").preprocessing(64)
    head_before = model._fc[1].weight.clone()
    optimizer = make_optimizer(model, "efficientnet_lite0", params)
    train_one_epoch(
        model,
        data,
        spec,
        params,
        "efficientnet_lite0",
        optimizer,
        torch.device("cpu"),
        1,
        torch.Generator().manual_seed(0),
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # incl. running_mean/var
    assert not torch.equal(head_before, model._fc[1].weight)


def test_checkpoint_round_trip_rebuilds_it(tmp_path: Path) -> None:
    arch = get_arch("efficientnet_lite0")
    spec = arch.preprocessing(64)
    model = build_model(arch.name, 2, pretrained=True).eval()
    path = tmp_path / "model.pth"
    checkpoint.save(path, model, ModelSpec(arch.name, ["dandelion", "grass"], spec))
    loaded = checkpoint.load(path)
    assert loaded.spec.arch == "efficientnet_lite0"
    assert loaded.spec.preprocessing == spec
    images = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(
        predict_proba(loaded.build(), images, loaded.spec.preprocessing), predict_proba(model, images, spec)
    )


def _write_images(folder: Path, color: tuple[int, int, int], count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        noise = rng.integers(-40, 40, (48, 48, 3))
        pixels = np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)


def test_arch_round_trip_through_the_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """split -> train -> evaluate with model.arch efficientnet_lite0, a served prediction, and
    registering the trained model in the MLflow Model Registry as the promotion gate does."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("greenr", "stages"):
        shutil.copytree(REPO / name, repo / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["model"].update(arch="efficientnet_lite0", pretrained="auto", image_size=64)
    params["train"].update(epochs=1, batch_size=8, finetune="auto")
    params["evaluate"].update(bootstrap_samples=50)
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    _write_images(repo / "data" / "dandelion", (230, 200, 30), 8, 1)
    _write_images(repo / "data" / "grass", (40, 160, 40), 8, 2)
    env = {
        **os.environ,
        "GREENR_ROOT": str(repo),
        "GREENR_STATE_DIR": str(tmp_path / "state"),
        "GREENR_OFFLINE": "1",
        "PYTHONPATH": str(repo),
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    for stage in ("split", "prepare", "train", "evaluate"):
        run([sys.executable, "-m", f"stages.{stage}"], repo, env)
    ckpt = checkpoint.load(repo / "models" / "stage-1.pth")
    assert ckpt.spec.arch == "efficientnet_lite0"
    assert ckpt.spec.preprocessing.mean == pytest.approx(lite.MEAN)
    train = json.loads((repo / "metrics" / "train.json").read_text())
    assert train["pretrained"] is True
    # finetune auto: the candidates within the budget (at 1 epoch fine-tuning is cheap: all four),
    # each scored on val; the cheapest within one standard error of the lowest loss kept
    choice = train["finetune_auto"]
    assert {*choice["tried"], *choice["over_budget"]} == {"frozen", "top", "discriminative", "full"}
    assert "top" in choice["tried"]
    order = get_arch("efficientnet_lite0").auto_candidates
    tried = [(name, choice["tried"][name]) for name in order if name in choice["tried"]]
    within = [name for name, t in tried if t["over_best"] <= t["standard_error"]]  # in the order tried
    assert train["finetune"] == within[0] and choice["picked"] == within[0]
    report = json.loads((repo / "metrics" / "evaluate.json").read_text())
    assert report["n"] == len((repo / "splits" / "test.csv").read_text().splitlines()) - 1
    # What the server does with an upload: decode, resize, normalise with the checkpoint's spec.
    image = load_model_input((repo / "data" / "grass" / "00.jpg").read_bytes(), ckpt.spec.preprocessing)
    probs = predict_proba(ckpt.build(), torch.from_numpy(image)[None], ckpt.spec.preprocessing)
    assert probs.shape == (1, 2) and float(probs.sum()) == pytest.approx(1.0)
    assert isinstance(ckpt.spec.preprocessing, Preprocessing)
    # The promotion gate's --register: the run is found by the checkpoint's SHA-256 tag.
    from greenr.ops import tracking

    monkeypatch.setenv("GREENR_STATE_DIR", env["GREENR_STATE_DIR"])
    monkeypatch.setenv("GREENR_ROOT", str(repo))
    assert tracking.register_checkpoint_model(ckpt.sha256, "greenr-test", "champion") == "1"
    champion = tracking.mlflow.MlflowClient().get_model_version_by_alias("greenr-test", "champion")
    assert champion.tags["checkpoint_sha256"] == ckpt.sha256
