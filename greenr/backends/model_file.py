"""A model file as the backends see it: a PyTorch checkpoint (.pth) or its ONNX export (.onnx).

Both carry the same `ModelSpec` (classes, preprocessing, temperature, ...): the checkpoint in its
own keys, the ONNX file as JSON in its metadata under `greenr`. Reading an ONNX file needs the
`onnx` package, not torch; reading a checkpoint imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from greenr import scm
from greenr.backends.base import ModelSpec
from greenr.errors import GreenrError
from greenr.paths import MODEL_PATH, ONNX_MODEL_PATH

# The ONNX metadata key that holds the ModelSpec as JSON.
ONNX_METADATA_KEY = "greenr"
FORMATS = ("torch", "onnx")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelFile:
    name: str  # where it came from, for messages
    format: str  # "torch" | "onnx"
    spec: ModelSpec
    sha256: str  # of the file's bytes
    data: bytes
    checkpoint: Any = None  # the parsed greenr.model.checkpoint.Checkpoint of a torch file


def model_format(name: str | Path) -> str:
    """ "onnx" for a .onnx file, else "torch" (a checkpoint, whatever its suffix)."""
    return "onnx" if Path(name).suffix.lower() == ".onnx" else "torch"


def spec_from_checkpoint(ckpt: Any) -> ModelSpec:
    """The ModelSpec of a greenr.model.checkpoint.Checkpoint."""
    return ModelSpec(
        arch=ckpt.arch,
        classes=list(ckpt.classes),
        preprocessing=ckpt.preprocessing,
        temperature=float(ckpt.temperature),
        # Optional in the checkpoint format: absent means no test-time flip averaging.
        flip_average=bool(getattr(ckpt, "flip_average", False)),
        vflip_average=bool(getattr(ckpt, "vflip_average", False)),
        checkpoint_sha256=ckpt.sha256,
        meta=dict(ckpt.meta),
    )


def read_model(data: bytes, name: str) -> ModelFile:
    """Parse a model file's bytes; GreenrError (with a fix) when they are not a usable model."""
    sha256 = hashlib.sha256(data).hexdigest()
    if model_format(name) == "onnx":
        return ModelFile(name, "onnx", _onnx_spec(data, name), sha256, data)
    try:
        from greenr.model import checkpoint
    except ImportError:
        raise GreenrError(
            f"{name} is a PyTorch checkpoint, and torch is not installed here",
            f"serve its ONNX export instead: MODEL_PATH={ONNX_MODEL_PATH} (made by `dvc repro export`)",
        ) from None
    ckpt = checkpoint.from_bytes(data, source=name)
    return ModelFile(name, "torch", spec_from_checkpoint(ckpt), sha256, data, checkpoint=ckpt)


def load_model_file(path: str | Path, name: str | None = None) -> ModelFile:
    """Read a model file from disk (see read_model); `name` for messages (default: the path)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        tracked = ONNX_MODEL_PATH if model_format(path) == "onnx" else MODEL_PATH
        raise GreenrError(
            f"model file {path} does not exist", f"run `dvc repro` to make it, or `dvc pull {tracked}`"
        ) from None
    except OSError as exc:
        raise GreenrError(f"model file {path} cannot be read: {exc}", "check the file's permissions") from None
    return read_model(data, name or str(path))


def onnx_metadata(data: bytes, name: str) -> dict[str, str]:
    """The metadata properties of an ONNX model, read from the protobuf wire format without parsing
    the graph: microseconds for a 45 MB model instead of a full parse, and no `onnx` package needed."""
    view = memoryview(data)
    props: dict[str, str] = {}
    has_graph = False
    pos = 0
    try:
        while pos < len(view):
            key, pos = _varint(view, pos)
            field_number, wire_type = key >> 3, key & 7
            if wire_type == 0:
                _, pos = _varint(view, pos)
            elif wire_type in (1, 5):
                pos += 8 if wire_type == 1 else 4
            elif wire_type == 2:
                length, pos = _varint(view, pos)
                if pos + length > len(view):
                    raise ValueError("a field runs past the end of the file")
                if field_number == MODEL_METADATA_FIELD:
                    entry = _fields(view[pos : pos + length])
                    props[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
                has_graph |= field_number == MODEL_GRAPH_FIELD
                pos += length
            else:
                raise ValueError(f"protobuf wire type {wire_type} does not occur in ONNX models")
        if pos != len(view):
            raise ValueError("the last field runs past the end of the file")
    except (ValueError, UnicodeDecodeError) as exc:
        raise GreenrError(
            f"{name} is not a readable ONNX model: {exc}",
            f"export it again with `dvc repro export`, or restore it with `dvc pull {ONNX_MODEL_PATH}`",
        ) from None
    if not has_graph:
        raise GreenrError(
            f"{name} is not a readable ONNX model: it has no graph",
            f"export it again with `dvc repro export`, or restore it with `dvc pull {ONNX_MODEL_PATH}`",
        )
    return props


# ModelProto field numbers (onnx/onnx.proto3): `graph`, and `metadata_props` (key = 1, value = 2).
MODEL_GRAPH_FIELD = 7
MODEL_METADATA_FIELD = 14


def _varint(view: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise ValueError("a truncated or overlong number")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(view: memoryview) -> dict[int, bytes]:
    """The length-delimited fields of a small message (a metadata entry)."""
    found: dict[int, bytes] = {}
    pos = 0
    while pos < len(view):
        key, pos = _varint(view, pos)
        if key & 7 != 2:
            raise ValueError("a metadata entry with a non-string field")
        length, pos = _varint(view, pos)
        if pos + length > len(view):
            raise ValueError("a metadata entry runs past its end")
        found[key >> 3] = bytes(view[pos : pos + length])
        pos += length
    return found


def _onnx_spec(data: bytes, name: str) -> ModelSpec:
    metadata = onnx_metadata(data, name)
    if ONNX_METADATA_KEY not in metadata:
        raise GreenrError(
            f"{name} lacks the `{ONNX_METADATA_KEY}` metadata (classes, preprocessing)",
            "export it with this project's `dvc repro export` (stages/export.py)",
        )
    try:
        return ModelSpec.from_dict(json.loads(metadata[ONNX_METADATA_KEY]))
    except (ValueError, KeyError, TypeError) as exc:
        raise GreenrError(
            f"{name} has unreadable `{ONNX_METADATA_KEY}` metadata: {exc}", "export it again with `dvc repro export`"
        ) from None


def pull_model_file(root: Path, rel: str) -> None:
    """`dvc pull` one model file that is missing from the workspace; GreenrError with dvc's last lines."""
    log.info("%s is missing: pulling it with `dvc pull %s`", rel, rel)
    scm.dvc(
        "pull",
        rel,
        cwd=root,
        capture=True,
        timeout=300,
        fix="start the object store (`greenr store start`) and check credentials, or make it with `dvc repro`",
    )
