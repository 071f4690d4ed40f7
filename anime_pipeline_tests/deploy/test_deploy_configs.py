"""Every file under deploy/ is valid for what consumes it: Dagster's instance schema and the classes the
YAML names (imported from the installed packages), the Helm chart's keys, the Kubernetes Pod model, and
the Dockerfile's build steps."""

import importlib
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
PG_ENV = {
    "DAGSTER_PG_HOST": "db.internal",
    "DAGSTER_PG_PORT": "5432",
    "DAGSTER_PG_USERNAME": "dagster",
    "DAGSTER_PG_PASSWORD": "not-a-real-password",
    "DAGSTER_PG_DB": "dagster",
    "ANIME_PIPELINE_HOME": "s3://anime-data/anime-pipeline",
    "ANIME_PIPELINE_LOG_BUCKET": "anime-data",
    "ANIME_PIPELINE_S3_REGION": "us-east-1",
}


def load(rel: str):
    return yaml.safe_load((DEPLOY / rel).read_text())


def test_every_yaml_under_deploy_parses():
    files = sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yaml", ".yml"))
    assert {p.relative_to(DEPLOY).as_posix() for p in files} >= {
        "dagster-postgres.yaml",
        "ecs/dagster.yaml",
        "k8s/values.yaml",
        "k8s/training-pod.yaml",
    }
    for p in files:
        docs = list(yaml.safe_load_all(p.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), p


def _class(section: dict):
    module = importlib.import_module(section["module"])
    return getattr(module, section["class"])


def _validate_instance_yaml(path: Path, monkeypatch) -> dict:
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.storage.config import pg_config

    for k, v in PG_ENV.items():
        monkeypatch.setenv(k, v)
    _, custom = dagster_instance_config(str(path.parent), path.name)
    assert custom is None
    raw = yaml.safe_load(path.read_text())
    # the storage section is what dagster-postgres will be given
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")
    result = process_config(pg_config(), raw["storage"]["postgres"])
    assert result.success, result.errors
    db = result.value["postgres_db"]
    assert (db["hostname"], db["port"], db["password"]) == ("db.internal", 5432, "not-a-real-password")
    assert db["scheme"] == "postgresql+psycopg2"
    # every pluggable class the file names exists in the installed packages and accepts its config
    for key in ("run_launcher", "run_coordinator", "compute_logs", "scheduler"):
        if key in raw:
            cls = _class(raw[key])
            checked = process_config(cls.config_type(), raw[key].get("config", {}))
            assert checked.success, (key, checked.errors)
    return raw


def test_local_dagster_yaml_pools_are_kept_in_every_instance_file():
    local = yaml.safe_load((REPO / "dagster.yaml").read_text())["concurrency"]["pools"]
    for rel in ("dagster-postgres.yaml", "ecs/dagster.yaml"):
        assert load(rel)["concurrency"]["pools"] == local, rel
    assert local["default_limit"] == 1


def test_postgres_instance_yaml(monkeypatch):
    raw = _validate_instance_yaml(DEPLOY / "dagster-postgres.yaml", monkeypatch)
    pg = raw["storage"]["postgres"]["postgres_db"]
    assert {k: v for k, v in pg.items() if isinstance(v, dict)} == {
        "hostname": {"env": "DAGSTER_PG_HOST"},
        "port": {"env": "DAGSTER_PG_PORT"},
        "username": {"env": "DAGSTER_PG_USERNAME"},
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": {"env": "DAGSTER_PG_DB"},
    }


def test_ecs_instance_yaml(monkeypatch):
    raw = _validate_instance_yaml(DEPLOY / "ecs" / "dagster.yaml", monkeypatch)
    from dagster_aws.ecs import EcsRunLauncher
    from dagster_aws.s3.compute_log_manager import S3ComputeLogManager

    assert _class(raw["run_launcher"]) is EcsRunLauncher
    assert _class(raw["compute_logs"]) is S3ComputeLogManager
    launcher = raw["run_launcher"]["config"]
    # the password is never copied as a plain variable; it reaches run tasks as a secret
    assert "DAGSTER_PG_PASSWORD" not in launcher["env_vars"]
    assert {"DAGSTER_PG_HOST", "ANIME_PIPELINE_HOME", "ANIME_PIPELINE_GPU_LAUNCHER"} <= set(
        launcher["env_vars"]
    )
    assert raw["concurrency"]["runs"]["max_concurrent_runs"] >= 1


# Helm --------------------------------------------------------------------------------------------
# Keys accepted by the chart's schema (helm/dagster/schema/.../subschema/*.py in dagster-io/dagster).
K8S_RUN_LAUNCHER_KEYS = {
    "image",
    "imagePullPolicy",
    "jobNamespace",
    "loadInclusterConfig",
    "kubeconfigFile",
    "envConfigMaps",
    "envSecrets",
    "envVars",
    "volumeMounts",
    "volumes",
    "labels",
    "failPodOnRunFailure",
    "resources",
    "schedulerName",
    "securityContext",
    "runK8sConfig",
}
POSTGRESQL_KEYS = {
    "image",
    "enabled",
    "postgresqlHost",
    "postgresqlUsername",
    "postgresqlPassword",
    "postgresqlDatabase",
    "postgresqlParams",
    "postgresqlScheme",
    "service",
}
QUEUED_RUN_COORDINATOR_KEYS = {
    "maxConcurrentRuns",
    "tagConcurrencyLimits",
    "dequeueIntervalSeconds",
    "dequeueNumWorkers",
    "dequeueUseThreads",
    "blockOpConcurrencyLimitedRuns",
}


def test_helm_values():
    v = load("k8s/values.yaml")
    rl = v["runLauncher"]
    assert rl["type"] == "K8sRunLauncher"
    assert set(rl["config"]) == {"k8sRunLauncher"}
    k8s = rl["config"]["k8sRunLauncher"]
    assert set(k8s) <= K8S_RUN_LAUNCHER_KEYS, set(k8s) - K8S_RUN_LAUNCHER_KEYS
    assert all(set(s) == {"name"} for s in k8s["envSecrets"])
    assert all(re.match(r"^[A-Z_][A-Z0-9_]*=", e) for e in k8s["envVars"])
    # run pods are CPU pods: only the training pod asks for GPUs
    assert "nvidia.com/gpu" not in str(k8s.get("resources"))

    pg = v["postgresql"]
    assert (
        set(pg) <= POSTGRESQL_KEYS
        and pg["enabled"] is False
        and pg["postgresqlScheme"] == "postgresql+psycopg2"
    )
    assert v["generatePostgresqlPasswordSecret"] is False and pg["postgresqlPassword"] == ""

    rc = v["dagsterDaemon"]["runCoordinator"]
    assert rc["enabled"] is True and rc["type"] == "QueuedRunCoordinator"
    qrc = rc["config"]["queuedRunCoordinator"]
    assert set(qrc) <= QUEUED_RUN_COORDINATOR_KEYS
    # the chart refuses maxConcurrentRuns in both places
    assert "maxConcurrentRuns" not in qrc and "tagConcurrencyLimits" not in qrc

    conc = v["concurrency"]
    assert conc["enabled"] is True
    assert conc["pools"] == {"defaultLimit": 1, "granularity": "op"}
    assert set(conc["runs"]) <= {"maxConcurrentRuns", "tagConcurrencyLimits"}

    (dep,) = v["dagster-user-deployments"]["deployments"]
    args = dep["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    assert importlib.util.find_spec(module) is not None
    assert module == "anime_pipeline.definitions"


def test_training_pod_manifest_is_what_the_k8s_launcher_submits():
    """deploy/k8s/training-pod.yaml is the pod spec `K8sGpuLauncher` builds from the Helm values' settings."""
    from anime_pipeline.defs.resources import build_resources
    from anime_pipeline.gpu_job import train_job
    from anime_pipeline.settings import Settings

    v = load("k8s/values.yaml")
    env_vars = dict(e.split("=", 1) for e in v["runLauncher"]["config"]["k8sRunLauncher"]["envVars"])
    launcher = build_resources(env={}, settings=Settings.from_env(env_vars))["gpu_launcher"]
    job = train_job(
        store={"data_uri": env_vars["ANIME_PIPELINE_HOME"], "region": "us-east-1"},
        train_config={},
        home=Path("/unused"),
        inputs=[],
        run_dir="models/example",
        asset_key="finetuned_adapter",
    )
    doc = load("k8s/training-pod.yaml")
    assert (doc["apiVersion"], doc["kind"]) == ("v1", "Pod")
    assert doc["spec"] == launcher.pod_spec(job)
    assert launcher.namespace == "anime" and launcher.image == doc["spec"]["containers"][0]["image"]


def test_training_pod_manifest_is_a_valid_kubernetes_pod():
    models = pytest.importorskip("dagster_k8s.models", reason="dagster-k8s is not installed")
    import kubernetes

    # camelCase manifest → snake_case → V1Pod; unknown keys anywhere raise
    snake = models.k8s_snake_case_dict(kubernetes.client.V1Pod, load("k8s/training-pod.yaml"))
    pod = models.k8s_model_from_dict(kubernetes.client.V1Pod, snake)
    assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert pod.spec.containers[0].env_from[0].secret_ref.name == "anime-pipeline-aws"


# Dockerfile --------------------------------------------------------------------------------------
def test_dockerfile_builds_torch_first_then_the_project_with_the_gpu_extra():
    text = (DEPLOY / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert re.search(r"apt-get install -y[^\n]*\bffmpeg\b", text)
    torch_at = text.index('pip install "torch==${TORCH_VERSION}"')
    project_at = text.index('pip install --no-build-isolation ".[${EXTRAS}]"')
    assert torch_at < project_at
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, flags=re.M))
    assert "gpu" in args["EXTRAS"].split(",")
    assert (DEPLOY.parent / args["INSTANCE_YAML"]).is_file()
    # every COPY source exists in the build context (the repository root)
    for src in re.findall(r"^COPY (?!--)(.+) \S+$", text, flags=re.M):
        for item in src.split():
            if "$" not in item:
                assert (REPO / item).exists(), item
    assert '"--module-name", "anime_pipeline.definitions"' in text


def test_documented_media_job_run_config_is_valid():
    """docs/DEPLOYMENT.md's multiprocess snippet is accepted by the real `media_job` with
    ANIME_PIPELINE_MEDIA_EXECUTOR=multiprocess (the default runs both steps in the run worker)."""
    import dagster as dg
    from dagster._config import validate_config

    from anime_pipeline.definitions import build_defs
    from anime_pipeline.settings import Settings

    default = build_defs(Settings.from_env({})).resolve_job_def("media_job")
    assert default.executor_def is dg.in_process_executor
    job = build_defs(Settings.from_env({"ANIME_PIPELINE_MEDIA_EXECUTOR": "multiprocess"})).resolve_job_def(
        "media_job"
    )
    assert job.executor_def is dg.multi_or_in_process_executor
    doc = (REPO / "docs" / "DEPLOYMENT.md").read_text()
    snippet = re.search(r"```yaml\n(execution:\n.*?)```", doc, flags=re.S)
    assert snippet, "the multiprocess run-config snippet is missing from docs/DEPLOYMENT.md"
    run_config = yaml.safe_load(snippet.group(1))
    assert run_config["execution"]["config"]["multiprocess"]["max_concurrent"] >= 1
    result = validate_config(job.run_config_schema.config_type, run_config)
    assert result.success, result.errors
