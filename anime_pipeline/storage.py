"""Object-store layer: mirror files of the data dir to S3 (or an S3-compatible server), chosen by configuration.

The local filesystem under `ANIME_PIPELINE_HOME` stays the source of truth and the default: with
`ANIME_PIPELINE_S3_BUCKET` unset, `ObjectStore.from_env()` returns None and nothing here runs. With a
bucket, a file at `<home>/<relative path>` is published to `s3://<bucket>/<prefix>/<relative path>`
(the same layout as on disk, so `frames/mal_id=<id>/part-0.parquet` stays hive-partitioned and
`pl.scan_parquet(store.uri("frames/**/*.parquet"), storage_options=store.polars_storage_options())`
reads every shard), and another worker can `fetch` it into its own data dir.

Configuration (environment):

| variable | meaning |
|---|---|
| `ANIME_PIPELINE_S3_BUCKET` | bucket name; unset: local only |
| `ANIME_PIPELINE_S3_PREFIX` | key prefix inside the bucket (default: none) |
| `ANIME_PIPELINE_S3_ENDPOINT_URL` | endpoint of an S3-compatible server (`http://127.0.0.1:9000`); unset: AWS |
| `ANIME_PIPELINE_S3_REGION` | region; default `AWS_REGION`, then `AWS_DEFAULT_REGION`, then `us-east-1` |

Credentials are never configuration here: boto3's standard chain resolves them (env
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE` and `~/.aws`, web
identity / IRSA, ECS task role, EC2 instance profile). They are never logged and never part of
`repr()`; `polars_storage_options()` and `pyarrow_filesystem()` hand the resolved (possibly temporary)
credentials to polars / pyarrow, so do not log what they return.

Pure: no Dagster import at module level (`s3_resource_from_env` imports dagster-aws when called), and
nothing touches the network until a method that needs it is called.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from anime_pipeline.paths import UnsafePathError, atomic_path, file_sha256, within

ENV_BUCKET = "ANIME_PIPELINE_S3_BUCKET"
ENV_PREFIX = "ANIME_PIPELINE_S3_PREFIX"
ENV_ENDPOINT = "ANIME_PIPELINE_S3_ENDPOINT_URL"
ENV_REGION = "ANIME_PIPELINE_S3_REGION"
DEFAULT_REGION = "us-east-1"
SHA256_META = "sha256"  # user metadata key (x-amz-meta-sha256) holding the content hash
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_CHUNK = 1 << 20


class StorageConfigError(ValueError):
    """An object-store setting has a value we cannot use; the message names the variable."""


@dataclass(frozen=True)
class Published:
    """One file mirrored to the object store."""

    uri: str
    key: str
    size: int
    sha256: str
    uploaded: bool  # False: the remote object already had this size and sha256 (nothing sent)




def relative_key(relative_path: str | os.PathLike[str]) -> str:
    """A relative path under the data dir as a POSIX key part; absolute paths and `..` are refused."""
    text = os.fspath(relative_path).replace("\\", "/")
    p = PurePosixPath(text)
    if not text or p.is_absolute() or any(part in ("", ".", "..") for part in text.split("/")):
        raise UnsafePathError(f"not a clean relative path under the data dir: {text!r}")
    return p.as_posix()


def _region(env: Mapping[str, str]) -> str:
    for var in (ENV_REGION, "AWS_REGION", "AWS_DEFAULT_REGION"):
        if env.get(var, "").strip():
            return env[var].strip()
    return DEFAULT_REGION


@dataclass
class ObjectStore:
    """A bucket + prefix on S3 or an S3-compatible server, mirroring the data dir's layout.

    `client` is optional: by default a boto3 S3 client is built on first use from the standard
    credential chain (pass one, e.g. `S3Resource.get_client()`, to share a configured client).
    """

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str = DEFAULT_REGION
    client: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _BUCKET_RE.match(self.bucket or "") or ".." in self.bucket:
            raise StorageConfigError(f"{ENV_BUCKET}={self.bucket!r} is not a valid S3 bucket name")
        prefix = (self.prefix or "").strip().strip("/")
        if prefix:
            relative_key(prefix)  # no `..`, no empty parts
        self.prefix = prefix
        if self.endpoint_url is not None:
            url = self.endpoint_url.strip().rstrip("/")
            if not re.match(r"^https?://[^/\s]+$", url):
                raise StorageConfigError(
                    f"{ENV_ENDPOINT}={self.endpoint_url!r} must be http(s)://host[:port] without a path"
                )
            self.endpoint_url = url
        if not self.region:
            raise StorageConfigError(f"{ENV_REGION} must not be empty")

    # Construction ------------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ObjectStore | None":
        """The store the environment asks for, or None (local filesystem only) when no bucket is set."""
        env = os.environ if env is None else env
        bucket = env.get(ENV_BUCKET, "").strip()
        if not bucket:
            return None
        return cls(
            bucket=bucket,
            prefix=env.get(ENV_PREFIX, ""),
            endpoint_url=env.get(ENV_ENDPOINT, "").strip() or None,
            region=_region(env),
        )

    @property
    def allow_http(self) -> bool:
        return bool(self.endpoint_url and self.endpoint_url.startswith("http://"))

    def s3(self):
        """The boto3 S3 client (built once, credentials from the standard chain)."""
        if self.client is None:
            import boto3
            from botocore.config import Config

            cfg = Config(
                region_name=self.region,
                retries={"max_attempts": 5, "mode": "standard"},
                # S3-compatible servers on a host:port rarely resolve <bucket>.<host>
                s3={"addressing_style": "path"} if self.endpoint_url else None,
            )
            self.client = boto3.session.Session(region_name=self.region).client(
                "s3", endpoint_url=self.endpoint_url, config=cfg
            )
        return self.client

    # Addresses ---------------------------------------------------------------------------------
    def key(self, relative_path: str | os.PathLike[str]) -> str:
        rel = relative_key(relative_path)
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def uri(self, relative_path: str | os.PathLike[str]) -> str:
        """`s3://bucket/prefix/<relative path>`; globs such as `frames/**/*.parquet` are kept as is."""
        return f"s3://{self.bucket}/{self.key(relative_path)}"

    def arrow_path(self, relative_path: str | os.PathLike[str]) -> str:
        """`bucket/prefix/<relative path>`, the form `pyarrow.fs.S3FileSystem` and pyarrow.dataset take."""
        return f"{self.bucket}/{self.key(relative_path)}"

    def relative_path_of(self, local_path: Path, home: Path) -> str:
        """`local_path` relative to the data dir (refused when it lies outside)."""
        home_r = Path(home).resolve()
        local_r = Path(local_path).resolve()
        if home_r not in local_r.parents:
            raise UnsafePathError(f"{local_path} is not under the data dir {home}")
        return local_r.relative_to(home_r).as_posix()

    # Remote state ------------------------------------------------------------------------------
    def head(self, relative_path: str | os.PathLike[str]) -> dict | None:
        """The object's size and recorded sha256, or None when it does not exist."""
        from botocore.exceptions import ClientError

        try:
            r = self.s3().head_object(Bucket=self.bucket, Key=self.key(relative_path))
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return {
            "size": int(r["ContentLength"]),
            "sha256": (r.get("Metadata") or {}).get(SHA256_META),
            "etag": r.get("ETag"),
        }

    def exists(self, relative_path: str | os.PathLike[str]) -> bool:
        return self.head(relative_path) is not None

    def list_paths(self, relative_dir: str | os.PathLike[str] = "") -> list[str]:
        """Relative paths of every object under `relative_dir` (the whole prefix when empty), sorted."""
        base = self.key(relative_dir) + "/" if os.fspath(relative_dir) else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                out.append(obj["Key"][strip:])
        return sorted(out)

    # Publish / fetch ---------------------------------------------------------------------------
    def publish_file(self, local_path: Path, home: Path) -> Published:
        """Upload a file of the data dir to its mirror key; skipped when size and sha256 already match."""
        local_path = Path(local_path)
        if not local_path.is_file():
            raise FileNotFoundError(f"cannot publish {local_path}: not a file")
        rel = self.relative_path_of(local_path, home)
        size = local_path.stat().st_size
        digest = file_sha256(local_path)
        remote = self.head(rel)
        published = Published(uri=self.uri(rel), key=self.key(rel), size=size, sha256=digest, uploaded=False)
        if remote is not None and remote["size"] == size and remote["sha256"] == digest:
            return published
        self.s3().upload_file(
            str(local_path), self.bucket, published.key, ExtraArgs={"Metadata": {SHA256_META: digest}}
        )
        return Published(uri=published.uri, key=published.key, size=size, sha256=digest, uploaded=True)

    def publish(self, local_path: Path, home: Path) -> str:
        """`publish_file`, returning the object's URI."""
        return self.publish_file(local_path, home).uri

    def publish_tree(self, local_dir: Path, home: Path) -> list[Published]:
        """Publish every file below `local_dir` (a frames folder, an adapter), hidden temp files excluded."""
        local_dir = Path(local_dir)
        files = sorted(p for p in local_dir.rglob("*") if p.is_file() and not p.name.startswith("."))
        return [self.publish_file(p, home) for p in files]

    def fetch(self, relative_path: str | os.PathLike[str], home: Path, *, verify: bool = False) -> Path:
        """The local copy of `<home>/<relative path>`, downloaded when missing (e.g. on another worker).

        A present file is returned without a network call unless `verify=True`, which downloads it
        again when its size or sha256 differs from the remote record. Downloads are atomic (a temp file
        renamed into place) and checked against the recorded sha256.
        """
        rel = relative_key(relative_path)
        local = within(Path(home), *rel.split("/"))
        if local.is_file() and not verify:
            return local
        remote = self.head(rel)
        if remote is None:
            if local.is_file():
                return local
            raise FileNotFoundError(f"{self.uri(rel)} does not exist")
        if local.is_file() and local.stat().st_size == remote["size"] and (
            remote["sha256"] is None or file_sha256(local) == remote["sha256"]
        ):
            return local
        with atomic_path(local, suffix=".part") as tmp:
            self.s3().download_file(self.bucket, self.key(rel), str(tmp))
            if remote["sha256"] is not None and file_sha256(tmp) != remote["sha256"]:
                raise IOError(f"{self.uri(rel)}: downloaded content does not match its recorded sha256")
        return local

    def fetch_tree(self, relative_dir: str | os.PathLike[str], home: Path) -> list[Path]:
        """Fetch every object under `relative_dir` (e.g. `frames`) that is missing locally."""
        return [self.fetch(rel, home) for rel in self.list_paths(relative_dir)]

    # Readers -----------------------------------------------------------------------------------
    def _credentials(self) -> dict[str, str]:
        import boto3

        creds = boto3.session.Session(region_name=self.region).get_credentials()
        if creds is None:
            return {}
        frozen = creds.get_frozen_credentials()
        out = {"access_key": frozen.access_key, "secret_key": frozen.secret_key}
        if frozen.token:
            out["token"] = frozen.token
        return out

    def polars_storage_options(self) -> dict[str, str]:
        """`storage_options` for `pl.scan_parquet` / `read_parquet` / `write_parquet` on this store's URIs.

        Holds the credentials resolved by boto3's chain (temporary ones expire: build it per job).
        """
        opts = {"aws_region": self.region}
        if self.endpoint_url:
            opts["aws_endpoint_url"] = self.endpoint_url
        if self.allow_http:
            opts["aws_allow_http"] = "true"
        creds = self._credentials()
        if creds:
            opts["aws_access_key_id"] = creds["access_key"]
            opts["aws_secret_access_key"] = creds["secret_key"]
            if "token" in creds:
                opts["aws_session_token"] = creds["token"]
        return opts

    def pyarrow_filesystem(self):
        """A `pyarrow.fs.S3FileSystem` for this store (paths: `arrow_path(...)`)."""
        from pyarrow import fs

        # allow_delayed_open: a small file goes up as one PutObject when it is closed, not as a
        # multipart upload (pyarrow's CompleteMultipartUpload is refused by moto_server 5.2)
        kw: dict[str, Any] = {"region": self.region, "allow_delayed_open": True}
        if self.endpoint_url:
            scheme, _, host = self.endpoint_url.partition("://")
            kw.update(endpoint_override=host, scheme=scheme)
        creds = self._credentials()
        if creds:
            kw.update(access_key=creds["access_key"], secret_key=creds["secret_key"])
            if "token" in creds:
                kw["session_token"] = creds["token"]
        return fs.S3FileSystem(**kw)


def s3_resource_from_env(env: Mapping[str, str] | None = None):
    """A `dagster_aws.s3.S3Resource` for the configured store, or None when no bucket is set.

    Only region and endpoint are set; credentials stay with boto3's standard chain.
    """
    store = ObjectStore.from_env(env)
    if store is None:
        return None
    from dagster_aws.s3 import S3Resource

    kw: dict[str, Any] = {"region_name": store.region}
    if store.endpoint_url:
        kw["endpoint_url"] = store.endpoint_url
        kw["use_ssl"] = not store.allow_http
    return S3Resource(**kw)


def store_from_resource(resource, env: Mapping[str, str] | None = None) -> "ObjectStore | None":
    """The `ObjectStore` of the environment sharing the (configured) client of an `S3Resource`."""
    store = ObjectStore.from_env(env)
    if store is None or resource is None:
        return store
    store.client = resource.get_client()
    return store


# Command line: stage files in and out of a worker that shares no disk with the others -------------
def _home(env: Mapping[str, str]) -> Path:
    return Path(env.get("ANIME_PIPELINE_HOME", "./data")).expanduser().resolve()


def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """`python -m anime_pipeline.storage {fetch,publish} PATH...` (paths relative to the data dir).

    fetch: download each file, or every object under each folder, that is missing locally.
    publish: upload each file, or every file under each folder (unchanged ones are skipped).
    Prints one line per object (`fetched|present|uploaded|unchanged <uri>`); exits 2 when no bucket is
    configured, 1 when a path exists neither locally (publish) nor remotely (fetch).
    """
    import argparse

    env = os.environ if env is None else env
    parser = argparse.ArgumentParser(prog="python -m anime_pipeline.storage", description=main.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("fetch", "publish"))
    parser.add_argument("paths", nargs="+", help="paths relative to the data dir (files or folders)")
    parser.add_argument("--home", default=None, help="data dir (default: ANIME_PIPELINE_HOME, else ./data)")
    args = parser.parse_args(argv)
    store = ObjectStore.from_env(env)
    if store is None:
        print(f"{ENV_BUCKET} is not set: nothing to {args.action} (local filesystem only)", flush=True)
        return 2
    home = Path(args.home).expanduser().resolve() if args.home else _home(env)
    status = 0
    for raw in args.paths:
        rel = relative_key(raw)
        if args.action == "publish":
            local = within(home, *rel.split("/"))
            if local.is_dir():
                results = store.publish_tree(local, home)
            elif local.is_file():
                results = [store.publish_file(local, home)]
            else:
                print(f"missing {local}", flush=True)
                status = 1
                continue
            for r in results:
                print(f"{'uploaded' if r.uploaded else 'unchanged'} {r.uri}", flush=True)
        else:
            if store.head(rel) is not None:
                rels = [rel]
            else:
                rels = store.list_paths(rel)
            if not rels:
                print(f"missing {store.uri(rel)}", flush=True)
                status = 1
                continue
            for r in rels:
                present = within(home, *r.split("/")).is_file()
                store.fetch(r, home)
                print(f"{'present' if present else 'fetched'} {store.uri(r)}", flush=True)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
