"""The data plane: every asset reads its inputs from and writes its outputs to a `DataStore`.

`ANIME_PIPELINE_HOME` chooses the implementation (settings.py resolves it, `defs/resources.py` wires it):

- a local dir (default `./data`) → `LocalDataStore`: the dir is the data, `pull`/`push` move nothing;
- `s3://bucket/prefix` → `ObjectDataStore`: the bucket is the data, a local dir (`ANIME_PIPELINE_CACHE_DIR`,
  default a per-URI folder under the system temp dir) is only a cache that any step may start without.

The bucket keeps the data dir's layout (`<prefix>/frames/mal_id=<id>/part-0.parquet` stays
hive-partitioned, so `pl.scan_parquet(store.uri("frames/**/*.parquet"), storage_options=
store.objects.polars_storage_options())` reads every shard). Transfers are boto3's managed transfers
(s3transfer: multipart above 8 MiB, retries), each object tagged with its sha256 so unchanged files are
never sent twice. `ANIME_PIPELINE_S3_ENDPOINT_URL` points at an S3-compatible server,
`ANIME_PIPELINE_S3_REGION` (else AWS_REGION / AWS_DEFAULT_REGION / us-east-1) sets the region.

Credentials are never configuration here: boto3's standard chain resolves them (env
`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`, `AWS_PROFILE` and `~/.aws`, web
identity / IRSA, ECS task role, EC2 instance profile). They are never logged and never part of
`repr()`; `polars_storage_options()` and `pyarrow_filesystem()` hand the resolved (possibly temporary)
credentials to polars / pyarrow, so do not log what they return.

Pure: no Dagster import, and nothing touches the network until a method that needs it is called.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from anime_pipeline.paths import UnsafePathError, atomic_path, file_sha256, within

ENV_HOME = "ANIME_PIPELINE_HOME"
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
            raise StorageConfigError(f"{ENV_HOME}: {self.bucket!r} is not a valid S3 bucket name")
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
        base = (
            self.key(relative_dir) + "/"
            if os.fspath(relative_dir)
            else (self.prefix + "/" if self.prefix else "")
        )
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base):
            for obj in page.get("Contents", []):
                out.append(obj["Key"][strip:])
        return sorted(out)

    def delete_tree(self, relative_dir: str | os.PathLike[str]) -> int:
        """Delete every object under `relative_dir` (a folder, never the whole prefix); the count deleted."""
        if not relative_key(relative_dir):
            raise ValueError("delete_tree needs a folder below the prefix")
        keys = [self.key(rel) for rel in self.list_paths(relative_dir)]
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1,000 keys
            self.s3().delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True},
            )
        return len(keys)

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
        if (
            local.is_file()
            and local.stat().st_size == remote["size"]
            and (remote["sha256"] is None or file_sha256(local) == remote["sha256"])
        ):
            return local
        with atomic_path(local, suffix=".part") as tmp:
            self.s3().download_file(self.bucket, self.key(rel), str(tmp))
            if remote["sha256"] is not None and file_sha256(tmp) != remote["sha256"]:
                raise OSError(f"{self.uri(rel)}: downloaded content does not match its recorded sha256")
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


# The data plane: one interface, a local and an object-store implementation ----------------------
class LocalDataStore:
    """The data dir on a local (or shared) filesystem: the default. `pull`/`push` have nothing to move."""

    remote = False

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"LocalDataStore({str(self.root)!r})"

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, relative_path: str | os.PathLike[str]) -> Path:
        rel = relative_key(relative_path)
        return within(self.root, *rel.split("/"))

    def uri(self, relative_path: str | os.PathLike[str]) -> str:
        return str(self.path(relative_path))

    def pull(self, *relative_paths: str, missing_ok: bool = False) -> list[Path]:
        """The local paths of `relative_paths`; a missing one raises FileNotFoundError unless `missing_ok`."""
        out = []
        for rel in relative_paths:
            p = self.path(rel)
            if not p.exists():
                if missing_ok:
                    continue
                raise FileNotFoundError(f"{p} does not exist in the data dir {self.root}")
            out.append(p)
        return out

    def push(self, *relative_paths: str) -> list[Published]:
        for rel in relative_paths:
            if not self.path(rel).exists():
                raise FileNotFoundError(f"cannot publish {self.path(rel)}: it does not exist")
        return []

    def exists(self, relative_path: str) -> bool:
        return self.path(relative_path).exists()

    def delete(self, relative_dir: str) -> int:
        """Remove a folder of the data dir (files counted); a missing one is nothing to do."""
        import shutil

        base = self.path(relative_dir)
        if base == self.root:
            raise ValueError("delete needs a folder below the data dir")
        if not base.is_dir():
            return 0
        n = sum(1 for p in base.rglob("*") if p.is_file())
        shutil.rmtree(base)
        return n

    def list(self, relative_dir: str) -> list[str]:
        base = self.path(relative_dir)
        if not base.is_dir():
            return []
        return sorted(
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )


class ObjectDataStore:
    """An object store (`s3://bucket/prefix`) holding the data; `root` is only a local cache of it.

    `pull` brings objects into the cache (a file, or every object under a folder), re-downloading a
    cached copy whose size or sha256 differs from the object's; `push` uploads files of the cache to
    their keys, skipping objects that already hold the same bytes (size + sha256 in the object's
    metadata). An object appears under its key only when complete: a file below boto3's multipart
    threshold is one PUT, a larger one is visible only after CompleteMultipartUpload, so a process
    killed mid-upload leaves nothing under the final key (only an incomplete multipart upload that a
    bucket lifecycle rule `AbortIncompleteMultipartUpload` removes).
    """

    remote = True

    def __init__(self, objects: ObjectStore, root: Path) -> None:
        self.objects = objects
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"ObjectDataStore({self.location!r}, cache={str(self.root)!r})"

    @property
    def location(self) -> str:
        return f"s3://{self.objects.bucket}" + (f"/{self.objects.prefix}" if self.objects.prefix else "")

    def path(self, relative_path: str | os.PathLike[str]) -> Path:
        rel = relative_key(relative_path)
        return within(self.root, *rel.split("/"))

    def uri(self, relative_path: str | os.PathLike[str]) -> str:
        return self.objects.uri(relative_path)

    def pull(self, *relative_paths: str, missing_ok: bool = False) -> list[Path]:
        out: list[Path] = []
        for raw in relative_paths:
            rel = relative_key(raw)
            if self.objects.head(rel) is not None:
                out.append(self.objects.fetch(rel, self.root, verify=True))
                continue
            keys = self.objects.list_paths(rel)
            if not keys:
                if missing_ok:
                    continue
                raise FileNotFoundError(
                    f"{self.objects.uri(rel)} does not exist (neither an object nor a folder)"
                )
            for key in keys:
                self.objects.fetch(key, self.root, verify=True)
            out.append(self.path(rel))
        return out

    def push(self, *relative_paths: str) -> list[Published]:
        out: list[Published] = []
        for raw in relative_paths:
            local = self.path(raw)
            if local.is_dir():
                out += self.objects.publish_tree(local, self.root)
            elif local.is_file():
                out.append(self.objects.publish_file(local, self.root))
            else:
                raise FileNotFoundError(f"cannot publish {local}: it does not exist")
        return out

    def exists(self, relative_path: str) -> bool:
        """An object at `relative_path` (not a folder)."""
        return self.objects.head(relative_path) is not None

    def delete(self, relative_dir: str) -> int:
        """Delete the objects under a folder (the local copy is left alone); the count deleted."""
        return self.objects.delete_tree(relative_dir)

    def list(self, relative_dir: str) -> list[str]:
        return self.objects.list_paths(relative_dir)


DataStore = LocalDataStore | ObjectDataStore


def open_data_store(
    data_uri: str | None, cache_dir: Path, *, endpoint_url: str | None = None, region: str = DEFAULT_REGION
) -> DataStore:
    """The data store of a deployment: `data_uri` None → the local dir `cache_dir` is the data dir;
    `s3://bucket/prefix` → that bucket, with `cache_dir` as the local cache."""
    if not data_uri:
        return LocalDataStore(cache_dir)
    scheme, _, rest = data_uri.partition("://")
    if scheme != "s3":
        raise StorageConfigError(f"unsupported data store {data_uri!r}: only s3:// URIs")
    bucket, _, prefix = rest.partition("/")
    return ObjectDataStore(
        ObjectStore(bucket=bucket, prefix=prefix, endpoint_url=endpoint_url, region=region), cache_dir
    )


def data_store_from_settings(settings) -> DataStore:
    return open_data_store(
        settings.data_uri, settings.home, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
    )


# Command line: stage files in and out of a worker that shares no disk with the others -------------
def main(argv: list[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    """`python -m anime_pipeline.storage {fetch,publish} PATH...` (paths relative to the data home).

    Configured like everything else by ANIME_PIPELINE_HOME (an s3:// URI) and ANIME_PIPELINE_CACHE_DIR.
    fetch: download each file, or every object under each folder, into the local cache.
    publish: upload each file, or every file under each folder (unchanged ones are skipped).
    Prints one line per path; exits 2 when the data home is a local dir (nothing to move), 1 when a
    path exists neither locally (publish) nor remotely (fetch).
    """
    import argparse

    from anime_pipeline.settings import Settings

    parser = argparse.ArgumentParser(
        prog="python -m anime_pipeline.storage",
        description=main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=("fetch", "publish"))
    parser.add_argument("paths", nargs="+", help="paths relative to the data home (files or folders)")
    args = parser.parse_args(argv)
    settings = Settings.from_env(dict(os.environ if env is None else env))
    store = data_store_from_settings(settings)
    if not store.remote:
        print(f"ANIME_PIPELINE_HOME={settings.home} is a local dir: nothing to {args.action}", flush=True)
        return 2
    status = 0
    for raw in args.paths:
        try:
            if args.action == "publish":
                for r in store.push(raw):
                    print(f"{'uploaded' if r.uploaded else 'unchanged'} {r.uri}", flush=True)
            else:
                for p in store.pull(raw):
                    print(f"fetched {p}", flush=True)
        except FileNotFoundError as e:
            print(f"missing: {e}", flush=True)
            status = 1
    return status


if __name__ == "__main__":
    raise SystemExit(main())
