"""Real servers on loopback for the scale-out tests: an S3-compatible server (moto_server) and PostgreSQL.

Why moto and not rclone: `rclone serve s3` answers boto3 but has no HTTP Range support (polars'
`scan_parquet` fails with "Received non-partial response when range requested") and rejects pyarrow's
chunked UploadPart (HTTP 411); `moto_server` handles all three (see docs/DEPLOYMENT.md).

Both servers run as subprocesses in their own process group and are stopped (the whole group) at
teardown. Only `moto_server` from the venv (moto[server]) and the PostgreSQL binaries (`initdb`,
`pg_ctl`: Debian's `postgresql` package) are needed; a test skips with the reason when they are absent.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

FAKE_KEY = "anime-pipeline-test-key"
FAKE_SECRET = "anime-pipeline-test-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(
    port: int, proc: subprocess.Popen, timeout: float, what: str, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            detail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}\n{detail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on 127.0.0.1:{port} within {timeout}s")


def _stop_group(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)


# S3 ------------------------------------------------------------------------------------------
@dataclass
class S3Server:
    endpoint_url: str
    port: int

    def env(self, bucket: str, prefix: str = "") -> dict[str, str]:
        """The settings of a deployment whose data home is this bucket (+ prefix)."""
        return {
            "ANIME_PIPELINE_HOME": f"s3://{bucket}" + (f"/{prefix}" if prefix else ""),
            "ANIME_PIPELINE_S3_ENDPOINT_URL": self.endpoint_url,
            "ANIME_PIPELINE_S3_REGION": "us-east-1",
        }


def object_store(env: dict[str, str]):
    """The `ObjectStore` (bucket + prefix) that these settings name as data home."""
    from anime_pipeline.settings import parse_store_uri
    from anime_pipeline.storage import ObjectStore

    _, bucket, prefix = parse_store_uri(env["ANIME_PIPELINE_HOME"])
    return ObjectStore(
        bucket=bucket, prefix=prefix, endpoint_url=env["ANIME_PIPELINE_S3_ENDPOINT_URL"], region="us-east-1"
    )


def _moto_server_bin() -> str | None:
    here = Path(sys.executable).parent / "moto_server"
    if here.exists():
        return str(here)
    return shutil.which("moto_server")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """`moto_server -H 127.0.0.1 -p PORT` for the whole session (each test uses its own bucket)."""
    exe = _moto_server_bin()
    if exe is None:
        pytest.skip("moto_server not installed (pip install 'moto[server]'); needed for the S3 tests")
    port = free_port()
    log = tmp_path_factory.mktemp("moto") / "moto_server.log"
    env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [exe, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: the teardown stops the server and its children
            env=env,
        )
    try:
        _wait_for_port(port, proc, 30, "moto_server", log)
        yield S3Server(endpoint_url=f"http://127.0.0.1:{port}", port=port)
    finally:
        _stop_group(proc)


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials through the standard AWS env chain; no ~/.aws file, no profile, no IMDS."""
    for var in (
        "AWS_PROFILE",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", FAKE_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", FAKE_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def s3_env(s3_server, aws_env):
    """Store environment for a fresh bucket on the session's moto_server (the bucket is created)."""
    import boto3

    bucket = f"anime-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint_url, region_name="us-east-1").create_bucket(
        Bucket=bucket
    )
    return s3_server.env(bucket, prefix="datasets/v1")


# PostgreSQL ----------------------------------------------------------------------------------
PG_TOOLS = ("initdb", "pg_ctl", "createdb", "postgres")


def _pg_bin_dir() -> Path | None:
    """The newest Debian-style /usr/lib/postgresql/<ver>/bin, else the folder of `initdb` on PATH."""
    candidates = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0,
        reverse=True,
    )
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(os.path.realpath(initdb)).parent)
    for d in candidates:
        if all((d / tool).exists() for tool in PG_TOOLS):
            return d
    return None


@dataclass
class PostgresServer:
    host: str
    port: int
    user: str
    password: str
    db_name: str

    def env(self) -> dict[str, str]:
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USERNAME": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db_name,
        }


@pytest.fixture(scope="session")
def postgres_server():
    """A throwaway PostgreSQL cluster: `initdb` + `pg_ctl start` into a temp dir on a free loopback port.

    PostgreSQL refuses to run as root, so as root the binaries run as the `postgres` user (created by
    Debian's package) via `runuser`, with the data dir owned by it.
    """
    bin_dir = _pg_bin_dir()
    if bin_dir is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl, createdb, postgres) not found: apt-get install -y postgresql"
        )
    prefix: list[str] = []
    # a fresh dir straight under the system temp dir (world-traversable), not pytest's 0700 tree
    base = Path(tempfile.mkdtemp(prefix="anime-pg-"))
    if os.geteuid() == 0:
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("running as root and there is no `postgres` user to run the PostgreSQL server as")
        runuser = shutil.which("runuser")
        if runuser is None:
            shutil.rmtree(base, ignore_errors=True)
            pytest.skip("running as root and `runuser` is missing: cannot start PostgreSQL as `postgres`")
        prefix = [runuser, "-u", "postgres", "--"]
        os.chown(base, pg_user.pw_uid, pg_user.pw_gid)
    data = base / "data"
    log = base / "postgres.log"
    pwfile = base / "pwfile"
    password = uuid.uuid4().hex
    pwfile.write_text(password + "\n")
    if prefix:
        os.chown(pwfile, pg_user.pw_uid, pg_user.pw_gid)
    port = free_port()
    env = {**os.environ, "PGPASSWORD": password}

    def run(*args: str, timeout: float = 120) -> None:
        r = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=timeout, env=env)
        if r.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{tail}")

    started = False
    try:
        # password auth (scram) even on loopback, so the yaml's password really is used
        run(
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "dagster",
            "--pwfile",
            str(pwfile),
            "-A",
            "scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        opts = f"-h 127.0.0.1 -p {port} -k {base} -F -c fsync=off -c full_page_writes=off"
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start")
        started = True
        run(str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "dagster", "dagster")
        yield PostgresServer(
            host="127.0.0.1", port=port, user="dagster", password=password, db_name="dagster"
        )
    finally:
        if started:
            subprocess.run(
                [*prefix, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(base, ignore_errors=True)
