"""anime_pipeline.launch: training commands (checked against the real torchrun / accelerate CLIs) and the
parameters handed to the production Pipes clients (checked against botocore's ECS model, dagster-aws's
PipesECSClient and dagster-k8s's pod builder)."""

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline.launch import (
    GPU_RESOURCE,
    LaunchError,
    ecs_run_task_params,
    k8s_pod_spec_for_training,
    training_command,
)

BIN = Path(sys.executable).parent
CFG = "/data/models/run-1/train_config.json"


# training_command -------------------------------------------------------------------------------
def test_one_gpu_is_a_plain_python_module_run():
    assert training_command(CFG) == ["python", "-m", "anime_pipeline.training", "--config", CFG]
    assert training_command(Path(CFG), gpus=0) == ["python", "-m", "anime_pipeline.training", "--config", CFG]
    assert training_command(CFG, bin_dir=BIN)[0] == str(BIN / "python")


def test_several_gpus_use_torchrun_by_default():
    assert training_command(CFG, gpus=4) == [
        "torchrun",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "4",
        "-m",
        "anime_pipeline.training",
        "--config",
        CFG,
    ]
    assert training_command(CFG, gpus=8, nodes=2, master_addr="trainer-0.trainer", master_port=29400) == [
        "torchrun",
        "--nnodes",
        "2",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        "trainer-0.trainer:29400",
        "--rdzv-id",
        "anime-pipeline-finetune",
        "--nproc-per-node",
        "8",
        "-m",
        "anime_pipeline.training",
        "--config",
        CFG,
    ]


def test_accelerate_counts_processes_over_all_machines():
    assert training_command(CFG, gpus=4, launcher="accelerate") == [
        "accelerate",
        "launch",
        "--multi_gpu",
        "--num_processes",
        "4",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "anime_pipeline.training",
        "--config",
        CFG,
    ]
    cmd = training_command(CFG, gpus=4, nodes=2, launcher="accelerate", master_addr="10.0.0.5", node_rank=1)
    assert cmd[cmd.index("--num_processes") + 1] == "8"
    assert cmd[cmd.index("--machine_rank") + 1] == "1"
    assert cmd[cmd.index("--main_process_ip") + 1] == "10.0.0.5"
    single = training_command(CFG, gpus=1, launcher="accelerate")
    assert "--multi_gpu" not in single and single[single.index("--num_processes") + 1] == "1"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"gpus": 2, "launcher": "python"}, "use torchrun or accelerate"),
        ({"nodes": 2, "launcher": "python", "gpus": 1}, "use torchrun or accelerate"),
        ({"gpus": 0, "launcher": "torchrun"}, "gpus ≥ 1"),
        ({"gpus": -1}, "gpus must be ≥ 0"),
        ({"gpus": True}, "gpus must be an int"),
        ({"gpus": 2.0}, "gpus must be an int"),
        ({"nodes": 0}, "nodes must be ≥ 1"),
        ({"launcher": "deepspeed"}, "launcher must be one of"),
        ({"gpus": 2, "nodes": 2}, "needs master_addr"),
        ({"gpus": 2, "nodes": 2, "master_addr": "a b"}, "needs master_addr"),
        ({"gpus": 2, "nodes": 2, "master_addr": "h", "launcher": "accelerate"}, "node_rank"),
        ({"gpus": 2, "nodes": 2, "master_addr": "h", "node_rank": 2}, "node_rank must be < nodes"),
        ({"gpus": 2, "master_port": 70000}, "master_port"),
        ({"module": "x; rm -rf /"}, "module"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, message):
    with pytest.raises(LaunchError, match=message):
        training_command(CFG, **kwargs)


@pytest.mark.parametrize("bad", ["", "--help", 3])  # None: no --config (the gpu_job takes its job from Pipes)
def test_config_path_must_be_a_path(bad):
    with pytest.raises(LaunchError, match="config_path"):
        training_command(bad)


def _help(argv: list[str]) -> str:
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HOME": os.devnull}
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_every_emitted_flag_is_accepted_by_the_real_cli(launcher):
    exe = BIN / launcher
    if not exe.exists():
        pytest.skip(f"{launcher} is not installed in this environment")
    help_text = _help([str(exe), "launch", "--help"] if launcher == "accelerate" else [str(exe), "--help"])
    commands = [
        training_command(CFG, gpus=4, launcher=launcher),
        training_command(CFG, gpus=2, nodes=3, launcher=launcher, master_addr="h", node_rank=2),
    ]
    flags = {a for cmd in commands for a in cmd[: cmd.index("-m")] if a.startswith("-")}
    assert flags, commands
    for flag in flags:
        assert f"{flag} " in help_text or f"{flag}," in help_text or f"{flag}\n" in help_text, (
            flag,
            launcher,
        )
    assert "-m, --module" in help_text


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_launcher_starts_one_process_per_gpu_with_the_arguments(launcher, tmp_path):
    """Run the emitted command for real (CPU, 2 processes), with a probe module in place of the trainer."""
    if not (BIN / launcher).exists():
        pytest.skip(f"{launcher} is not installed in this environment")
    (tmp_path / "launch_probe.py").write_text(
        textwrap.dedent(
            """
            import json, os, sys
            keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
            print("PROBE " + json.dumps({**{k: os.environ.get(k) for k in keys}, "argv": sys.argv[1:]}), flush=True)
            """
        )
    )
    cmd = training_command(CFG, gpus=2, launcher=launcher, bin_dir=BIN, module="launch_probe")
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "HF_HOME": str(tmp_path / "hf"),
        "CUDA_VISIBLE_DEVICES": "",
    }
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    seen = [json.loads(line[6:]) for line in r.stdout.splitlines() if line.startswith("PROBE ")]
    assert sorted(p["RANK"] for p in seen) == ["0", "1"]
    assert {p["WORLD_SIZE"] for p in seen} == {"2"}
    assert all(p["argv"] == ["--config", CFG] for p in seen)


def test_the_training_entry_point_takes_the_emitted_arguments():
    from anime_pipeline.training.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    cmd = training_command(CFG)
    assert cmd[1:3] == ["-m", "anime_pipeline.training"] and cmd[3] == "--config"


# The GPU job (what the gpu_launcher resource runs) -------------------------------------------------
def test_gpu_job_command_has_no_config_file_the_job_comes_through_pipes():
    assert training_command(None, gpus=1, module="anime_pipeline.gpu_job") == [
        "python",
        "-m",
        "anime_pipeline.gpu_job",
    ]
    assert training_command(None, gpus=2, launcher="torchrun", module="anime_pipeline.gpu_job")[-2:] == [
        "-m",
        "anime_pipeline.gpu_job",
    ]


def test_gpu_job_paths_are_relative_to_each_machines_data_dir(tmp_path):
    from anime_pipeline.gpu_job import eval_job, from_ref, to_ref, train_job

    here, there = tmp_path / "orchestrator", tmp_path / "gpu-pod"
    cfg = {
        "base_model": str(here / "tiny-model"),
        "output_dir": str(here / "models" / "r1"),
        "data_home": str(here),
        "lora_r": 16,
        "feature_cache_dir": None,
        "other": "HuggingFaceTB/SmolVLM2",
    }
    job = train_job(
        store={"data_uri": "s3://b/p"},
        train_config=cfg,
        home=here,
        inputs=["splits/train.parquet"],
        run_dir="models/r1",
        asset_key="finetuned_adapter",
    )
    assert job["config"]["output_dir"] == "{home}/models/r1" and job["config"]["data_home"] == "{home}"
    assert str(here) not in json.dumps(job)
    assert job["inputs"] == [
        "splits/train.parquet",
        "tiny-model",
    ]  # a base model inside the data home travels too
    assert job["outputs"] == ["models/r1"] and job["optional_inputs"] == [
        "models/r1"
    ]  # resume from checkpoints
    resolved = from_ref(job["config"], there)
    assert resolved["output_dir"] == str((there / "models" / "r1").resolve())
    assert resolved["other"] == "HuggingFaceTB/SmolVLM2" and resolved["lora_r"] == 16
    assert to_ref(resolved, there) == job["config"]
    hub = eval_job(
        store={},
        eval_args={"base_model": "HuggingFaceTB/SmolVLM2"},
        home=here,
        inputs=[],
        outputs=[],
        asset_key="caption_eval",
    )
    assert hub["inputs"] == []  # a hub model id is not fetched from the store


def test_storage_cli_with_a_local_home_says_there_is_nothing_to_move(capsys, tmp_path):
    from anime_pipeline.storage import main as storage_main

    assert storage_main(["fetch", "frames"], env={"ANIME_PIPELINE_HOME": str(tmp_path)}) == 2
    assert "is a local dir: nothing to fetch" in capsys.readouterr().out


# Kubernetes -------------------------------------------------------------------------------------
def test_k8s_pod_spec_shape():
    spec = k8s_pod_spec_for_training(
        "ghcr.io/acme/anime-pipeline:1.2.3",
        gpus=2,
        command=training_command(CFG, gpus=2),
        env={"ANIME_PIPELINE_PROFILE": "live"},
        secret_env=["anime-pipeline-aws", "anime-pipeline-mal"],
        config_map_env=["anime-pipeline-env"],
        cpu="8",
        memory="64Gi",
        node_selector={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
        service_account_name="anime-training",
    )
    assert spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["resources"] == {
        "limits": {GPU_RESOURCE: "2", "memory": "64Gi"},
        "requests": {"cpu": "8", "memory": "64Gi"},
    }
    assert c["envFrom"] == [
        {"secretRef": {"name": "anime-pipeline-aws"}},
        {"secretRef": {"name": "anime-pipeline-mal"}},
        {"configMapRef": {"name": "anime-pipeline-env"}},
    ]
    assert c["env"] == [{"name": "ANIME_PIPELINE_PROFILE", "value": "live"}]
    assert c["command"][:2] == ["torchrun", "--standalone"]
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
    assert spec["tolerations"] == [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    assert spec["serviceAccountName"] == "anime-training"
    # values are strings only where Kubernetes wants strings
    assert json.loads(json.dumps(spec)) == spec

    cpu_only = k8s_pod_spec_for_training("img:1", gpus=0, shm_size=None)
    assert "tolerations" not in cpu_only and "resources" not in cpu_only["containers"][0]
    assert "volumes" not in cpu_only


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image": ""},
        {"image": "has space"},
        {"gpus": -1},
        {"secret_env": ["Not_A_Name"]},
        {"memory": "lots"},
        {"env": {"BAD-NAME": "x"}},
        {"command": []},
    ],
)
def test_k8s_pod_spec_validates(kwargs):
    kw = {"image": "img:1", **kwargs}
    with pytest.raises(LaunchError):
        k8s_pod_spec_for_training(**kw)


def test_dagster_k8s_builds_the_pipes_pod_from_our_spec():
    pipes = pytest.importorskip("dagster_k8s.pipes", reason="dagster-k8s is not installed")
    spec = k8s_pod_spec_for_training("img:1", gpus=4, secret_env=["anime-pipeline-aws"], env={"A": "1"})
    pod = pipes.build_pod_body(
        pod_name="dagster-finetune-abc",
        image="ghcr.io/acme/anime-pipeline:1.2.3",
        command=training_command(CFG, gpus=4),
        env_vars={"DAGSTER_PIPES_CONTEXT": "ctx", "DAGSTER_PIPES_MESSAGES": "msgs"},
        base_pod_meta={"labels": {"app": "anime-pipeline"}},
        base_pod_spec=copy.deepcopy(spec),
    )
    c = pod.spec.containers[0]
    assert c.image == "ghcr.io/acme/anime-pipeline:1.2.3"
    assert c.command == training_command(CFG, gpus=4)
    assert c.resources.limits == {GPU_RESOURCE: "4"}
    assert c.env_from[0].secret_ref.name == "anime-pipeline-aws"
    assert [e.name for e in c.env] == ["A", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"]
    assert pod.spec.restart_policy == "Never"
    assert pod.spec.tolerations[0].key == GPU_RESOURCE
    assert pod.spec.volumes[0].empty_dir.medium == "Memory"


# ECS --------------------------------------------------------------------------------------------
def _validate_run_task(params: dict) -> None:
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ecs")
    report = ParamValidator().validate(params, model.operation_model("RunTask").input_shape)
    assert not report.has_errors(), report.generate_report()


def test_ecs_run_task_params_shape_is_valid_for_boto3():
    params = ecs_run_task_params(
        "anime-gpu",
        "anime-pipeline-train:7",
        gpus=4,
        command=training_command(CFG, gpus=4),
        environment={"ANIME_PIPELINE_PROFILE": "live"},
        subnets=["subnet-1"],
        security_groups=["sg-1"],
        memory_mib=60000,
        tags={"team": "ml"},
    )
    _validate_run_task(params)
    assert params["launchType"] == "EC2" and params["count"] == 1
    (override,) = params["overrides"]["containerOverrides"]
    assert override["name"] == "training"
    assert override["resourceRequirements"] == [{"type": "GPU", "value": "4"}]
    assert override["environment"] == [{"name": "ANIME_PIPELINE_PROFILE", "value": "live"}]
    assert params["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == "DISABLED"

    by_provider = ecs_run_task_params("c", "td", gpus=1, launch_type=None, capacity_provider="gpu-asg")
    _validate_run_task(by_provider)
    assert (
        "launchType" not in by_provider
        and by_provider["capacityProviderStrategy"][0]["capacityProvider"] == "gpu-asg"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"launch_type": "FARGATE"}, "Fargate has no GPUs"),
        ({"capacity_provider": "x"}, "not both"),
        ({"launch_type": None}, "required"),
        ({"security_groups": ["sg-1"]}, "need subnets"),
        ({"cluster": ""}, "cluster"),
        ({"gpus": 1.5}, "gpus"),
    ],
)
def test_ecs_run_task_params_validates(kwargs, message):
    kw = {"cluster": "c", "task_definition": "td", **kwargs}
    with pytest.raises(LaunchError, match=message):
        ecs_run_task_params(**kw)


def test_pipes_ecs_client_sends_our_params_with_the_pipes_environment(aws_env, monkeypatch):
    """The real PipesECSClient, with a boto3 ECS client whose responses are stubbed (no AWS)."""
    import boto3
    import dagster._core.pipes.utils as pipes_utils

    # the CloudWatch reader otherwise waits 10 s for logs of a task that never started
    monkeypatch.setattr(pipes_utils, "WAIT_FOR_LOGS_AFTER_EXECUTION_INTERVAL", -1)
    from botocore.stub import Stubber
    from dagster_aws.pipes import PipesECSClient

    ecs = boto3.client("ecs", region_name="us-east-1")
    sent: list[dict] = []
    ecs.meta.events.register(
        "provide-client-params.ecs.RunTask", lambda params, **kw: sent.append(copy.deepcopy(params))
    )
    stub = Stubber(ecs)
    log_config = {
        "logDriver": "awslogs",
        "options": {"awslogs-group": "/anime", "awslogs-stream-prefix": "train"},
    }
    stub.add_response(
        "describe_task_definition",
        {
            "taskDefinition": {
                "containerDefinitions": [
                    {"name": "training", "image": "img:1", "logConfiguration": log_config}
                ]
            }
        },
        {"taskDefinition": "anime-pipeline-train:7"},
    )
    stub.add_client_error(
        "run_task", service_error_code="ClientException", service_message="stubbed: stop here"
    )

    @dg.asset
    def finetuned_adapter_on_ecs(context: dg.AssetExecutionContext, pipes_ecs: PipesECSClient):
        params = ecs_run_task_params(
            "anime-gpu", "anime-pipeline-train:7", gpus=2, command=training_command(CFG, gpus=2)
        )
        return pipes_ecs.run(context=context, run_task_params=params).get_materialize_result()

    with stub:
        result = dg.materialize(
            [finetuned_adapter_on_ecs],
            resources={"pipes_ecs": PipesECSClient(client=ecs)},
            raise_on_error=False,
        )
    assert not result.success
    assert "stubbed: stop here" in str(result.get_step_failure_events()[0].event_specific_data.error)
    (params,) = sent  # botocore validated them against the RunTask model before the stub answered
    (override,) = params["overrides"]["containerOverrides"]
    assert override["resourceRequirements"] == [{"type": "GPU", "value": "2"}]
    assert override["command"][:2] == ["torchrun", "--standalone"]
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= {e["name"] for e in override["environment"]}
    assert "dagster/run-id" in {t["key"] for t in params["tags"]}
