import pytest

from anime_pipeline.paths import UnsafePathError, atomic_path, safe_component, within
from anime_pipeline.settings import DEFAULT_BASE_MODEL, Settings, SettingsError


def test_defaults_are_demo_and_local_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Settings.from_env({})
    assert s.home == (tmp_path / "data").resolve()
    assert s.profile == "demo"
    assert s.resolved_episode_source == "demo"
    assert s.resolved_base_model == str(s.tiny_model_dir)


def test_live_profile_defaults_to_real_model_and_local_videos(tmp_path):
    s = Settings.from_env({"ANIME_PIPELINE_HOME": str(tmp_path), "ANIME_PIPELINE_PROFILE": "live"})
    assert s.resolved_base_model == DEFAULT_BASE_MODEL
    assert s.resolved_episode_source == "local"


def test_every_variable_is_read(tmp_path):
    env = {
        "ANIME_PIPELINE_HOME": str(tmp_path),
        "ANIME_PIPELINE_PROFILE": "live",
        "ANIME_PIPELINE_BASE_MODEL": "some/model",
        "ANIME_PIPELINE_CATALOG": "anilist",
        "ANIME_PIPELINE_EPISODE_SOURCE": "manifest",
        "ANIME_PIPELINE_VIDEO_DIR": str(tmp_path / "v"),
        "ANIME_PIPELINE_MANIFEST": str(tmp_path / "m.csv"),
        "ANIME_PIPELINE_SHIKIMORI_URL": "http://127.0.0.1:1/graphql",
        "ANIME_PIPELINE_ANILIST_URL": "http://127.0.0.1:2/",
        "ANIME_PIPELINE_MAL_URL": "http://127.0.0.1:3/v2",
        "ANIME_PIPELINE_JIKAN_URL": "http://127.0.0.1:4/v4",
        "ANIME_PIPELINE_USER_AGENT": "test-agent/1 (me@example.org)",
    }
    s = Settings.from_env(env)
    assert (s.base_model, s.catalog, s.resolved_episode_source) == ("some/model", "anilist", "manifest")
    assert s.video_dir == (tmp_path / "v").resolve() and s.manifest == (tmp_path / "m.csv").resolve()
    assert (s.shikimori_url, s.anilist_url, s.mal_url, s.jikan_url) == (
        "http://127.0.0.1:1/graphql",
        "http://127.0.0.1:2/",
        "http://127.0.0.1:3/v2",
        "http://127.0.0.1:4/v4",
    )
    assert s.user_agent == "test-agent/1 (me@example.org)"


@pytest.mark.parametrize("var,value", [("ANIME_PIPELINE_PROFILE", "prod"), ("ANIME_PIPELINE_CATALOG", "mal")])
def test_bad_values_name_the_variable(var, value):
    with pytest.raises(SettingsError, match=var):
        Settings.from_env({var: value})


@pytest.mark.parametrize(
    "hostile",
    [
        "../../etc/passwd",
        "a/b\\c",
        "nul\x00byte",
        "..",
        "",
        "ｆｕｌｌｗｉｄｔｈ/..",
        "進撃の巨人" * 200,
        "-rf",
    ],
)
def test_safe_component_stays_inside_root(tmp_path, hostile):
    name = safe_component(hostile)
    assert name and "/" not in name and "\x00" not in name and name not in (".", "..")
    assert len(name) <= 100
    p = within(tmp_path, name)
    assert tmp_path.resolve() in p.parents


def test_within_rejects_escape(tmp_path):
    with pytest.raises(UnsafePathError):
        within(tmp_path, "../outside")


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "out" / "x.bin"
    with pytest.raises(RuntimeError), atomic_path(final) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("boom")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []
    with atomic_path(final) as tmp:
        tmp.write_bytes(b"whole")
    assert final.read_bytes() == b"whole"
    assert [p.name for p in final.parent.iterdir()] == ["x.bin"]


def test_sweep_stale_temps_removes_only_old_leftovers(tmp_path):
    import os
    import time

    from anime_pipeline.paths import sweep_stale_temps

    final = tmp_path / "part-0.parquet"
    old = tmp_path / ".part-0.parquet.abc.parquet.tmp"
    live = tmp_path / ".part-0.parquet.def.parquet.tmp"
    other = tmp_path / ".part-1.parquet.xyz.parquet.tmp"
    for p in (old, live, other):
        p.write_bytes(b"partial")
    past = time.time() - 7200
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    assert sweep_stale_temps(final) == [old]
    assert live.exists() and other.exists() and not old.exists()


def test_safe_component_keeps_different_titles_apart():
    assert safe_component("12345") == "12345"
    a, b = safe_component("進撃の巨人"), safe_component("鬼滅の刃")
    assert a != b and a.startswith("item-") and b.startswith("item-")
    assert safe_component("a/b") != safe_component("a_b")


def test_deployment_variables_are_read(tmp_path):
    env = {
        "ANIME_PIPELINE_HOME": "s3://anime-data/prod",
        "ANIME_PIPELINE_CACHE_DIR": str(tmp_path / "cache"),
        "ANIME_PIPELINE_S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "ANIME_PIPELINE_S3_REGION": "eu-west-1",
        "ANIME_PIPELINE_GPU_LAUNCHER": "ecs",
        "ANIME_PIPELINE_GPUS": "2",
        "ANIME_PIPELINE_ECS_CLUSTER": "gpu",
        "ANIME_PIPELINE_ECS_TASK_DEFINITION": "train:3",
        "ANIME_PIPELINE_ECS_CONTAINER": "trainer",
        "ANIME_PIPELINE_ECS_SUBNETS": "subnet-a, subnet-b",
        "ANIME_PIPELINE_ECS_SECURITY_GROUPS": "sg-1",
        "ANIME_PIPELINE_ECS_CAPACITY_PROVIDER": "gpu-asg",
        "ANIME_PIPELINE_CATALOG_CRON": "0 4 * * *",
        "ANIME_PIPELINE_CATALOG_SCHEDULE": "off",
        "ANIME_PIPELINE_MEDIA_SENSOR": "off",
        "ANIME_PIPELINE_CATALOG_MAX_RUNTIME_S": "60",
        "ANIME_PIPELINE_TRAINING_CRON": "0 6 * * 1",
        "ANIME_PIPELINE_TRAINING_SCHEDULE": "on",
    }
    s = Settings.from_env(env)
    assert (s.data_uri, s.home, s.s3_endpoint_url, s.s3_region, s.remote) == (
        "s3://anime-data/prod",
        (tmp_path / "cache").resolve(),
        "http://127.0.0.1:9000",
        "eu-west-1",
        True,
    )
    g = s.gpu
    assert (g.launcher, g.gpus, g.ecs_cluster, g.ecs_task_definition, g.ecs_container) == (
        "ecs",
        2,
        "gpu",
        "train:3",
        "trainer",
    )
    assert (g.ecs_subnets, g.ecs_security_groups, g.ecs_capacity_provider) == (
        ("subnet-a", "subnet-b"),
        ("sg-1",),
        "gpu-asg",
    )
    a = s.automation
    assert (a.catalog_cron, a.catalog_schedule, a.media_sensor, a.catalog_max_runtime_s) == (
        "0 4 * * *",
        False,
        False,
        60,
    )
    assert (a.training_cron, a.training_schedule) == ("0 6 * * 1", True)
    k8s = Settings.from_env(
        {
            "ANIME_PIPELINE_HOME": "s3://anime-data",
            "ANIME_PIPELINE_GPU_LAUNCHER": "k8s",
            "ANIME_PIPELINE_GPU_IMAGE": "img:1",
            "ANIME_PIPELINE_K8S_NAMESPACE": "gpu",
            "ANIME_PIPELINE_K8S_SECRETS": "aws",
            "ANIME_PIPELINE_K8S_CONFIG_MAPS": "cfg",
            "ANIME_PIPELINE_K8S_SERVICE_ACCOUNT": "trainer",
        }
    ).gpu
    assert (k8s.image, k8s.k8s_namespace, k8s.k8s_secrets, k8s.k8s_config_maps, k8s.k8s_service_account) == (
        "img:1",
        "gpu",
        ("aws",),
        ("cfg",),
        "trainer",
    )
    local = Settings.from_env({"ANIME_PIPELINE_HOME": str(tmp_path)})
    assert (local.data_uri, local.store_uri, local.remote) == (None, str(tmp_path.resolve()), False)
