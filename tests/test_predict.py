"""`greenr predict`: batch scoring of a folder or an S3 prefix, resumable and sharded, bad files per row."""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from greenr.backends.loading import open_backend
from greenr.data.images import prepare
from greenr.errors import GreenrError
from greenr.predict import BAD_IMAGE, OK, READ_ERROR, Shard, columns, score
from tests.helpers.images import class_image, jpeg_bytes
from tests.helpers.project import REPO, VENV_BIN, project_env, run
from tests.helpers.s3 import running_s3
from tests.helpers.serving import AS_IN_SERVING_IMAGE, CLASSES


def write_folder(root: Path, count: int = 5) -> dict[str, bytes]:
    """Images in two sub-folders, one corrupt file and one non-image file; returns the images."""
    images = {}
    for i in range(count):
        path = root / CLASSES[i % 2] / f"{i:03d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        images[str(path)] = jpeg_bytes(class_image(CLASSES[i % 2], seed=i, size=70))
        path.write_bytes(images[str(path)])
    (root / "grass" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    (root / "notes.txt").write_text("not an image, not listed")
    return images


def read_rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_a_folder_is_scored_with_the_servers_numbers_and_bad_files_per_row(tmp_path: Path, exported) -> None:
    _, onnx_path = exported
    images = write_folder(tmp_path / "in")
    out = tmp_path / "predictions.csv"
    summary = score(str(tmp_path / "in"), str(out), model=str(onnx_path), batch_size=2, progress=False)
    assert (summary.listed, summary.skipped, summary.counts) == (6, 0, {OK: 5, BAD_IMAGE: 1, READ_ERROR: 0})
    # Throughput against the model alone on the run's fullest batch (2 images here).
    assert summary.seconds > 0 and summary.per_s == pytest.approx(6 / summary.seconds)
    assert summary.ceiling_per_s > 0 and "batch 2" in summary.backend
    assert f"{summary.per_s / summary.ceiling_per_s:.2f} of its ceiling" in summary.line(str(out))
    rows = read_rows(out.read_text())
    assert list(rows[0]) == columns(CLASSES)
    by_path = {row["path"]: row for row in rows}
    assert set(by_path) == {*images, str(tmp_path / "in" / "grass" / "broken.jpg")}
    assert by_path[str(tmp_path / "in" / "grass" / "broken.jpg")]["status"] == BAD_IMAGE
    assert "truncated or corrupt" in by_path[str(tmp_path / "in" / "grass" / "broken.jpg")]["error"]
    _, selection = open_backend(onnx_path)
    backend = selection.backend
    expected = backend.predict_proba(
        np.stack([prepare(data, backend.spec.preprocessing).array for data in images.values()])
    )
    for (path, _), probs in zip(images.items(), expected):
        row = by_path[path]
        assert row["status"] == OK and row["prediction"] == CLASSES[int(probs.argmax())]
        assert [float(row[f"p_{name}"]) for name in CLASSES] == pytest.approx(probs.tolist(), abs=1e-5)


def test_shards_split_the_keys_deterministically() -> None:
    keys = [f"s3://b/p/{i}.jpg" for i in range(200)]
    shards = [Shard.parse(f"{i}/3") for i in range(3)]
    owned = [{k for k in keys if shard.owns(k)} for shard in shards]
    assert set().union(*owned) == set(keys) and sum(map(len, owned)) == len(keys)
    assert all(40 < len(part) < 95 for part in owned)  # roughly even
    # A key keeps its shard whatever else is listed, on every machine.
    assert [Shard(1, 3).owns(k) for k in keys] == [Shard.parse("1/3").owns(k) for k in keys]
    for bad in ("3/3", "1", "a/b", "-1/2"):
        with pytest.raises(GreenrError, match="--shard"):
            Shard.parse(bad)


def test_an_interrupted_run_resumes_and_retries_unreadable_files(tmp_path: Path, exported) -> None:
    _, onnx_path = exported
    images = write_folder(tmp_path / "in")
    paths = sorted(images)
    out = tmp_path / "predictions.csv"
    header = ",".join(columns(CLASSES))
    done_row = f"{paths[0]},ok,grass,0.9,0.1,0.9,"  # from an earlier run: kept as it is
    out.write_text(
        f"{header}\n{done_row}\n{paths[1]},read_error,,,,,timeout\n{paths[2]},ok,dand"  # cut off mid-row
    )
    summary = score(str(tmp_path / "in"), str(out), model=str(onnx_path), progress=False)
    assert summary.skipped == 1 and summary.counts[OK] == 4 and summary.counts[BAD_IMAGE] == 1
    rows = read_rows(out.read_text())
    assert [row["path"] for row in rows].count(paths[2]) == 1
    assert sorted(row["path"] for row in rows) == sorted([*paths, str(tmp_path / "in" / "grass" / "broken.jpg")])
    assert out.read_text().splitlines()[1] == done_row
    assert {row["status"] for row in rows if row["path"] == paths[1]} == {OK}
    again = score(str(tmp_path / "in"), str(out), model=str(onnx_path), progress=False)
    assert again.skipped == 6 and sum(again.counts.values()) == 0


def test_an_output_with_other_columns_is_not_appended_to(tmp_path: Path, exported) -> None:
    _, onnx_path = exported
    write_folder(tmp_path / "in", 2)
    out = tmp_path / "predictions.csv"
    out.write_text("path,status,prediction,confidence,p_cat,p_dog,error\n")
    with pytest.raises(GreenrError, match="another model's classes"):
        score(str(tmp_path / "in"), str(out), model=str(onnx_path), progress=False)
    assert out.read_text() == "path,status,prediction,confidence,p_cat,p_dog,error\n"


def test_cli_errors_are_clean(tmp_path: Path, exported) -> None:
    env = project_env(tmp_path, tmp_path / "state")
    greenr = str(VENV_BIN / "greenr")
    bad_shard = run([greenr, "predict", str(tmp_path), "--shard", "2/2"], tmp_path, env, check=False)
    assert bad_shard.returncode == 2 and "need 0 <= I < N" in bad_shard.stderr and "Traceback" not in bad_shard.stderr
    missing = run([greenr, "predict", str(tmp_path / "nope"), "--model", str(exported[1])], tmp_path, env, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_an_s3_prefix_scored_by_two_shards_into_s3_then_resumed(tmp_path: Path, exported) -> None:
    """The real local S3 server: the model pulled from the DVC remote, images and CSVs in buckets."""
    _, onnx_path = exported
    project = tmp_path / "project"
    project.mkdir()
    (project / "models").mkdir()
    (project / "models" / "stage-1.onnx").write_bytes(onnx_path.read_bytes())
    with running_s3(tmp_path / "s3") as s3:
        env = {**project_env(project, tmp_path / "state"), **s3.env, "GREENR_ROOT": str(project)}
        dvc = [sys.executable, "-m", "dvc"]
        run([*dvc, "init", "--no-scm", "-q"], project, env)
        run([*dvc, "remote", "add", "-d", "minio", "s3://greenr/dvc"], project, env)
        run([*dvc, "remote", "modify", "minio", "endpointurl", s3.endpoint], project, env)
        run([*dvc, "add", "-q", "models/stage-1.onnx"], project, env)
        run([*dvc, "push", "-q"], project, env)
        os.remove(project / "models" / "stage-1.onnx")  # `greenr predict` pulls it from the remote
        client = s3.client()
        keys = []
        for i in range(6):
            keys.append(f"incoming/day1/{i:03d}.jpg")
            client.put_object(Bucket="greenr", Key=keys[-1], Body=jpeg_bytes(class_image(CLASSES[i % 2], i, 70)))
        client.put_object(Bucket="greenr", Key="incoming/day1/bad.png", Body=b"not a png")
        client.put_object(Bucket="greenr", Key="incoming/readme.txt", Body=b"skipped: not an image name")
        greenr = str(VENV_BIN / "greenr")
        for shard in ("0/2", "1/2"):
            result = run(
                [
                    greenr,
                    "predict",
                    "s3://greenr/incoming/",
                    "--out",
                    f"s3://greenr/results/{shard[0]}.csv",
                    "--shard",
                    shard,
                    "--no-progress",
                ],
                project,
                env,
            )
            assert "scored" in result.stdout
        assert (project / "models" / "stage-1.onnx").is_file()
        parts = [
            read_rows(client.get_object(Bucket="greenr", Key=f"results/{i}.csv")["Body"].read().decode())
            for i in (0, 1)
        ]
        scored = [row["path"] for part in parts for row in part]
        assert sorted(scored) == sorted(f"s3://greenr/{key}" for key in [*keys, "incoming/day1/bad.png"])
        statuses = {row["path"]: row["status"] for part in parts for row in part}
        assert statuses.pop("s3://greenr/incoming/day1/bad.png") == BAD_IMAGE
        assert set(statuses.values()) == {OK}
        again = run(
            [
                greenr,
                "predict",
                "s3://greenr/incoming/",
                "--out",
                "s3://greenr/results/0.csv",
                "--shard",
                "0/2",
                "--no-progress",
            ],
            project,
            env,
        )
        assert f"{len(parts[0])} already in s3://greenr/results/0.csv, 0 scored" in again.stdout


def test_greenr_predict_runs_without_torch(tmp_path: Path, exported) -> None:
    """As in the serving image, which the batch-scoring Job runs."""
    _, onnx_path = exported
    write_folder(tmp_path / "in", 3)
    out = tmp_path / "p.csv"
    code = (
        f"{AS_IN_SERVING_IMAGE}; from greenr.cli import main; "
        f"main(['predict', {str(tmp_path / 'in')!r}, '--out', {str(out)!r}, '--model', {str(onnx_path)!r}])"
    )
    result = run([sys.executable, "-c", code], REPO, project_env(tmp_path, tmp_path / "state"))
    assert "3 scored, 1 not usable images" in result.stdout
    assert len(read_rows(out.read_text())) == 4
