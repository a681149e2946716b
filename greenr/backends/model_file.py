"""A model file as the backends see it: a PyTorch checkpoint (.pth) or its ONNX export (.onnx).

Both carry the same `ModelSpec` dict (greenr.model.spec: classes, preprocessing, temperature, ...):
the checkpoint beside its weights, the ONNX file as JSON in its metadata under `greenr`. Reading an ONNX file needs the
`onnx` package, not torch; reading a checkpoint imports torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

from greenr import scm
from greenr.backends.base import ModelFile
from greenr.errors import GreenrError
from greenr.model.spec import ModelSpec
from greenr.paths import MODEL_PATH, ONNX_MODEL_PATH

# The ONNX metadata key that holds the ModelSpec as JSON.
ONNX_METADATA_KEY = "greenr"
FORMATS = ("torch", "onnx")

log = logging.getLogger(__name__)


def model_format(name: str | Path, data: bytes | None = None) -> str:
    """ "torch" or "onnx": from the file's first bytes when they tell (a checkpoint is a zip archive
    or a pickle; an ONNX model starts with its `ir_version` field), else from the suffix of its real
    name: "onnx" for .onnx, else "torch" (a checkpoint, whatever its suffix)."""
    if data:
        if data.startswith(ZIP_MAGIC) or data[:1] == PICKLE_PROTO:
            return "torch"
        if data[:1] == ONNX_FIRST_BYTE:
            return "onnx"
    return "onnx" if Path(name).suffix.lower() == ".onnx" else "torch"


# First bytes: torch.save's zip archive, a legacy pickle's PROTO opcode, and the key of ModelProto
# field 1 (`ir_version`, a varint) that every ONNX writer puts first.
ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTO = b"\x80"
ONNX_FIRST_BYTE = b"\x08"


def read_model(data: bytes, name: str, fmt: str | None = None) -> ModelFile:
    """Parse a model file's bytes; GreenrError (with a fix) when they are not a usable model.

    `name` is for messages; the format is `fmt`, else model_format(name, data).
    """
    sha256 = hashlib.sha256(data).hexdigest()
    if (fmt or model_format(name, data)) == "onnx":
        return ModelFile(name, "onnx", _onnx_spec(data, name), sha256, data)
    try:
        from greenr.model import checkpoint
    except ImportError:
        raise GreenrError(
            f"{name} is a PyTorch checkpoint, and torch is not installed here",
            f"serve its ONNX export instead: MODEL_PATH={ONNX_MODEL_PATH} (made by `dvc repro export`)",
        ) from None
    ckpt = checkpoint.from_bytes(data, source=name)
    spec = dataclasses.replace(ckpt.spec, checkpoint_sha256=sha256)
    return ModelFile(name, "torch", spec, sha256, data, checkpoint=ckpt)


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


INT8_SUFFIX = ".int8.onnx"


def int8_path(onnx_path: str | Path) -> Path:
    """Where the INT8 export of an fp32 export lives: models/stage-1.onnx -> models/stage-1.int8.onnx."""
    path = Path(onnx_path)
    return path.with_name(path.name.removesuffix(".onnx") + INT8_SUFFIX)


def int8_companion(fp32: ModelFile, data: bytes | None, name: str) -> tuple[ModelFile | None, str]:
    """The INT8 export (`data`, read from `name`) that goes with the fp32 export `fp32`, and why not when
    it does not: absent (None), switched off (the stage writes it empty with `export.int8: false`),
    unreadable, not quantized, or made from another checkpoint (a stale file)."""
    if fp32.format != "onnx":
        return None, "the INT8 export goes with the ONNX export only"
    if data is None:
        return None, f"no INT8 export ({name} is absent)"
    if not data:
        return None, f"the INT8 export is switched off ({name} is empty: export.int8 false)"
    try:
        model = read_model(data, name, "onnx")
    except GreenrError as err:
        log.warning("%s: INT8 is not offered", err)
        return None, f"{name} is not a readable INT8 export"
    if model.spec.quantization is None:
        return None, f"{name} is not quantized"
    if model.spec.checkpoint_sha256 != fp32.spec.checkpoint_sha256:
        log.warning("%s was made from another checkpoint than %s: INT8 is not offered", name, fp32.name)
        return None, f"{name} was made from another checkpoint (stale: run `dvc repro export`)"
    return model, "ok"


def read_int8_companion(fp32: ModelFile, path: Path, name: str) -> tuple[ModelFile | None, str]:
    """int8_companion of the file beside `path` on disk."""
    companion = int8_path(path)
    try:
        data: bytes | None = companion.read_bytes()
    except FileNotFoundError:
        data = None
    except OSError as exc:
        log.warning("cannot read %s (%s): INT8 is not offered", companion, exc)
        data = None
    return int8_companion(fp32, data, str(int8_path(name)))


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


def pull_int8_file(root: Path, onnx_rel: str) -> None:
    """`dvc pull` the INT8 export beside a pulled ONNX export, if it is missing; a revision
    without one (older than the INT8 stage, or not pushed) leaves fp32 alone serving."""
    rel = int8_path(onnx_rel).as_posix()
    if (root / rel).is_file():
        return
    try:
        pull_model_file(root, rel)
    except GreenrError as err:
        log.info("no INT8 export pulled (%s): fp32 only", str(err).splitlines()[0][:200])
