"""The main job (`greenr run`): the data, the local object store, `dvc repro` and `dvc push`.

What a new user runs first: it fetches the default photos when `data/` is empty, starts the
embedded object store when the remote is local, reproduces the pipeline (pulling the outputs the
remote already has) and pushes what it made.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from greenr import scm
from greenr.errors import GreenrError
from greenr.paths import DVC_YAML

if TYPE_CHECKING:
    from greenr.data.ingest import IngestReport

log = logging.getLogger(__name__)


def run(root: Path, force: bool = False, on_ingest: Callable[[IngestReport], None] | None = None) -> None:
    """Reproduce the pipeline and push its outputs; `on_ingest` hears of the photos fetched first,
    if any. GreenrError when a step fails, saying so when the object store stopped answering."""
    from greenr.data import ingest
    from greenr.ops import objectstore
    from greenr.params import validate_all

    validate_all()
    with objectstore.store_available(root) as remote:
        report = ingest.ensure_data(root)
        if report is not None and on_ingest is not None:
            on_ingest(report)
        try:
            # --pull fetches the outputs the remote has instead of recomputing them; when it has
            # none (a new remote), DVC would only warn about each missing file.
            pull = scm.remote_has_more(DVC_YAML)
            if not pull:
                log.info("the DVC remote has none of the pipeline's outputs yet: every stage runs here")
            scm.dvc("repro", *(["--force"] if force else []), *(["--pull"] if pull else []))
            scm.dvc("push")
        except GreenrError as err:
            if objectstore.endpoint_answers(remote.endpoint):
                raise
            # Say so instead of DVC's connection retries; rerunning loses nothing (see README).
            again = "rerun `greenr run`" if remote.is_loopback else "bring it back, then rerun `greenr run`"
            raise GreenrError(
                f"{err.what}: the object store at {remote.endpoint} stopped answering during the run",
                f"{again}: it skips the stages that finished and pushes only what the remote lacks",
            ) from None
