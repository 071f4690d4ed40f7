"""Resources: small interfaces with a local and a remote implementation, chosen from `Settings` in one place.

| key | local (default) | production |
|---|---|---|
| `pipeline` | profile, model, the local data dir | the same; `home` is the local cache of the store |
| `data_store` | `LocalDataStoreResource` (a dir) | `S3DataStoreResource` (`ANIME_PIPELINE_HOME=s3://…`) |
| `gpu_launcher` | `SubprocessGpuLauncher` (Pipes subprocess) | `K8sGpuLauncher` (dagster-k8s `PipesK8sClient`) / `EcsGpuLauncher` (dagster-aws `PipesECSClient`) |
| `catalog_api` | the catalog APIs (MAL client id a secret, read through `dg.EnvVar`, never logged) | the same |

Assets ask these resources; none of them reads the environment or branches on where it runs.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr

from anime_pipeline.settings import Settings


class PipelineResource(dg.ConfigurableResource):
    """Where data lives and which profile/model a run uses."""

    home: str = Field(
        description="Local data dir (ANIME_PIPELINE_HOME), or the local cache of an object-store data home "
        "(ANIME_PIPELINE_CACHE_DIR); stages read and write here between `data_store` pulls and pushes."
    )
    profile: str = Field(
        default="demo", description="`demo` (offline, bundled) or `live` (real catalog APIs)."
    )
    base_model: str | None = Field(
        default=None,
        description="Model id or local dir (ANIME_PIPELINE_BASE_MODEL). Unset: tiny local model in demo, "
        "HuggingFaceTB/SmolVLM2-500M-Video-Instruct in live.",
    )
    catalog: str = Field(
        default="shikimori",
        description="Title catalog: shikimori | anilist (live); `demo` (the bundled one) in the demo.",
    )
    episode_source: str | None = Field(
        default=None,
        description="Episode source: demo | local | manifest. Unset: demo in demo, local in live.",
    )
    video_dir: str | None = Field(
        default=None, description="Folder of episodes you already have (local source)."
    )
    manifest: str | None = Field(
        default=None, description="CSV/YAML of mal_id,url[,episode] you may download (manifest source)."
    )

    def settings(self) -> Settings:
        return Settings(
            home=Path(self.home).expanduser().resolve(),
            profile=self.profile,
            base_model=self.base_model,
            catalog=self.catalog,
            episode_source=self.episode_source,
            video_dir=Path(self.video_dir).expanduser().resolve() if self.video_dir else None,
            manifest=Path(self.manifest).expanduser().resolve() if self.manifest else None,
        )


class CatalogApiResource(dg.ConfigurableResource):
    """The catalog and synopsis HTTP APIs (base URLs overridable for mirrors and test servers)."""

    shikimori_url: str = Field(default=Settings.shikimori_url, description="Shikimori GraphQL endpoint.")
    anilist_url: str = Field(default=Settings.anilist_url, description="AniList GraphQL endpoint.")
    mal_url: str = Field(default=Settings.mal_url, description="MyAnimeList API v2 base URL.")
    jikan_url: str = Field(default=Settings.jikan_url, description="Jikan v4 base URL.")
    user_agent: str = Field(
        default=Settings.user_agent, description="User-Agent naming the app and a contact."
    )
    mal_client_id: str | None = Field(
        default=None,
        description="MAL API client id (secret, MAL_CLIENT_ID). Unset: MAL is skipped, Jikan used.",
    )
    read_timeout_s: float = Field(default=30.0, description="Read timeout per socket read, seconds.")
    body_timeout_s: float = Field(
        default=60.0, description="The whole response body must arrive within this, seconds."
    )
    connect_timeout_s: float = Field(default=10.0, description="Connect timeout per request, seconds.")
    total_retries: int = Field(default=5, description="Retries on 429/5xx per request (honours Retry-After).")
    cache: bool = Field(default=True, description="Cache responses on disk under <home>/http-cache.")


class DataStoreResource(dg.ConfigurableResource):
    """Where every asset reads its inputs and writes its outputs (`anime_pipeline.storage.DataStore`)."""

    _store: Any = PrivateAttr(default=None)

    def open(self):
        """The pure `DataStore` (built once per resource instance)."""
        raise NotImplementedError

    def pull(self, *relative_paths: str, missing_ok: bool = False) -> list[Path]:
        """Bring `relative_paths` (files or folders under the data home) into the local dir; their local paths."""
        return self.open().pull(*relative_paths, missing_ok=missing_ok)

    def push(self, *relative_paths: str) -> list:
        """Publish `relative_paths` of the local dir to the store (unchanged objects are skipped)."""
        return self.open().push(*relative_paths)

    def exists(self, relative_path: str) -> bool:
        """Whether the store holds the file `relative_path` (no download)."""
        return self.open().exists(relative_path)

    def uri(self, relative_path: str) -> str:
        """Where `relative_path` lives in the store (a local path or an s3:// URI): for metadata."""
        return self.open().uri(relative_path)

    def worker_store(self) -> dict:
        """How a GPU worker opens the same store (non-secret; credentials come from its own environment)."""
        raise NotImplementedError


class LocalDataStoreResource(DataStoreResource):
    """The data dir on a local (or shared) filesystem: the default; nothing is copied anywhere."""

    root: str = Field(description="The data dir (ANIME_PIPELINE_HOME).")

    def open(self):
        from anime_pipeline.storage import LocalDataStore

        if self._store is None:
            self._store = LocalDataStore(Path(self.root))
        return self._store

    def worker_store(self) -> dict:
        return {"data_uri": None, "root": self.root}


class S3DataStoreResource(DataStoreResource):
    """An S3 (or S3-compatible) bucket holds the data; the local dir is only this process's cache.

    Credentials come from boto3's standard chain (env, profile, IRSA, task role), never from config.
    """

    data_uri: str = Field(description="s3://bucket/prefix (ANIME_PIPELINE_HOME).")
    cache_dir: str = Field(
        description="Local cache of the store (ANIME_PIPELINE_CACHE_DIR); may start empty."
    )
    endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (ANIME_PIPELINE_S3_ENDPOINT_URL)."
    )
    region: str = Field(default="us-east-1", description="Bucket region (ANIME_PIPELINE_S3_REGION).")

    def open(self):
        from anime_pipeline.storage import open_data_store

        if self._store is None:  # one S3 client per resource instance
            self._store = open_data_store(
                self.data_uri, Path(self.cache_dir), endpoint_url=self.endpoint_url, region=self.region
            )
        return self._store

    def worker_store(self) -> dict:
        return {"data_uri": self.data_uri, "endpoint_url": self.endpoint_url, "region": self.region}


class GpuLauncherResource(dg.ConfigurableResource):
    """Runs a GPU job (`python -m anime_pipeline.gpu_job`: fetch inputs from the store, train or evaluate,
    publish outputs) through Dagster Pipes; subclasses choose where the process runs."""

    gpus: int = Field(
        default=1,
        description="GPUs for the job (ANIME_PIPELINE_GPUS); >1 runs torchrun, one process per GPU.",
    )

    def command(self, python: str = "python") -> list[str]:
        from anime_pipeline.launch import GPU_JOB_MODULE, training_command

        bin_dir = str(Path(python).parent) if os.sep in python else None
        if self.gpus <= 1:
            return [python, "-m", GPU_JOB_MODULE]
        return training_command(
            None, gpus=self.gpus, launcher="torchrun", bin_dir=bin_dir, module=GPU_JOB_MODULE
        )

    def run(self, context: dg.AssetExecutionContext, job: dict) -> Any:
        """Launch `job` (see `anime_pipeline.gpu_job`) and wait; the Pipes invocation (its materialize result)."""
        raise NotImplementedError

    def render(self, job: dict) -> dict:
        """What would be submitted for `job` (command, pod spec or ECS run_task parameters), for review and tests."""
        raise NotImplementedError


class SubprocessGpuLauncher(GpuLauncherResource):
    """A subprocess on this machine (`dg.PipesSubprocessClient`). With an object-store data home the
    process gets its own empty cache dir, as a pod would: it shares nothing on disk with the run."""

    def _env(self, job: dict) -> tuple[dict[str, str], str | None]:
        if not job["store"].get("data_uri"):
            return {}, None
        cache = tempfile.mkdtemp(prefix="anime-gpu-job-")
        return {"ANIME_PIPELINE_CACHE_DIR": cache}, cache

    def render(self, job: dict) -> dict:
        return {"command": self.command(sys.executable), "extras": {"gpu_job": job}}

    def run(self, context, job: dict):
        env, cache = self._env(job)
        try:
            return dg.PipesSubprocessClient().run(
                context=context, command=self.command(sys.executable), extras={"gpu_job": job}, env=env
            )
        finally:
            if cache:
                shutil.rmtree(cache, ignore_errors=True)


def _worker_env(job: dict) -> dict[str, str]:
    """Plain (non-secret) environment of a remote worker: where the store is. Credentials are references."""
    store = job["store"]
    env = {"ANIME_PIPELINE_HOME": store["data_uri"], "ANIME_PIPELINE_CACHE_DIR": "/tmp/anime_pipeline-cache"}
    if store.get("endpoint_url"):
        env["ANIME_PIPELINE_S3_ENDPOINT_URL"] = store["endpoint_url"]
    if store.get("region"):
        env["ANIME_PIPELINE_S3_REGION"] = store["region"]
    return env


class K8sGpuLauncher(GpuLauncherResource):
    """A pod on a GPU node (dagster-k8s `PipesK8sClient`): `nvidia.com/gpu` limit, the GPU toleration,
    `/dev/shm`, environment from Secrets/ConfigMaps by name (credentials never inline)."""

    image: str = Field(
        description="Training image (ANIME_PIPELINE_GPU_IMAGE), e.g. built from deploy/Dockerfile."
    )
    namespace: str = Field(
        default="default", description="Namespace of the pod (ANIME_PIPELINE_K8S_NAMESPACE)."
    )
    secrets: list[str] = Field(
        default=[], description="Secrets whose keys become env vars (ANIME_PIPELINE_K8S_SECRETS)."
    )
    config_maps: list[str] = Field(
        default=[], description="ConfigMaps whose keys become env vars (ANIME_PIPELINE_K8S_CONFIG_MAPS)."
    )
    service_account: str | None = Field(
        default=None, description="Pod service account, e.g. IRSA (ANIME_PIPELINE_K8S_SERVICE_ACCOUNT)."
    )

    def pod_spec(self, job: dict) -> dict:
        from anime_pipeline.launch import k8s_pod_spec_for_training

        return k8s_pod_spec_for_training(
            self.image,
            self.gpus,
            command=self.command(),
            env=_worker_env(job),
            secret_env=self.secrets,
            config_map_env=self.config_maps,
            service_account_name=self.service_account,
        )

    def render(self, job: dict) -> dict:
        """The pod manifest dagster-k8s would create (Pipes context left as a placeholder)."""
        from dagster_k8s.pipes import build_pod_body

        pod = build_pod_body(
            pod_name="anime-pipeline-gpu-job",
            image=self.image,
            command=self.command(),
            env_vars={
                "DAGSTER_PIPES_CONTEXT": "<set by the Pipes client>",
                "DAGSTER_PIPES_MESSAGES": "<set by the Pipes client>",
            },
            base_pod_meta=None,
            base_pod_spec=self.pod_spec(job),
        )
        return {"namespace": self.namespace, "pod": dg_serialize_k8s(pod)}

    def run(self, context, job: dict):
        from dagster_k8s import PipesK8sClient

        return PipesK8sClient().run(
            context=context,
            image=self.image,
            command=self.command(),
            namespace=self.namespace,
            base_pod_spec=self.pod_spec(job),
            extras={"gpu_job": job},
        )


def dg_serialize_k8s(obj: Any) -> Any:
    """A kubernetes client model as the plain camelCase dict the API receives."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


class EcsGpuLauncher(GpuLauncherResource):
    """An ECS task on GPU capacity (dagster-aws `PipesECSClient`); secrets live in the task definition."""

    cluster: str = Field(description="ECS cluster (ANIME_PIPELINE_ECS_CLUSTER).")
    task_definition: str = Field(
        description="Task definition with the training container (ANIME_PIPELINE_ECS_TASK_DEFINITION)."
    )
    container: str = Field(default="training", description="Container to run (ANIME_PIPELINE_ECS_CONTAINER).")
    subnets: list[str] = Field(default=[], description="awsvpc subnets (ANIME_PIPELINE_ECS_SUBNETS).")
    security_groups: list[str] = Field(
        default=[], description="awsvpc security groups (ANIME_PIPELINE_ECS_SECURITY_GROUPS)."
    )
    capacity_provider: str | None = Field(
        default=None,
        description="GPU capacity provider (ANIME_PIPELINE_ECS_CAPACITY_PROVIDER); unset: launch type EC2.",
    )

    def run_task_params(self, job: dict) -> dict:
        from anime_pipeline.launch import ecs_run_task_params

        return ecs_run_task_params(
            self.cluster,
            self.task_definition,
            self.gpus,
            container_name=self.container,
            command=self.command(),
            environment=_worker_env(job),
            launch_type=None if self.capacity_provider else "EC2",
            capacity_provider=self.capacity_provider,
            subnets=self.subnets,
            security_groups=self.security_groups,
        )

    def render(self, job: dict) -> dict:
        return {"run_task_params": self.run_task_params(job)}

    def run(self, context, job: dict):
        from dagster_aws.pipes import PipesECSClient

        return PipesECSClient().run(
            context=context,
            run_task_params=self.run_task_params(job),
            extras={"gpu_job": job},
            pipes_container_name=self.container,
        )


def data_store_resource(s: Settings) -> DataStoreResource:
    if s.data_uri:
        return S3DataStoreResource(
            data_uri=s.data_uri, cache_dir=str(s.home), endpoint_url=s.s3_endpoint_url, region=s.s3_region
        )
    return LocalDataStoreResource(root=str(s.home))


def gpu_launcher_resource(s: Settings) -> GpuLauncherResource:
    g = s.gpu
    if g.launcher == "k8s":
        return K8sGpuLauncher(
            gpus=g.gpus,
            image=g.image or "",
            namespace=g.k8s_namespace,
            secrets=list(g.k8s_secrets),
            config_maps=list(g.k8s_config_maps),
            service_account=g.k8s_service_account,
        )
    if g.launcher == "ecs":
        return EcsGpuLauncher(
            gpus=g.gpus,
            cluster=g.ecs_cluster or "",
            task_definition=g.ecs_task_definition or "",
            container=g.ecs_container,
            subnets=list(g.ecs_subnets),
            security_groups=list(g.ecs_security_groups),
            capacity_provider=g.ecs_capacity_provider,
        )
    return SubprocessGpuLauncher(gpus=g.gpus)


def build_resources(env: dict[str, str] | None = None, settings: Settings | None = None) -> dict[str, object]:
    """The resource wiring for the current environment (the only place the environment is read).

    `settings` overrides what the environment says (tests and the CLI pass their own).
    """
    env = dict(os.environ if env is None else env)
    s = settings or Settings.from_env(env)
    catalog_kwargs: dict[str, Any] = dict(
        shikimori_url=s.shikimori_url,
        anilist_url=s.anilist_url,
        mal_url=s.mal_url,
        jikan_url=s.jikan_url,
        user_agent=s.user_agent,
    )
    if env.get("MAL_CLIENT_ID"):
        catalog_kwargs["mal_client_id"] = dg.EnvVar("MAL_CLIENT_ID")
    return {
        "pipeline": PipelineResource(
            home=str(s.home),
            profile=s.profile,
            base_model=s.base_model,
            catalog=s.catalog if s.profile == "live" else "demo",  # demo: the bundled catalog, not an API
            episode_source=s.episode_source,
            video_dir=str(s.video_dir) if s.video_dir else None,
            manifest=str(s.manifest) if s.manifest else None,
        ),
        "data_store": data_store_resource(s),
        "gpu_launcher": gpu_launcher_resource(s),
        "catalog_api": CatalogApiResource(**catalog_kwargs),
    }
