import subprocess
import sys
from pathlib import Path

import dagster as dg

from anime_pipeline.definitions import defs

REPO = Path(__file__).resolve().parents[2]
CONTRACT = {
    "titles": "catalog",
    "synopses": "catalog",
    "episodes": "media",
    "frame_shards": "media",
    "train_val_split": "dataset",
    "dataset_export": "dataset",
    "finetuned_adapter": "training",
    "caption_eval": "evaluation",
}


def test_all_assets_exist_with_their_groups():
    graph = defs.resolve_asset_graph()
    for key, group in CONTRACT.items():
        node = graph.get(dg.AssetKey(key))
        assert node.group_name == group, key


def test_every_asset_has_description_code_version_and_kinds():
    graph = defs.resolve_asset_graph()
    for key in CONTRACT:
        node = graph.get(dg.AssetKey(key))
        assert node.description and len(node.description) > 40, key
        assert node.code_version, key
        assert node.kinds, key


def test_media_assets_are_partitioned_by_mal_id_and_training_uses_gpu_pool():
    graph = defs.resolve_asset_graph()
    for key in ("episodes", "frame_shards"):
        pd = graph.get(dg.AssetKey(key)).partitions_def
        assert isinstance(pd, dg.DynamicPartitionsDefinition) and pd.name == "mal_ids"
    assets = {a.key.to_user_string(): a for a in defs.assets if isinstance(a, dg.AssetsDefinition)}
    for key in ("finetuned_adapter", "caption_eval"):
        op = assets[key].op
        assert op.pool == "gpu", key


def test_lineage_edges():
    graph = defs.resolve_asset_graph()
    parents = lambda k: {p.to_user_string() for p in graph.get(dg.AssetKey(k)).parent_keys}  # noqa: E731
    assert parents("titles") == {"anime_catalog_api"}
    assert parents("synopses") == {"titles"}
    assert parents("episodes") == {"synopses"}
    assert parents("frame_shards") == {"episodes"}
    assert parents("train_val_split") == {"titles", "synopses", "frame_shards"}
    assert parents("finetuned_adapter") == {"train_val_split"}
    assert parents("caption_eval") == {"finetuned_adapter"}


def test_dagster_definitions_validate():
    out = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_catalog_resource_timeouts_reach_the_http_client(tmp_path):
    from anime_pipeline.defs.catalog import make_http_client
    from anime_pipeline.defs.resources import CatalogApiResource
    from anime_pipeline.settings import Settings

    api = CatalogApiResource(
        user_agent="my-team-dataset/1.0 (me@example.org)",
        connect_timeout_s=3.0,
        read_timeout_s=4.0,
        body_timeout_s=5.0,
        total_retries=2,
        cache=False,
    )
    with make_http_client(api, Settings.from_env({"ANIME_PIPELINE_HOME": str(tmp_path)})) as client:
        cfg = client.config
        assert (cfg.connect_timeout, cfg.read_timeout, cfg.body_timeout, cfg.total_retries) == (
            3.0,
            4.0,
            5.0,
            2,
        )
        assert cfg.cache_dir is None
        adapter = client.session.get_adapter("https://shikimori.one/api/graphql")
        assert adapter._body_timeout == 5.0  # the deadline the adapter enforces on every body
