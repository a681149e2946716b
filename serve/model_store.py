"""The model being served: the DVC-tracked ONNX export (or the checkpoint), swapped atomically on reload.

The file is run by the backend greenr.backends.loading chooses (BACKEND / PRECISION settings),
after checking it against the reference on the probe batch. Serving an ONNX file imports no torch.

A `LoadedModel` is immutable. Requests take a reference to the current one when they
start and keep it to the end, so a reload never changes the model under a request in flight;
the old model is freed when the last request holding it finishes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from greenr import scm
from greenr.backends.base import Backend
from greenr.backends.loading import Selection, load_backend
from greenr.backends.model_file import (
    ModelFile,
    int8_companion,
    int8_path,
    load_model_file,
    model_format,
    pull_int8_file,
    pull_model_file,
    read_int8_companion,
    read_model,
)
from greenr.errors import GreenrError
from greenr.model.spec import ModelSpec
from greenr.ops.drift import DriftReference
from greenr.paths import DRIFT_REFERENCE, DVC_LOCK, EVALUATE_METRICS, repo_root

log = logging.getLogger("serve.model")


@dataclass(frozen=True)
class LoadedModel:
    selection: Selection  # the backend serving it, and why that one
    spec: ModelSpec
    format: str  # "onnx" | "torch"
    sha256: str  # of the model file
    md5: str  # what dvc.lock records for the file
    git_rev: str
    source: str  # "workspace" or "rev:<rev>"
    metrics: dict[str, Any] | None
    dvc_lock_md5: str | None
    # Statistics of the images this model was trained on (None: drift is not monitored).
    drift_reference: DriftReference | None = None
    # The INT8 export offered beside it (its sha256 and how it was made), or why there is none.
    int8: dict[str, Any] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)

    @property
    def backend(self) -> Backend:
        return self.selection.backend

    @property
    def classes(self) -> list[str]:
        return self.spec.classes

    def version(self) -> dict[str, Any]:
        """Short identity of the model, returned with every prediction."""
        return {
            "arch": self.spec.arch,
            "sha256": self.sha256,
            "md5": self.md5,
            "git_rev": self.git_rev,
            "source": self.source,
            "backend": self.backend.name,
            "precision": self.backend.precision,
        }

    def describe(self) -> dict[str, Any]:
        return {
            **self.version(),
            "format": self.format,
            "checkpoint_sha256": self.spec.checkpoint_sha256,
            "classes": self.classes,
            "image_size": self.spec.image_size,
            "preprocessing": self.spec.preprocessing.to_dict(),
            "temperature": self.spec.temperature,
            "flip_average": self.spec.flip_average,
            "vflip_average": self.spec.vflip_average,
            "meta": self.spec.meta,
            "inference": {**self.selection.describe(), "int8": self.int8},
            "dvc_lock_md5": self.dvc_lock_md5,
            "matches_dvc_lock": None if self.dvc_lock_md5 is None else self.dvc_lock_md5 == self.md5,
            "evaluate_metrics": self.metrics,
            "drift_monitored": self.drift_reference is not None,
            "loaded_at": self.loaded_at,
        }


def _lock_md5(lock_text: str | None, model_path: str) -> str | None:
    """The md5 that dvc.lock records for `model_path` (any stage's outs)."""
    try:
        lock = yaml.safe_load(lock_text or "") or {}
        for stage in (lock.get("stages") or {}).values():
            for out in stage.get("outs") or []:
                if out.get("path") == model_path:
                    return out.get("md5")
    except (yaml.YAMLError, AttributeError, TypeError):
        return None
    return None


def _drift_reference(text: str | None, where: str) -> DriftReference | None:
    """The drift reference committed beside the model; a missing or bad one only turns drift off."""
    if text is None:
        log.warning("no drift reference at %s: drift is not monitored (run `dvc repro drift_reference`)", where)
        return None
    try:
        return DriftReference.parse(text, where)
    except GreenrError as exc:
        log.warning("%s: drift is not monitored", exc)
        return None


def _int8_at_rev(model: ModelFile, root: Path, rel: str, rev: str) -> tuple[ModelFile | None, str]:
    """The INT8 export beside `rel` at `rev`, from the DVC remote (absent at older revisions)."""
    import dvc.api

    name = int8_path(rel).as_posix()
    if model.format != "onnx":
        return int8_companion(model, None, name)
    try:
        with dvc.api.open(name, repo=str(root), rev=rev, mode="rb") as handle:
            data: bytes | None = handle.read()
    except Exception as exc:  # not tracked at that revision, or not pushed: fp32 serves
        log.info("no INT8 export at %s (%s): fp32 only", rev, type(exc).__name__)
        data = None
    return int8_companion(model, data, f"{name} at revision {rev!r}")


def load_model(
    model_path: str,
    rev: str | None = None,
    pull: bool = True,
    threads: int = 0,
    root: Path | None = None,
    drift_reference: str | None = DRIFT_REFERENCE,
    backend: str = "auto",
    precision: str = "auto",
    first_agreeing: bool = False,
    rev_name: str = "MODEL_REV",
) -> LoadedModel:
    """Read the model file (ONNX export or checkpoint), choose its backend and check it against
    the reference; raises GreenrError with a fix on any failure. `first_agreeing`: as
    greenr.backends.loading.load_backend (the choice may be unsettled). `rev_name`: what errors
    call `rev` (the setting, or the reload body's field).

    At a revision the file keeps its real name and format (from its bytes, else its suffix).
    Also reads the evaluate metrics and the drift reference of the same revision (workspace
    files, or git at `rev`); `drift_reference=None` leaves drift unmonitored.
    """
    root = root or repo_root()
    path = Path(model_path)
    rel = path.relative_to(root).as_posix() if path.is_absolute() and path.is_relative_to(root) else path.as_posix()
    if rev:
        import dvc.api  # slow import; only needed for revisions

        git_rev = None if rev.startswith("-") else scm.resolve(rev, cwd=root)  # never an option for git
        if git_rev is None:
            raise GreenrError(
                f"{rev_name} {rev[:100]!r} is not a git revision of {root}",
                "use a commit, tag, branch or experiment name from `git log`/`dvc exp list`",
            )
        try:
            with dvc.api.open(rel, repo=str(root), rev=rev, mode="rb") as handle:
                data = handle.read()
        except Exception as exc:
            raise GreenrError(
                f"could not read {rel} at revision {rev!r} from DVC: {type(exc).__name__}: {exc}",
                "push it with `dvc push` from where it was trained and check the remote (`greenr store status`)",
            ) from None
        model = read_model(data, f"{rel} at revision {rev!r}", model_format(rel, data))
        int8, int8_note = _int8_at_rev(model, root, rel, rev)
        metrics_text = scm.show(git_rev, EVALUATE_METRICS, cwd=root)
        lock_text = scm.show(git_rev, DVC_LOCK, cwd=root)
        drift_text = scm.show(git_rev, drift_reference, cwd=root) if drift_reference else None
        source = f"rev:{rev}"
    else:
        full = path if path.is_absolute() else root / path
        if not full.is_file() and pull:
            pull_model_file(root, rel)
            if model_format(rel) == "onnx":
                pull_int8_file(root, rel)
        model = load_model_file(full, name=rel)
        int8, int8_note = read_int8_companion(model, full, rel)
        commit, dirty = scm.head(cwd=root)
        git_rev = f"{commit}-dirty" if dirty else commit
        metrics_file = root / EVALUATE_METRICS
        metrics_text = metrics_file.read_text(encoding="utf-8") if metrics_file.is_file() else None
        lock_file = root / DVC_LOCK
        lock_text = lock_file.read_text(encoding="utf-8") if lock_file.is_file() else None
        drift_file = root / drift_reference if drift_reference else None
        drift_text = drift_file.read_text(encoding="utf-8") if drift_file and drift_file.is_file() else None
        source = "workspace"

    selection = load_backend(
        model, backend, precision, threads, first_agreeing=first_agreeing, int8=int8, int8_note=int8_note
    )
    try:
        metrics = json.loads(metrics_text) if metrics_text else None
    except json.JSONDecodeError:
        metrics = None
    md5 = hashlib.md5(model.data).hexdigest()
    loaded = LoadedModel(
        selection=selection,
        spec=model.spec,
        format=model.format,
        sha256=model.sha256,
        md5=md5,
        git_rev=git_rev,
        source=source,
        metrics=metrics,
        dvc_lock_md5=_lock_md5(lock_text, rel),
        drift_reference=_drift_reference(drift_text, f"{drift_reference}@{git_rev[:12]}") if drift_reference else None,
        int8={"sha256": int8.sha256, **(int8.spec.quantization or {})} if int8 else {"absent": int8_note},
    )
    log.info(
        "loaded %s (%s, %d classes, %d px) sha256 %s at %s: %s %s",
        rel,
        model.spec.arch,
        len(model.spec.classes),
        model.spec.image_size,
        model.sha256[:12],
        git_rev[:12],
        selection.backend.name,
        selection.backend.precision,
    )
    return loaded


class ModelStore:
    """Holds the current model (or the reason there is none) and swaps it atomically."""

    def __init__(
        self,
        model_path: str,
        rev: str | None,
        pull: bool,
        threads: int,
        drift_reference: str | None = DRIFT_REFERENCE,
        backend: str = "auto",
        precision: str = "auto",
    ) -> None:
        self.model_path = model_path
        self.backend = backend
        self.precision = precision
        self.drift_reference = drift_reference
        self.rev = rev
        self.pull = pull
        self.threads = threads
        self.current: LoadedModel | None = None
        # Why no model serves (the last load failed); None once one does.
        self.error: str | None = None
        # The last reload failed while `current` kept serving; None after a successful load.
        self.last_reload_error: str | None = None
        self.loading = False
        self._reload_lock = threading.Lock()
        # Called with the new current model when a background step replaced it (the backend settled).
        self.on_change: Callable[[LoadedModel], None] | None = None
        # Threads timing the backends of a load in the background (see close()).
        self._settling: list[threading.Thread] = []

    def load(self, rev: str | None = None, *, initial: bool = False) -> LoadedModel:
        """Load `rev` (default: the configured one) and swap it in; on failure keep the old model.

        Runs in a worker thread; concurrent reloads queue behind each other.
        """
        with self._reload_lock:
            self.loading = True
            target = rev if rev is not None else self.rev
            try:
                loaded = load_model(
                    self.model_path,
                    target or None,
                    self.pull,
                    self.threads,
                    drift_reference=self.drift_reference,
                    backend=self.backend,
                    precision=self.precision,
                    first_agreeing=True,  # serve at once; the fastest backend takes over when timed
                    rev_name="MODEL_REV" if rev is None else "rev",
                )
            except GreenrError as err:
                self._failed(str(err))
                log.error("model load failed: %s", err)
                raise
            except Exception as exc:
                detail = f"unexpected error loading the model: {type(exc).__name__}: {exc}"
                self._failed(detail)
                log.exception("model load failed")
                raise GreenrError(detail) from exc
            finally:
                self.loading = False
            self.current = loaded  # one reference assignment: atomic for readers
            self.rev = target
            self.error = self.last_reload_error = None
            if not loaded.selection.settled:
                settling = threading.Thread(target=self._settle, args=(loaded,), name="backend-settle", daemon=True)
                self._settling = [t for t in self._settling if t.is_alive()] + [settling]
                settling.start()
            return loaded

    def close(self, timeout: float = 60) -> bool:
        """Wait for the background timing of backends to finish; False if some is still running
        after `timeout` s. Native inference cannot be interrupted, and a thread still inside it when
        the interpreter (or the app) goes away may crash the process."""
        deadline = time.monotonic() + timeout
        for settling in self._settling:
            settling.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._settling)

    def _settle(self, loaded: LoadedModel) -> None:
        """Time every backend candidate of `loaded` (it serves meanwhile) and swap in the fastest."""
        provisional = loaded.selection
        assert provisional.settle is not None
        if self.current is not loaded:
            return  # a reload replaced it before its timing began: nothing to time
        try:
            final = provisional.settle()
        except Exception as exc:  # the provisional backend agrees with the reference: it keeps serving
            log.warning(
                "timing the backends failed (%s: %s); %s keeps serving",
                type(exc).__name__,
                exc,
                provisional.backend.name,
            )
            final = replace(provisional, settle=None)
        if (final.backend.name, final.backend.precision) == (provisional.backend.name, provisional.backend.precision):
            final = replace(final, backend=provisional.backend)  # the warm one; the copy built for timing goes
        with self._reload_lock:
            if self.current is not loaded:
                return  # a reload replaced it meanwhile
            self.current = settled = replace(loaded, selection=final)
        log.info("backend settled: %s %s serves %s", final.backend.name, final.backend.precision, self.model_path)
        if self.on_change:
            self.on_change(settled)

    def _failed(self, detail: str) -> None:
        if self.current is None:
            self.error = detail
        else:
            self.last_reload_error = detail
