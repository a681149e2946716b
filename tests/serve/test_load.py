"""A bounded load test with `hey`: thousands of uploads at concurrency 16, zero 5xx, bounded memory."""

from __future__ import annotations

import csv
import io
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx

from greenr.data.upload_corpus import encode, photo
from tests.helpers.processes import tool
from tests.helpers.serving import Server

BOUNDARY = "greenr-load-test"
REQUESTS = 2000  # a multiple of CONCURRENCY: hey sends n // c per worker
CONCURRENCY = 16
# RSS may grow by allocator caches and metric series, but not with the request count.
MAX_RSS_GROWTH = 150 * 1024 * 1024


def multipart_body(data: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


def run_hey(hey: str, url: str, body: Path, requests: int) -> Counter:
    start = time.monotonic()
    done = subprocess.run(
        [
            hey,
            "-n",
            str(requests),
            "-c",
            str(CONCURRENCY),
            "-m",
            "POST",
            "-t",
            "30",
            "-o",
            "csv",
            "-T",
            f"multipart/form-data; boundary={BOUNDARY}",
            "-D",
            str(body),
            f"{url}/predict",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert len(rows) == requests, f"hey reported {len(rows)} of {requests} requests: {done.stderr[-500:]}"
    print(f"hey: {requests} requests at concurrency {CONCURRENCY} in {time.monotonic() - start:.1f} s")
    return Counter(row["status-code"] for row in rows)


def test_load_at_concurrency_16(server: Server, tmp_path: Path) -> None:
    hey = tool("hey")
    body = tmp_path / "body.bin"
    body.write_bytes(multipart_body(encode(photo((320, 240)), "JPEG")))
    warm = run_hey(hey, server.url, body, 160)
    assert warm == {"200": 160}
    before = server.rss_bytes()
    statuses = run_hey(hey, server.url, body, REQUESTS)
    after = server.rss_bytes()
    assert statuses == {"200": REQUESTS}, statuses
    assert after - before < MAX_RSS_GROWTH, f"RSS grew from {before >> 20} MiB to {after >> 20} MiB"
    print(f"RSS {before >> 20} MiB -> {after >> 20} MiB after {REQUESTS} requests")
    assert 'route="/predict",status="5' not in httpx.get(f"{server.url}/metrics").text
    assert server.proc.poll() is None
