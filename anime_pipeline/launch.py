"""How the fine-tune is launched: the process command and the production Pipes client parameters.

- `training_command()` builds the command that runs `python -m anime_pipeline.training --config …`
  directly (one process) or under `torchrun` / `accelerate launch` (one process per GPU, optionally on
  several nodes).
- `k8s_pod_spec_for_training()` builds a Kubernetes PodSpec (camelCase dict) for
  `dagster_k8s.PipesK8sClient.run(base_pod_spec=…)`.
- `ecs_run_task_params()` builds the boto3 `ecs.run_task` keyword arguments for
  `dagster_aws.pipes.PipesECSClient.run(run_task_params=…)`.

Pure functions returning lists and dicts; nothing is imported from Dagster or Kubernetes, nothing is
started. Secrets are referenced by name (a Kubernetes Secret, an ECS task-definition secret), never
passed as values.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

TRAINING_MODULE = "anime_pipeline.training"
GPU_JOB_MODULE = "anime_pipeline.gpu_job"  # what the gpu_launcher resource runs: fetch, train/eval, publish
LAUNCHERS = ("auto", "python", "torchrun", "accelerate")
Launcher = Literal["auto", "python", "torchrun", "accelerate"]
DEFAULT_MASTER_PORT = 29500
GPU_RESOURCE = "nvidia.com/gpu"
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$|^[0-9a-fA-F:]+$")  # host name, IPv4, IPv6
_K8S_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")


class LaunchError(ValueError):
    """Arguments that cannot make a valid launch; the message says which and why."""


def _count(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LaunchError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise LaunchError(f"{name} must be ≥ {minimum}, got {value}")
    return value


def _program(bin_dir: str | os.PathLike[str] | None, name: str) -> str:
    return str(Path(bin_dir) / name) if bin_dir is not None else name


def resolve_launcher(launcher: str, *, gpus: int, nodes: int) -> str:
    """`auto` → `python` for one process on one node, `torchrun` otherwise."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher == "auto":
        return "python" if gpus <= 1 and nodes == 1 else "torchrun"
    return launcher


def training_command(
    config_path: str | os.PathLike[str] | None,
    *,
    gpus: int = 1,
    nodes: int = 1,
    launcher: Launcher = "auto",
    master_addr: str | None = None,
    master_port: int = DEFAULT_MASTER_PORT,
    node_rank: int | None = None,
    rdzv_id: str = "anime-pipeline-finetune",
    bin_dir: str | os.PathLike[str] | None = None,
    module: str = TRAINING_MODULE,
) -> list[str]:
    """The argv that runs the training entry point with `--config config_path`.

    gpus: GPUs (= processes) per node; 0 means a CPU run (python launcher only).
    nodes: machines; more than one needs `master_addr` (the rendezvous host, reachable from every
        node) and, for accelerate, this node's `node_rank` (torchrun's c10d rendezvous assigns ranks).
    launcher: `python` (one process), `torchrun`, `accelerate` or `auto` (python for one process,
        torchrun otherwise).
    bin_dir: folder holding `python` / `torchrun` / `accelerate` (e.g. the venv's `bin`); unset:
        the bare names are looked up on PATH (what a container image wants).
    module: the module run with `-m` (the training entry point; tests substitute a probe).

    Examples: `python -m anime_pipeline.training --config c.json`;
    `torchrun --standalone --nnodes 1 --nproc-per-node 4 -m anime_pipeline.training --config c.json`;
    `accelerate launch --multi_gpu --num_processes 4 --num_machines 1 --mixed_precision no
    --dynamo_backend no -m anime_pipeline.training --config c.json`.
    """
    if config_path is None:  # the job comes through the Pipes context (anime_pipeline.gpu_job)
        config = None
    else:
        try:
            config = os.fspath(config_path)
        except TypeError:
            raise LaunchError(f"config_path must be a file path, got {config_path!r}") from None
        if not config or "\x00" in config or config.startswith("-"):
            raise LaunchError(f"config_path must be a file path, got {config_path!r}")
    gpus = _count("gpus", gpus, minimum=0)
    nodes = _count("nodes", nodes, minimum=1)
    if not _MODULE_RE.match(module or ""):
        raise LaunchError(f"module must be a dotted Python module name, got {module!r}")
    kind = resolve_launcher(launcher, gpus=gpus, nodes=nodes)
    tail = ["-m", module] + (["--config", config] if config is not None else [])

    if kind == "python":
        if gpus > 1 or nodes > 1:
            raise LaunchError(
                f"the python launcher runs one process; use torchrun or accelerate for gpus={gpus}, nodes={nodes}"
            )
        return [_program(bin_dir, "python"), *tail]

    if gpus < 1:
        raise LaunchError(f"{kind} needs gpus ≥ 1 (processes per node), got {gpus}")
    master_port = _count("master_port", master_port, minimum=1)
    if master_port > 65535:
        raise LaunchError(f"master_port must be ≤ 65535, got {master_port}")
    if nodes > 1 and (not master_addr or not _HOST_RE.match(master_addr)):
        raise LaunchError(
            f"nodes={nodes} needs master_addr, the rendezvous host name or IP (got {master_addr!r})"
        )
    if node_rank is not None:
        node_rank = _count("node_rank", node_rank, minimum=0)
        if node_rank >= nodes:
            raise LaunchError(f"node_rank must be < nodes={nodes}, got {node_rank}")

    if kind == "torchrun":
        cmd = [_program(bin_dir, "torchrun")]
        if nodes == 1:
            cmd += ["--standalone", "--nnodes", "1"]
        else:
            if not re.match(r"^[A-Za-z0-9_-]+$", rdzv_id or ""):
                raise LaunchError(f"rdzv_id must be [A-Za-z0-9_-]+, got {rdzv_id!r}")
            cmd += [
                "--nnodes",
                str(nodes),
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"{master_addr}:{master_port}",
                "--rdzv-id",
                rdzv_id,
            ]
            if node_rank is not None:
                cmd += ["--node-rank", str(node_rank)]
        cmd += ["--nproc-per-node", str(gpus)]
        return cmd + tail

    # accelerate: --num_processes is the total over all machines
    cmd = [_program(bin_dir, "accelerate"), "launch"]
    if gpus * nodes > 1:
        cmd.append("--multi_gpu")
    cmd += ["--num_processes", str(gpus * nodes), "--num_machines", str(nodes)]
    if nodes > 1:
        if node_rank is None:
            raise LaunchError(f"accelerate with nodes={nodes} needs this node's node_rank")
        cmd += [
            "--machine_rank",
            str(node_rank),
            "--main_process_ip",
            str(master_addr),
            "--main_process_port",
            str(master_port),
        ]
    # The training loop manages precision itself; say so instead of letting accelerate guess.
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no"]
    return cmd + tail


# Kubernetes -----------------------------------------------------------------------------------
def _env_list(env: Mapping[str, str] | None) -> list[dict[str, str]]:
    out = []
    for name, value in (env or {}).items():
        if not _ENV_NAME_RE.match(str(name)):
            raise LaunchError(f"invalid environment variable name {name!r}")
        out.append({"name": str(name), "value": str(value)})
    return out


def _k8s_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _K8S_NAME_RE.match(name) or len(name) > 253:
        raise LaunchError(f"{kind} must be a Kubernetes name (lowercase alphanumerics and '-'), got {name!r}")
    return name


def _quantity(kind: str, value: str | None) -> str | None:
    if value is None:
        return None
    if not _QUANTITY_RE.match(str(value)):
        raise LaunchError(f"{kind} must be a Kubernetes quantity such as '8', '500m', '32Gi', got {value!r}")
    return str(value)


def k8s_pod_spec_for_training(
    image: str,
    gpus: int = 1,
    *,
    command: Sequence[str] | None = None,
    env: Mapping[str, str] | None = None,
    secret_env: Sequence[str] = (),
    config_map_env: Sequence[str] = (),
    cpu: str | None = None,
    memory: str | None = None,
    shm_size: str | None = "16Gi",
    node_selector: Mapping[str, str] | None = None,
    gpu_toleration: bool = True,
    service_account_name: str | None = None,
    image_pull_secrets: Sequence[str] = (),
    container_name: str = "training",
    volumes: Sequence[Mapping] = (),
    volume_mounts: Sequence[Mapping] = (),
) -> dict:
    """A PodSpec (camelCase, as the Kubernetes API writes it) for one training pod.

    The first (only) container asks for `gpus` GPUs through the `nvidia.com/gpu` limit (the NVIDIA
    device plugin's resource), takes its environment from the named Secrets / ConfigMaps (`envFrom`:
    AWS credentials, MAL_CLIENT_ID, ANIME_PIPELINE_S3_*) plus plain `env`, and mounts a memory-backed
    `/dev/shm` (DataLoader workers and NCCL need more than the 64 MiB default). `restartPolicy: Never`:
    a failed fine-tune fails the Dagster step instead of restarting silently. Pass it as
    `PipesK8sClient.run(base_pod_spec=…)`; the client adds the Pipes environment to this container.
    """
    if not isinstance(image, str) or not image.strip() or any(c.isspace() for c in image):
        raise LaunchError(f"image must be an image reference, got {image!r}")
    gpus = _count("gpus", gpus, minimum=0)
    _k8s_name("container_name", container_name)
    limits: dict[str, str] = {}
    requests: dict[str, str] = {}
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    if (c := _quantity("cpu", cpu)) is not None:
        requests["cpu"] = c
    if (m := _quantity("memory", memory)) is not None:
        requests["memory"] = m
        limits["memory"] = m
    resources: dict[str, dict[str, str]] = {}
    if limits:
        resources["limits"] = limits
    if requests:
        resources["requests"] = requests

    container: dict = {"name": container_name, "image": image.strip(), "imagePullPolicy": "IfNotPresent"}
    if command is not None:
        if not command or not all(isinstance(a, str) for a in command):
            raise LaunchError("command must be a non-empty list of strings")
        container["command"] = list(command)
    if env:
        container["env"] = _env_list(env)
    env_from = [{"secretRef": {"name": _k8s_name("secret_env", s)}} for s in secret_env]
    env_from += [{"configMapRef": {"name": _k8s_name("config_map_env", c)}} for c in config_map_env]
    if env_from:
        container["envFrom"] = env_from
    if resources:
        container["resources"] = resources

    pod_volumes = [dict(v) for v in volumes]
    mounts = [dict(v) for v in volume_mounts]
    if shm_size is not None:
        pod_volumes.append(
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": _quantity("shm_size", shm_size)}}
        )
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
    if mounts:
        container["volumeMounts"] = mounts

    spec: dict = {"restartPolicy": "Never", "containers": [container]}
    if pod_volumes:
        spec["volumes"] = pod_volumes
    if gpus and gpu_toleration:
        spec["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    if node_selector:
        spec["nodeSelector"] = {str(k): str(v) for k, v in node_selector.items()}
    if service_account_name:
        spec["serviceAccountName"] = _k8s_name("service_account_name", service_account_name)
    if image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": _k8s_name("image_pull_secrets", s)} for s in image_pull_secrets]
    return spec


# ECS ------------------------------------------------------------------------------------------
def ecs_run_task_params(
    cluster: str,
    task_definition: str,
    gpus: int = 1,
    *,
    container_name: str = "training",
    command: Sequence[str] | None = None,
    environment: Mapping[str, str] | None = None,
    launch_type: Literal["EC2", "EXTERNAL"] | None = "EC2",
    capacity_provider: str | None = None,
    subnets: Sequence[str] = (),
    security_groups: Sequence[str] = (),
    assign_public_ip: bool = False,
    cpu: int | None = None,
    memory_mib: int | None = None,
    tags: Mapping[str, str] | None = None,
    started_by: str = "dagster-anime-pipeline",
) -> dict:
    """Keyword arguments for boto3 `ecs.run_task`: one task whose `container_name` container gets `gpus` GPUs.

    GPUs on ECS need EC2 (or EXTERNAL) capacity with GPU instances; Fargate has none, so it is refused.
    Pass either `launch_type` or a `capacity_provider` (a GPU Auto Scaling group provider), not both.
    `resourceRequirements` in the container override reserves the GPUs for this run (it overrides the
    task definition's). Secrets (AWS keys, MAL_CLIENT_ID) belong in the task definition's `secrets`
    (Secrets Manager / SSM ARNs), never here: these parameters end up in the ECS API and Dagster logs.
    `PipesECSClient.run(run_task_params=…)` adds the Pipes environment to every container override.
    """
    for name, value in (
        ("cluster", cluster),
        ("task_definition", task_definition),
        ("container_name", container_name),
    ):
        if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
            raise LaunchError(f"{name} must be a non-empty name or ARN, got {value!r}")
    gpus = _count("gpus", gpus, minimum=0)
    if launch_type is not None and capacity_provider is not None:
        raise LaunchError("pass launch_type or capacity_provider, not both (set launch_type=None)")
    if launch_type is None and capacity_provider is None:
        raise LaunchError("one of launch_type or capacity_provider is required")
    if launch_type is not None and launch_type not in ("EC2", "EXTERNAL"):
        raise LaunchError(f"launch_type must be EC2 or EXTERNAL (Fargate has no GPUs), got {launch_type!r}")

    override: dict = {"name": container_name}
    if command is not None:
        if not command or not all(isinstance(a, str) for a in command):
            raise LaunchError("command must be a non-empty list of strings")
        override["command"] = list(command)
    if environment:
        override["environment"] = _env_list(environment)
    if gpus:
        override["resourceRequirements"] = [{"type": "GPU", "value": str(gpus)}]
    if cpu is not None:
        override["cpu"] = _count("cpu", cpu, minimum=1)
    if memory_mib is not None:
        override["memory"] = _count("memory_mib", memory_mib, minimum=1)

    params: dict = {
        "cluster": cluster,
        "taskDefinition": task_definition,
        "count": 1,
        "startedBy": started_by,
        "overrides": {"containerOverrides": [override]},
    }
    if launch_type is not None:
        params["launchType"] = launch_type
    else:
        params["capacityProviderStrategy"] = [{"capacityProvider": capacity_provider, "weight": 1, "base": 1}]
    if subnets:
        params["networkConfiguration"] = {
            "awsvpcConfiguration": {
                "subnets": list(subnets),
                "securityGroups": list(security_groups),
                "assignPublicIp": "ENABLED" if assign_public_ip else "DISABLED",
            }
        }
    elif security_groups:
        raise LaunchError("security_groups need subnets (awsvpc network mode)")
    if tags:
        params["tags"] = [{"key": str(k), "value": str(v)} for k, v in tags.items()]
    return params
