"""One switch: the data store and the GPU launcher are chosen by settings alone, checked when the definitions load.

Each combination of data store (local dir / S3) and GPU launcher (subprocess / Kubernetes / ECS) loads the
same Definitions; the resources under `data_store` and `gpu_launcher` are the implementations asked for,
and the pod spec / ECS task parameters that would be submitted carry the GPU request and the image and
reference secrets by name only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline.definitions import build_defs
from anime_pipeline.defs.resources import (
    EcsGpuLauncher,
    K8sGpuLauncher,
    LocalDataStoreResource,
    S3DataStoreResource,
    SubprocessGpuLauncher,
)
from anime_pipeline.gpu_job import train_job
from anime_pipeline.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]
SECRET_VALUES = ("wJalrXUtnFEMI-not-a-real-secret-K7MDENG", "mal-client-id-secret-123")
S3_HOME = "s3://anime-data/datasets/v1"

K8S = {
    "ANIME_PIPELINE_GPU_LAUNCHER": "k8s",
    "ANIME_PIPELINE_GPU_IMAGE": "registry.example.org/anime-pipeline:1.2.3",
    "ANIME_PIPELINE_GPUS": "4",
    "ANIME_PIPELINE_K8S_NAMESPACE": "training",
    "ANIME_PIPELINE_K8S_SECRETS": "aws-credentials,mal-api",
    "ANIME_PIPELINE_K8S_SERVICE_ACCOUNT": "anime-trainer",
}
ECS = {
    "ANIME_PIPELINE_GPU_LAUNCHER": "ecs",
    "ANIME_PIPELINE_ECS_CLUSTER": "gpu-cluster",
    "ANIME_PIPELINE_ECS_TASK_DEFINITION": "anime-pipeline-training:7",
    "ANIME_PIPELINE_ECS_SUBNETS": "subnet-1,subnet-2",
    "ANIME_PIPELINE_ECS_SECURITY_GROUPS": "sg-1",
    "ANIME_PIPELINE_GPUS": "1",
}


def _env(tmp_path, **extra) -> dict[str, str]:
    return {
        "ANIME_PIPELINE_HOME": str(tmp_path / "data"),
        "AWS_SECRET_ACCESS_KEY": SECRET_VALUES[0],
        "MAL_CLIENT_ID": SECRET_VALUES[1],
        **extra,
    }


def _job(defs) -> dict:
    home = Path(defs.resources["pipeline"].home)
    return train_job(
        store=defs.resources["data_store"].worker_store(),
        train_config={
            "base_model": str(home / "tiny-model"),
            "output_dir": str(home / "models" / "r1"),
            "train_samples": str(home / "splits" / "train.parquet"),
        },
        home=home,
        inputs=["splits/train.parquet"],
        run_dir="models/r1",
        asset_key="finetuned_adapter",
    )


@pytest.mark.parametrize(
    "home,launcher_env,store_cls,launcher_cls",
    [
        ("local", {}, LocalDataStoreResource, SubprocessGpuLauncher),
        ("s3", {}, S3DataStoreResource, SubprocessGpuLauncher),
        ("s3", K8S, S3DataStoreResource, K8sGpuLauncher),
        ("s3", ECS, S3DataStoreResource, EcsGpuLauncher),
    ],
)
def test_definitions_load_with_the_resources_the_settings_ask_for(
    tmp_path, home, launcher_env, store_cls, launcher_cls
):
    extra = dict(launcher_env)
    if home == "s3":
        extra.update(ANIME_PIPELINE_HOME=S3_HOME, ANIME_PIPELINE_CACHE_DIR=str(tmp_path / "cache"))
    env = _env(tmp_path, **extra)
    defs = build_defs(Settings.from_env(env), env=env)
    assert type(defs.resources["data_store"]) is store_cls
    assert type(defs.resources["gpu_launcher"]) is launcher_cls
    # The whole graph, with its jobs, schedules and sensors, validates under every combination.
    dg.Definitions.validate_loadable(defs)
    assert {j.name for j in defs.jobs} == {"catalog_job", "media_job", "training_job"}
    store = defs.resources["data_store"].open()
    if home == "s3":
        assert store.location == S3_HOME and store.root == (tmp_path / "cache").resolve()
        assert defs.resources["pipeline"].home == str((tmp_path / "cache").resolve())
    else:
        assert store.root == (tmp_path / "data").resolve()
    rendered = json.dumps(defs.resources["gpu_launcher"].render(_job(defs)))
    for secret in SECRET_VALUES:
        assert secret not in rendered
    assert "anime_pipeline.gpu_job" in rendered


def test_k8s_pod_spec_requests_gpus_runs_the_image_and_references_secrets(tmp_path):
    env = _env(
        tmp_path,
        ANIME_PIPELINE_HOME=S3_HOME,
        ANIME_PIPELINE_S3_ENDPOINT_URL="http://minio.internal:9000",
        **K8S,
    )
    defs = build_defs(Settings.from_env(env), env=env)
    out = defs.resources["gpu_launcher"].render(_job(defs))
    assert out["namespace"] == "training"
    pod = out["pod"]
    assert pod["spec"]["restartPolicy"] == "Never" and pod["spec"]["serviceAccountName"] == "anime-trainer"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == K8S["ANIME_PIPELINE_GPU_IMAGE"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    # 4 GPUs: torchrun, one process per GPU, each running the Pipes-side GPU job
    assert container["command"][:1] == ["torchrun"] and "--nproc-per-node" in container["command"]
    assert container["command"][-2:] == ["-m", "anime_pipeline.gpu_job"]
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    assert env_vars["ANIME_PIPELINE_HOME"] == S3_HOME
    assert env_vars["ANIME_PIPELINE_S3_ENDPOINT_URL"] == "http://minio.internal:9000"
    assert "DAGSTER_PIPES_CONTEXT" in env_vars
    assert not {"AWS_SECRET_ACCESS_KEY", "MAL_CLIENT_ID"} & set(env_vars)
    assert [e["secretRef"]["name"] for e in container["envFrom"]] == ["aws-credentials", "mal-api"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["spec"][
        "tolerations"
    ]


def test_ecs_task_params_request_gpus_and_carry_no_secrets(tmp_path):
    env = _env(tmp_path, ANIME_PIPELINE_HOME=S3_HOME, **ECS)
    defs = build_defs(Settings.from_env(env), env=env)
    params = defs.resources["gpu_launcher"].render(_job(defs))["run_task_params"]
    assert params["cluster"] == "gpu-cluster" and params["taskDefinition"] == "anime-pipeline-training:7"
    assert params["launchType"] == "EC2"
    (override,) = params["overrides"]["containerOverrides"]
    assert override["name"] == "training"
    assert override["resourceRequirements"] == [{"type": "GPU", "value": "1"}]
    assert override["command"] == ["python", "-m", "anime_pipeline.gpu_job"]
    assert {e["name"]: e["value"] for e in override["environment"]}["ANIME_PIPELINE_HOME"] == S3_HOME
    assert params["networkConfiguration"]["awsvpcConfiguration"]["subnets"] == ["subnet-1", "subnet-2"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (
            {"ANIME_PIPELINE_GPU_LAUNCHER": "slurm"},
            r"ANIME_PIPELINE_GPU_LAUNCHER='slurm' is not one of subprocess, k8s, ecs",
        ),
        ({"ANIME_PIPELINE_HOME": "gs://bucket/x"}, r"ANIME_PIPELINE_HOME=.*must start with one of s3://"),
        ({"ANIME_PIPELINE_HOME": "s3://Bad_Bucket/x"}, r"ANIME_PIPELINE_HOME=.*not a valid bucket name"),
        (
            {"ANIME_PIPELINE_MEDIA_SENSOR": "maybe"},
            r"ANIME_PIPELINE_MEDIA_SENSOR='maybe' is not one of on, off",
        ),
        ({"ANIME_PIPELINE_CATALOG_CRON": "daily"}, r"ANIME_PIPELINE_CATALOG_CRON='daily' is not a cron"),
        (
            {"ANIME_PIPELINE_MEDIA_EXECUTOR": "k8s_job"},
            r"ANIME_PIPELINE_MEDIA_EXECUTOR='k8s_job' is not one of in_process, multiprocess",
        ),
        (
            {"ANIME_PIPELINE_CATALOG_MAX_RUNTIME_S": "soon"},
            r"ANIME_PIPELINE_CATALOG_MAX_RUNTIME_S='soon' is not an integer",
        ),
        (
            {"ANIME_PIPELINE_GPU_LAUNCHER": "k8s", "ANIME_PIPELINE_HOME": S3_HOME},
            r"needs ANIME_PIPELINE_GPU_IMAGE",
        ),
        ({**K8S}, r"ANIME_PIPELINE_HOME must be an object-store URI"),
        (
            {"ANIME_PIPELINE_GPU_LAUNCHER": "ecs", "ANIME_PIPELINE_HOME": S3_HOME},
            r"needs ANIME_PIPELINE_ECS_CLUSTER",
        ),
        ({"ANIME_PIPELINE_S3_BUCKET": "anime-data"}, r"ANIME_PIPELINE_S3_BUCKET is no longer read.*s3://"),
        ({"ANIME_PIPELINE_PROFILE": "prod"}, r"ANIME_PIPELINE_PROFILE='prod' is not one of demo, live"),
    ],
)
def test_invalid_settings_fail_at_load_naming_the_variable(tmp_path, extra, message):
    env = _env(tmp_path, **extra)
    with pytest.raises(SettingsError, match=message):
        build_defs(env=env)


def test_schedules_and_sensors_follow_the_same_settings(tmp_path):
    demo = build_defs(env=_env(tmp_path))
    assert demo.get_schedule_def("catalog_daily").default_status == dg.DefaultScheduleStatus.RUNNING
    assert demo.get_sensor_def("new_titles_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    live = build_defs(
        env=_env(
            tmp_path,
            ANIME_PIPELINE_PROFILE="live",
            ANIME_PIPELINE_CATALOG_CRON="15 4 * * 1",
            ANIME_PIPELINE_TRAINING_SCHEDULE="on",
            ANIME_PIPELINE_CATALOG_MAX_RUNTIME_S="600",
        )
    )
    assert live.get_schedule_def("catalog_daily").default_status == dg.DefaultScheduleStatus.STOPPED
    assert live.get_schedule_def("catalog_daily").cron_schedule == "15 4 * * 1"
    assert live.get_sensor_def("new_titles_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    assert live.get_schedule_def("training_weekly").default_status == dg.DefaultScheduleStatus.RUNNING
    assert live.resolve_job_def("catalog_job").tags["dagster/max_runtime"] == "600"


def test_dagster_refuses_to_load_an_invalid_setting(tmp_path):
    """The real loader (`dagster definitions validate`) fails and names the variable and the allowed values."""
    import os

    env = {
        **os.environ,
        "ANIME_PIPELINE_HOME": str(tmp_path / "data"),
        "ANIME_PIPELINE_GPU_LAUNCHER": "lambda",
    }
    out = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-m",
            "anime_pipeline.definitions",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode != 0
    assert (
        "ANIME_PIPELINE_GPU_LAUNCHER='lambda' is not one of subprocess, k8s, ecs" in out.stdout + out.stderr
    )
