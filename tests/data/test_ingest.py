"""Ingest from a local folder and from a real HTTP server on loopback."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from greenr import cli
from greenr.data.ingest import IngestReport, ingest
from greenr.errors import GreenrError
from greenr.scm import dvc_executable

CLASSES = ("dandelion", "grass")


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def temp_files(root: Path) -> list[Path]:
    return sorted(root.rglob(".*.tmp"))


def reasons(report: IngestReport) -> dict[str, str]:
    return {s.file: s.reason for s in report.skipped}


# ---------------------------------------------------------------------------- local folder


@pytest.fixture
def local_source(tmp_path: Path, make_dataset, class_jpeg) -> Path:
    """4 good images per class, plus a truncated JPEG, a text file and a non-image named .png."""
    src = tmp_path / "source"
    make_dataset(src, per_class=4)
    (src / "dandelion" / "corrupt.jpg").write_bytes(class_jpeg("dandelion", 99)[:300])
    (src / "grass" / "readme.txt").write_text("not an image\n")
    (src / "grass" / "fake.png").write_bytes(b"<html>not a png</html>")
    (src / ".cache").mkdir()  # hidden: not a class
    (src / ".cache" / "x.jpg").write_bytes(class_jpeg("grass", 7))
    return src


def test_local_copies_good_files_byte_for_byte_and_reports_bad_ones(local_source: Path, tmp_path: Path):
    dest = tmp_path / "data"
    report = ingest(str(local_source), dest, dvc_add=False)

    assert report.ok == 8 and len(report.written) == 8 and not report.unchanged
    assert set(reasons(report)) == {"dandelion/corrupt.jpg", "grass/fake.png"}
    assert "truncated" in reasons(report)["dandelion/corrupt.jpg"]
    assert report.not_images == 1  # grass/readme.txt: left out, counted
    assert "not a recognised image" in reasons(report)["grass/fake.png"]
    copied = files_under(dest)
    source = files_under(local_source)
    assert set(copied) == {f"{c}/{i:08d}.jpg" for c in CLASSES for i in range(4)}
    assert all(copied[name] == source[name] for name in copied)
    assert not temp_files(dest)
    summary = report.summary()
    assert "8 ok (8 written, 0 unchanged), 2 skipped" in summary
    assert "per class: dandelion 4, grass 4" in summary
    assert "left out 1 file(s) that are not images" in summary
    assert "skipped dandelion/corrupt.jpg" in summary


def test_local_rerun_rewrites_nothing(local_source: Path, tmp_path: Path):
    dest = tmp_path / "data"
    ingest(str(local_source), dest, dvc_add=False)
    before = mtimes(dest)

    again = ingest(str(local_source), dest, dvc_add=False)

    assert not again.written and len(again.unchanged) == 8
    assert mtimes(dest) == before


def test_changed_source_file_is_rewritten_alone(local_source: Path, tmp_path: Path, class_jpeg):
    dest = tmp_path / "data"
    ingest(str(local_source), dest, dvc_add=False)
    before = mtimes(dest)
    new_bytes = class_jpeg("grass", 1234)
    (local_source / "grass" / "00000002.jpg").write_bytes(new_bytes)

    report = ingest(str(local_source), dest, dvc_add=False)

    assert report.written == ["grass/00000002.jpg"]
    assert (dest / "grass" / "00000002.jpg").read_bytes() == new_bytes
    after = mtimes(dest)
    assert {k for k in before if before[k] != after[k]} == {"grass/00000002.jpg"}


def test_extra_files_are_kept_and_reported_unless_pruned(local_source: Path, tmp_path: Path, class_jpeg):
    dest = tmp_path / "data"
    ingest(str(local_source), dest, dvc_add=False)
    (dest / "grass" / "old.jpg").write_bytes(class_jpeg("grass", 5))

    kept = ingest(str(local_source), dest, dvc_add=False)
    assert kept.extra == ["grass/old.jpg"] and (dest / "grass" / "old.jpg").exists()
    assert "--prune" in kept.summary()

    pruned = ingest(str(local_source), dest, dvc_add=False, prune=True)
    assert pruned.removed == ["grass/old.jpg"] and not (dest / "grass" / "old.jpg").exists()
    assert files_under(dest).keys() == {f"{c}/{i:08d}.jpg" for c in CLASSES for i in range(4)}


def test_stale_temp_files_of_an_interrupted_run_are_removed(local_source: Path, tmp_path: Path):
    dest = tmp_path / "data"
    (dest / "dandelion").mkdir(parents=True)
    stale = dest / "dandelion" / ".00000001.jpg.k2j4h.tmp"
    stale.write_bytes(b"half a file")

    report = ingest(str(local_source), dest, dvc_add=False)

    assert "dandelion/.00000001.jpg.k2j4h.tmp" in report.removed
    assert not temp_files(dest)


def test_missing_source_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        ingest(str(tmp_path / "nowhere"), tmp_path / "data", dvc_add=False)
    assert "does not exist" in err.value.what and "DATA_SOURCE" in err.value.fix
    assert not (tmp_path / "data").exists()


def test_missing_class_folder_is_a_clear_error(local_source: Path, tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        ingest(str(local_source), tmp_path / "data", classes=["dandelion", "clover"], dvc_add=False)
    assert "clover" in err.value.what and "missing" in err.value.what
    assert "dandelion, clover" in err.value.fix
    assert not (tmp_path / "data").exists()  # checked before anything is written


def test_a_single_class_folder_is_a_clear_error(local_source: Path, tmp_path: Path):
    shutil.rmtree(local_source / "grass")
    with pytest.raises(GreenrError) as err:
        ingest(str(local_source), tmp_path / "data", dvc_add=False)
    assert "1 class folder(s) (dandelion)" in err.value.what and "2 or more" in err.value.what
    assert not (tmp_path / "data").exists()


def test_any_class_tree_is_copied_with_nested_files(tmp_path: Path, class_jpeg):
    """Class folders of any name, nested folders inside them, PNG and WebP beside JPEG."""
    from PIL import Image

    src = tmp_path / "flowers"
    for index, label in enumerate(("daisy", "rose", "sunflower", "tulip", "zinnia")):
        (src / label / "2024" / "june").mkdir(parents=True)
        (src / label / "a.jpg").write_bytes(class_jpeg("dandelion", index))
        (src / label / "2024" / "june" / "b.jpg").write_bytes(class_jpeg("grass", index))
        Image.new("RGB", (20, 20), (index * 40, 10, 10)).save(src / label / "c.png")
        Image.new("RGB", (20, 20), (10, index * 40, 10)).save(src / label / "2024" / "d.webp")
        (src / label / "notes.md").write_text("not an image")
    report = ingest(str(src), tmp_path / "data", dvc_add=False)
    assert report.ok == 20 and not report.skipped and report.not_images == 5
    assert "per class: daisy 4, rose 4, sunflower 4, tulip 4, zinnia 4" in report.summary()
    assert (tmp_path / "data" / "rose" / "2024" / "june" / "b.jpg").read_bytes() == class_jpeg("grass", 1)
    assert ingest(str(src), tmp_path / "data", dvc_add=False).unchanged == report.written


def test_empty_class_folder_is_a_clear_error(local_source: Path, tmp_path: Path):
    for path in (local_source / "dandelion").iterdir():
        path.unlink()
    with pytest.raises(GreenrError) as err:
        ingest(str(local_source), tmp_path / "data", dvc_add=False)
    assert "dandelion" in err.value.what and "empty" in err.value.what


def test_class_with_only_bad_files_is_a_clear_error(local_source: Path, tmp_path: Path):
    for path in (local_source / "grass").glob("0*.jpg"):
        path.unlink()
    with pytest.raises(GreenrError) as err:
        ingest(str(local_source), tmp_path / "data", dvc_add=False)
    assert "no usable grass image" in err.value.what
    assert "not a recognised image" in err.value.what


def test_main_prints_summary_and_uses_data_source_env(
    local_source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    monkeypatch.setenv("DATA_SOURCE", str(local_source))
    cli.main(["ingest", "--dest", str(tmp_path / "data"), "--no-dvc-add", "--workers", "2"])
    out = capsys.readouterr().out
    assert "8 ok" in out and "2 skipped" in out and str(local_source) in out


def test_main_reports_errors_without_traceback(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ingest", "--source", str(tmp_path / "nowhere"), "--dest", str(tmp_path / "data"), "--no-dvc-add"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: data source folder") and "fix:" in err and "Traceback" not in err


def test_dvc_add_tracks_data_and_a_rerun_leaves_data_dvc_alone(local_source: Path, tmp_path: Path):
    project = tmp_path / "project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([dvc_executable(), "init", "-q"], cwd=project, check=True)
    dest = project / "data"

    first = ingest(str(local_source), dest)
    dvc_file = project / "data.dvc"
    out = yaml.safe_load(dvc_file.read_text())["outs"][0]
    assert first.dvc_updated and out["path"] == "data" and out["nfiles"] == 8
    before = dvc_file.stat().st_mtime_ns

    second = ingest(str(local_source), dest)
    assert not second.dvc_updated and dvc_file.stat().st_mtime_ns == before


def test_dvc_add_outside_a_dvc_project_is_a_clear_error(local_source: Path, tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        ingest(str(local_source), tmp_path / "data")
    assert "not inside a DVC project" in err.value.what and "--no-dvc-add" in err.value.fix


# ---------------------------------------------------------------------------- HTTP


@dataclass
class FakeImageHost:
    """A real HTTP server on 127.0.0.1 serving /data/{class}/{index:08d}.jpg with some faults."""

    routes: dict[str, Callable[[BaseHTTPRequestHandler], None]]
    hits: Counter = field(default_factory=Counter)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""


@pytest.fixture
def image_host(class_jpeg) -> Iterator[FakeImageHost]:
    host = FakeImageHost(routes={})

    def send(body: bytes, status: int = 200, content_type: str = "image/jpeg"):
        def respond(handler: BaseHTTPRequestHandler) -> None:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)

        return respond

    def slow(handler: BaseHTTPRequestHandler) -> None:
        host.release.wait(5)  # far past the client's timeout; released at teardown
        with contextlib.suppress(ConnectionError):  # the client has given up by now
            send(class_jpeg("dandelion", 7))(handler)

    def flaky(handler: BaseHTTPRequestHandler) -> None:
        first = host.hits[handler.path] == 1
        send(b"busy", 503, "text/plain")(handler) if first else send(class_jpeg("grass", 5))(handler)

    for c, label in enumerate(CLASSES):
        for index in range(5):
            host.routes[f"/data/{label}/{index:08d}.jpg"] = send(class_jpeg(label, 100 * c + index))
    # index 5: missing (404); 6: truncated JPEG; 7: slower than the timeout
    host.routes["/data/dandelion/00000006.jpg"] = send(class_jpeg("dandelion", 6)[:400])
    host.routes["/data/dandelion/00000007.jpg"] = slow
    # grass 5: 503 on the first try, then fine; 6: an HTML page with status 200; 7: fine
    host.routes["/data/grass/00000005.jpg"] = flaky
    host.routes["/data/grass/00000006.jpg"] = send(b"<html>rate limited</html>", 200, "text/html")
    host.routes["/data/grass/00000007.jpg"] = send(class_jpeg("grass", 107))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            host.hits[self.path] += 1
            route = host.routes.get(self.path)
            (route or send(b"not found", 404, "text/plain"))(self)

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    host.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield host
    finally:
        host.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)


def http_ingest(host: FakeImageHost, dest: Path, **kwargs) -> IngestReport:
    settings = {"count": 8, "timeout": 0.5, "retries": 1, "backoff": 0.01, "workers": 4, "dvc_add": False}
    return ingest(f"{host.url}/data/{{class}}/{{index:08d}}.jpg", dest, **(settings | kwargs))


def test_http_downloads_verifies_retries_and_reports(image_host: FakeImageHost, tmp_path: Path):
    dest = tmp_path / "data"
    report = http_ingest(image_host, dest)

    assert report.ok == 12
    skipped = reasons(report)
    assert set(skipped) == {
        "dandelion/00000005.jpg",
        "dandelion/00000006.jpg",
        "dandelion/00000007.jpg",
        "grass/00000006.jpg",
    }
    assert "HTTP 404" in skipped["dandelion/00000005.jpg"]
    assert "truncated" in skipped["dandelion/00000006.jpg"]
    assert "timed out" in skipped["dandelion/00000007.jpg"] and "2 tries" in skipped["dandelion/00000007.jpg"]
    assert "not a recognised image" in skipped["grass/00000006.jpg"]
    # A 404 is final; a 503 and a timeout are retried.
    assert image_host.hits["/data/dandelion/00000005.jpg"] == 1
    assert image_host.hits["/data/grass/00000005.jpg"] == 2
    assert image_host.hits["/data/dandelion/00000007.jpg"] == 2
    assert (dest / "grass" / "00000005.jpg").is_file()
    assert not (dest / "dandelion" / "00000006.jpg").exists()
    assert not temp_files(dest)
    assert "12 ok (12 written, 0 unchanged), 4 skipped" in report.summary()


def test_http_rerun_downloads_and_rewrites_nothing_present(image_host: FakeImageHost, tmp_path: Path):
    dest = tmp_path / "data"
    http_ingest(image_host, dest)
    before, hits = mtimes(dest), image_host.hits.copy()

    again = http_ingest(image_host, dest)

    assert not again.written and len(again.unchanged) == 12
    assert mtimes(dest) == before
    assert image_host.hits["/data/grass/00000000.jpg"] == hits["/data/grass/00000000.jpg"]

    refreshed = http_ingest(image_host, dest, refresh=True)  # downloads again, compares, keeps
    assert not refreshed.written and mtimes(dest) == before
    assert image_host.hits["/data/grass/00000000.jpg"] == hits["/data/grass/00000000.jpg"] + 1


def test_every_download_failing_is_a_clear_error(image_host: FakeImageHost, tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        ingest(
            f"{image_host.url}/nothing/{{class}}/{{index}}.jpg",
            tmp_path / "data",
            count=3,
            timeout=0.5,
            retries=1,
            backoff=0.01,
            dvc_add=False,
        )
    assert "no usable dandelion image" in err.value.what and "HTTP 404" in err.value.what
    assert "DATA_SOURCE" in err.value.fix


def test_unreachable_server_is_retried_then_reported(tmp_path: Path):
    import socket

    with socket.socket() as probe:  # a port with nothing listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(GreenrError) as err:
        ingest(
            f"http://127.0.0.1:{port}/{{class}}/{{index}}.jpg",
            tmp_path / "data",
            count=1,
            timeout=0.5,
            retries=1,
            backoff=0.01,
            dvc_add=False,
        )
    assert "Connection refused" in err.value.what or "ConnectionRefusedError" in err.value.what


def test_offline_refuses_remote_urls_before_any_download(tmp_path: Path):
    with pytest.raises(GreenrError) as err:
        ingest("https://example.invalid/{class}/{index:08d}.jpg", tmp_path / "data", dvc_add=False)
    assert "GREENR_OFFLINE" in err.value.what and "DATA_SOURCE" in err.value.fix


@pytest.mark.parametrize(
    "template, expected",
    [
        ("http://127.0.0.1:1/data/all.jpg", "lacks the {class} and {index} fields"),
        ("ftp://127.0.0.1/{class}/{index}.jpg", "only http and https"),
        ("http://127.0.0.1:1/{class}/{index}/{other}.jpg", "cannot be filled in"),
    ],
)
def test_bad_url_templates_are_clear_errors(tmp_path: Path, template: str, expected: str):
    with pytest.raises(GreenrError, match=expected.replace("{", r"\{").replace("}", r"\}")):
        ingest(template, tmp_path / "data", dvc_add=False)


def test_a_host_that_does_not_resolve_fails_at_once_with_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No network: one clear error before any download is tried, not a warning per image."""
    import socket

    monkeypatch.delenv("GREENR_OFFLINE")
    lookups: list[str] = []

    def no_dns(host: str, *args: object, **kwargs: object) -> list:
        lookups.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    # The machine without DNS, simulated: tests never send a query beyond loopback.
    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    with pytest.raises(GreenrError) as err:
        ingest("https://images.example.org/data/{class}/{index:08d}.jpg", tmp_path / "data", dvc_add=False)
    assert lookups == ["images.example.org"]
    assert "cannot resolve images.example.org" in err.value.what and "DATA_SOURCE" in (err.value.fix or "")
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.jpg"))


def test_many_skipped_files_make_one_warning_and_a_short_summary(
    tmp_path: Path, make_dataset, caplog: pytest.LogCaptureFixture
) -> None:
    src = tmp_path / "source"
    make_dataset(src, per_class=2)
    for i in range(30):
        (src / "grass" / f"broken-{i:02d}.jpg").write_bytes(b"not a jpeg at all")
    with caplog.at_level("INFO"):
        report = ingest(str(src), tmp_path / "data", dvc_add=False)
    assert len(report.skipped) == 30
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["skipped 30 of 34 file(s)"]
    lines = report.summary().splitlines()
    assert sum(line.startswith("  skipped ") for line in lines) == 10
    assert "  ... and 20 more; all 30 skipped by reason: does not decode as an image: 30" in lines
