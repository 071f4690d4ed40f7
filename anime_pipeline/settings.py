"""Environment-driven settings, resolved in exactly one place.

Every variable is documented in README.md ("Environment variables"). Nothing here touches the
network or the disk at import time; `Settings.from_env()` reads the environment when called.

The deployment is three switches, all read here (and turned into resources by `defs/resources.py`,
into schedules and sensors by `defs/schedules.py` / `defs/sensors.py`):

- where data lives: `ANIME_PIPELINE_HOME` is a local dir (default `./data`) or an object-store URI
  (`s3://bucket/prefix`); with a URI, `home` is only a local cache (`ANIME_PIPELINE_CACHE_DIR`);
- the catalog: `ANIME_PIPELINE_PROFILE` / `ANIME_PIPELINE_CATALOG`;
- where GPU work runs: `ANIME_PIPELINE_GPU_LAUNCHER` = subprocess | k8s | ecs (`GpuSettings`).

An invalid value raises `SettingsError` naming the variable and the allowed values, so a bad
deployment fails when the definitions load, not in the middle of a run.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
PROFILES = ("demo", "live")
CATALOGS = ("shikimori", "anilist")
EPISODE_SOURCES = ("demo", "local", "manifest")
STORE_SCHEMES = ("s3",)
GPU_LAUNCHERS = ("subprocess", "k8s", "ecs")
SWITCHES = ("on", "off")
MEDIA_EXECUTORS = ("in_process", "multiprocess")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the variable."""


def _choice(env: dict[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


def _switch(env: dict[str, str], name: str, default_on: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default_on
    if raw in ("on", "1", "true", "yes"):
        return True
    if raw in ("off", "0", "false", "no"):
        return False
    raise SettingsError(f"{name}={raw!r} is not one of {', '.join(SWITCHES)}")


def _int(env: dict[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not an integer") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be ≥ {minimum}")
    return value


def _cron(env: dict[str, str], name: str, default: str) -> str:
    value = env.get(name, "").strip() or default
    fields = value.split()
    if len(fields) != 5 or not all(re.match(r"^[0-9A-Za-z*/,\-]+$", f) for f in fields):
        raise SettingsError(f"{name}={value!r} is not a cron expression of five fields (e.g. '0 3 * * *')")
    return value


def _names(env: dict[str, str], name: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in env.get(name, "").split(",") if x.strip())


def parse_store_uri(uri: str, *, variable: str = "ANIME_PIPELINE_HOME") -> tuple[str, str, str]:
    """`s3://bucket/prefix` → ("s3", bucket, prefix); anything else with a scheme is refused."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme.lower() not in STORE_SCHEMES:
        raise SettingsError(
            f"{variable}={uri!r}: an object-store URI must start with one of {', '.join(s + '://' for s in STORE_SCHEMES)}"
            " (a local path has no scheme)"
        )
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise SettingsError(f"{variable}={uri!r}: {bucket!r} is not a valid bucket name")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise SettingsError(f"{variable}={uri!r}: the key prefix has an empty, '.' or '..' part")
    return scheme.lower(), bucket, prefix


@dataclass(frozen=True)
class GpuSettings:
    """Where `finetuned_adapter` and `caption_eval` run (ANIME_PIPELINE_GPU_*, K8S_*, ECS_*)."""

    launcher: str = "subprocess"
    gpus: int = 1
    image: str | None = None
    k8s_namespace: str = "default"
    k8s_secrets: tuple[str, ...] = ()
    k8s_config_maps: tuple[str, ...] = ()
    k8s_service_account: str | None = None
    ecs_cluster: str | None = None
    ecs_task_definition: str | None = None
    ecs_container: str = "training"
    ecs_subnets: tuple[str, ...] = ()
    ecs_security_groups: tuple[str, ...] = ()
    ecs_capacity_provider: str | None = None

    @classmethod
    def from_env(cls, env: dict[str, str]) -> GpuSettings:
        launcher = _choice(env, "ANIME_PIPELINE_GPU_LAUNCHER", "subprocess", GPU_LAUNCHERS)
        image = env.get("ANIME_PIPELINE_GPU_IMAGE", "").strip() or None
        if image and any(c.isspace() for c in image):
            raise SettingsError(f"ANIME_PIPELINE_GPU_IMAGE={image!r} is not an image reference")
        g = cls(
            launcher=launcher,
            gpus=_int(env, "ANIME_PIPELINE_GPUS", 1, 0),
            image=image,
            k8s_namespace=env.get("ANIME_PIPELINE_K8S_NAMESPACE", "").strip() or "default",
            k8s_secrets=_names(env, "ANIME_PIPELINE_K8S_SECRETS"),
            k8s_config_maps=_names(env, "ANIME_PIPELINE_K8S_CONFIG_MAPS"),
            k8s_service_account=env.get("ANIME_PIPELINE_K8S_SERVICE_ACCOUNT", "").strip() or None,
            ecs_cluster=env.get("ANIME_PIPELINE_ECS_CLUSTER", "").strip() or None,
            ecs_task_definition=env.get("ANIME_PIPELINE_ECS_TASK_DEFINITION", "").strip() or None,
            ecs_container=env.get("ANIME_PIPELINE_ECS_CONTAINER", "").strip() or "training",
            ecs_subnets=_names(env, "ANIME_PIPELINE_ECS_SUBNETS"),
            ecs_security_groups=_names(env, "ANIME_PIPELINE_ECS_SECURITY_GROUPS"),
            ecs_capacity_provider=env.get("ANIME_PIPELINE_ECS_CAPACITY_PROVIDER", "").strip() or None,
        )
        g.validate()
        return g

    def validate(self) -> None:
        if self.launcher == "k8s":
            if not self.image:
                raise SettingsError(
                    "ANIME_PIPELINE_GPU_LAUNCHER=k8s needs ANIME_PIPELINE_GPU_IMAGE (the training image)"
                )
            for var, names in (
                ("ANIME_PIPELINE_K8S_SECRETS", self.k8s_secrets),
                ("ANIME_PIPELINE_K8S_CONFIG_MAPS", self.k8s_config_maps),
                ("ANIME_PIPELINE_K8S_NAMESPACE", (self.k8s_namespace,)),
            ):
                for n in names:
                    if not _K8S_NAME_RE.match(n):
                        raise SettingsError(
                            f"{var}: {n!r} is not a Kubernetes name (lowercase alphanumerics and '-')"
                        )
        if self.launcher == "ecs":
            for var, value in (
                ("ANIME_PIPELINE_ECS_CLUSTER", self.ecs_cluster),
                ("ANIME_PIPELINE_ECS_TASK_DEFINITION", self.ecs_task_definition),
            ):
                if not value:
                    raise SettingsError(f"ANIME_PIPELINE_GPU_LAUNCHER=ecs needs {var}")
            if self.ecs_security_groups and not self.ecs_subnets:
                raise SettingsError(
                    "ANIME_PIPELINE_ECS_SECURITY_GROUPS needs ANIME_PIPELINE_ECS_SUBNETS (awsvpc)"
                )


@dataclass(frozen=True)
class AutomationSettings:
    """Schedules and sensors (ANIME_PIPELINE_*_CRON / _SCHEDULE / _SENSOR); None status = profile default."""

    catalog_cron: str = "0 3 * * *"
    catalog_schedule: bool = True
    media_sensor: bool = True
    catalog_max_runtime_s: int = 6 * 3600
    training_cron: str = "0 5 * * 0"
    training_schedule: bool = False
    # media_job's executor: both steps in the run worker (one interpreter start and import per title, measured
    # 3.3x less wall per demo title, benchmarks/media_run.py) or a process per step (Dagster's default)
    media_executor: str = "in_process"

    @classmethod
    def from_env(cls, env: dict[str, str], *, demo: bool) -> AutomationSettings:
        return cls(
            catalog_cron=_cron(env, "ANIME_PIPELINE_CATALOG_CRON", "0 3 * * *"),
            catalog_schedule=_switch(env, "ANIME_PIPELINE_CATALOG_SCHEDULE", demo),
            media_sensor=_switch(env, "ANIME_PIPELINE_MEDIA_SENSOR", demo),
            catalog_max_runtime_s=_int(env, "ANIME_PIPELINE_CATALOG_MAX_RUNTIME_S", 6 * 3600, 1),
            training_cron=_cron(env, "ANIME_PIPELINE_TRAINING_CRON", "0 5 * * 0"),
            training_schedule=_switch(env, "ANIME_PIPELINE_TRAINING_SCHEDULE", False),
            media_executor=_choice(env, "ANIME_PIPELINE_MEDIA_EXECUTOR", "in_process", MEDIA_EXECUTORS),
        )


_PROCESS_CACHES: dict[str, Path] = {}


def default_cache_dir(uri: str) -> Path:
    """This process's own local dir for an object-store data home (ANIME_PIPELINE_CACHE_DIR unset).

    One per process and store URI, under the system temp dir, created on first write and removed when the
    process exits: nothing on local disk is shared between steps (each step of a multiprocess run, each
    pod), so every step works from what the store holds. Set ANIME_PIPELINE_CACHE_DIR to keep a cache
    (e.g. a volume that outlives the pod).
    """
    if uri not in _PROCESS_CACHES:
        import atexit
        import shutil
        import uuid

        path = (
            Path(tempfile.gettempdir())
            / "anime_pipeline-cache"
            / f"{hashlib.sha256(uri.encode()).hexdigest()[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        )
        atexit.register(shutil.rmtree, path, ignore_errors=True)
        _PROCESS_CACHES[uri] = path
    return _PROCESS_CACHES[uri]


@dataclass(frozen=True)
class Settings:
    home: Path
    profile: str = "demo"
    base_model: str | None = None  # None: demo → tiny local model, live → DEFAULT_BASE_MODEL
    catalog: str = "shikimori"
    episode_source: str | None = None  # None: demo profile → "demo", live → "local"
    video_dir: Path | None = None
    manifest: Path | None = None
    shikimori_url: str = "https://shikimori.one/api/graphql"
    anilist_url: str = "https://graphql.anilist.co"
    mal_url: str = "https://api.myanimelist.net/v2"
    jikan_url: str = "https://api.jikan.moe/v4"
    user_agent: str = (
        "anime_pipeline/0.1 (+https://github.com/anime-pipeline; contact: set ANIME_PIPELINE_USER_AGENT)"
    )
    # None: `home` is the data dir itself. Else the object-store URI of the data, `home` its local cache.
    data_uri: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    gpu: GpuSettings = field(default_factory=GpuSettings)
    automation: AutomationSettings = field(default_factory=AutomationSettings)
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        for old in ("ANIME_PIPELINE_S3_BUCKET", "ANIME_PIPELINE_S3_PREFIX"):
            if env.get(old, "").strip():
                raise SettingsError(
                    f"{old} is no longer read: set ANIME_PIPELINE_HOME=s3://<bucket>/<prefix> (docs/DEPLOYMENT.md)"
                )
        raw_home = env.get("ANIME_PIPELINE_HOME", "").strip() or "./data"
        data_uri = None
        if "://" in raw_home:
            scheme, bucket, prefix = parse_store_uri(raw_home)
            data_uri = f"{scheme}://{bucket}" + (f"/{prefix}" if prefix else "")
            cache = env.get("ANIME_PIPELINE_CACHE_DIR", "").strip()
            home = Path(cache).expanduser().resolve() if cache else default_cache_dir(data_uri)
        else:
            home = Path(raw_home).expanduser().resolve()
        endpoint = env.get("ANIME_PIPELINE_S3_ENDPOINT_URL", "").strip().rstrip("/") or None
        if endpoint and not re.match(r"^https?://[^/\s]+$", endpoint):
            raise SettingsError(
                f"ANIME_PIPELINE_S3_ENDPOINT_URL={endpoint!r} must be http(s)://host[:port] without a path"
            )
        region = next(
            (
                env[v].strip()
                for v in ("ANIME_PIPELINE_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
                if env.get(v, "").strip()
            ),
            "us-east-1",
        )
        profile = _choice(env, "ANIME_PIPELINE_PROFILE", "demo", PROFILES)
        gpu = GpuSettings.from_env(env)
        if gpu.launcher != "subprocess" and data_uri is None:
            raise SettingsError(
                f"ANIME_PIPELINE_GPU_LAUNCHER={gpu.launcher} runs GPU work on another machine, which shares no disk: "
                "ANIME_PIPELINE_HOME must be an object-store URI (s3://bucket/prefix)"
            )
        source = env.get("ANIME_PIPELINE_EPISODE_SOURCE")
        if source:
            source = _choice(env, "ANIME_PIPELINE_EPISODE_SOURCE", "demo", EPISODE_SOURCES)
        video_dir = env.get("ANIME_PIPELINE_VIDEO_DIR")
        manifest = env.get("ANIME_PIPELINE_MANIFEST")
        kw: dict[str, Any] = {}
        for attr, var in (
            ("shikimori_url", "ANIME_PIPELINE_SHIKIMORI_URL"),
            ("anilist_url", "ANIME_PIPELINE_ANILIST_URL"),
            ("mal_url", "ANIME_PIPELINE_MAL_URL"),
            ("jikan_url", "ANIME_PIPELINE_JIKAN_URL"),
            ("user_agent", "ANIME_PIPELINE_USER_AGENT"),
        ):
            if env.get(var):
                kw[attr] = env[var].strip()
        return cls(
            home=home,
            profile=profile,
            base_model=env.get("ANIME_PIPELINE_BASE_MODEL") or None,
            catalog=_choice(env, "ANIME_PIPELINE_CATALOG", "shikimori", CATALOGS),
            episode_source=source or None,
            video_dir=Path(video_dir).expanduser().resolve() if video_dir else None,
            manifest=Path(manifest).expanduser().resolve() if manifest else None,
            data_uri=data_uri,
            s3_endpoint_url=endpoint,
            s3_region=region,
            gpu=gpu,
            automation=AutomationSettings.from_env(env, demo=profile == "demo"),
            **kw,
        )

    @property
    def store_uri(self) -> str:
        """Where the data lives: the object-store URI, or the local data dir."""
        return self.data_uri or str(self.home)

    @property
    def remote(self) -> bool:
        return self.data_uri is not None

    # Resolved values -------------------------------------------------------------------------
    @property
    def resolved_episode_source(self) -> str:
        if self.episode_source:
            return self.episode_source
        return "demo" if self.profile == "demo" else "local"

    @property
    def resolved_base_model(self) -> str:
        """A model id or local directory. The demo profile uses the tiny model built under the data dir."""
        if self.base_model:
            return self.base_model
        if self.profile == "demo":
            return str(self.tiny_model_dir)
        return DEFAULT_BASE_MODEL

    # Layout under the data dir (see ARCHITECTURE.md "Data on disk") --------------------------
    @property
    def catalog_dir(self) -> Path:
        return self.home / "catalog"

    @property
    def http_cache_dir(self) -> Path:
        return self.home / "http-cache"

    @property
    def episodes_dir(self) -> Path:
        return self.home / "episodes"

    @property
    def frames_dir(self) -> Path:
        return self.home / "frames"

    @property
    def splits_dir(self) -> Path:
        return self.home / "splits"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def eval_dir(self) -> Path:
        return self.home / "eval"

    @property
    def tiny_model_dir(self) -> Path:
        return self.home / "tiny-model"

    @property
    def dagster_home(self) -> Path:
        """The demo's Dagster instance dir: under the data dir, or (object-store home, whose local dir lasts
        one process) a fixed dir per store URI under the system temp dir. Deployments set DAGSTER_HOME."""
        if self.data_uri:
            digest = hashlib.sha256(self.data_uri.encode()).hexdigest()[:12]
            return Path(tempfile.gettempdir()) / "anime_pipeline-dagster" / digest
        return self.home / "dagster"
