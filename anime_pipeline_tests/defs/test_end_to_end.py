"""The whole graph on the demo profile, in a temp data dir, through the same entry point as ./scripts/demo."""

import io

import dagster as dg
import polars as pl
import pytest

from anime_pipeline.cli import run_all
from anime_pipeline.demo import DEMO_TITLE_COUNT
from anime_pipeline.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e") / "data"
    settings = Settings.from_env({"ANIME_PIPELINE_HOME": str(home)})
    out = io.StringIO()
    with dg.instance_for_test() as instance:
        summary = run_all(settings, out=out, instance=instance)
        yield settings, instance, summary, out.getvalue()


def test_every_stage_succeeded(demo_run):
    _, _, summary, log = demo_run
    assert "FAIL" not in log, log
    assert summary["titles"] == DEMO_TITLE_COUNT
    assert summary["failed_titles"] == []


def test_runs_belong_to_the_projects_jobs_and_re_execute(demo_run, monkeypatch):
    """The demo launches catalog_job, media_job per title and training_job (no ephemeral asset job), so the
    UI's Jobs page lists them and Re-execute works: a re-execution of the catalog run succeeds."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    from anime_pipeline.cli import REPO_ROOT

    s, instance, _, _ = demo_run
    runs = instance.get_runs()
    names = [r.job_name for r in runs]
    assert sorted(set(names)) == ["catalog_job", "media_job", "training_job"]
    assert names.count("media_job") == DEMO_TITLE_COUNT
    (catalog_run,) = [r for r in runs if r.job_name == "catalog_job"]
    monkeypatch.setenv("ANIME_PIPELINE_HOME", str(s.home))  # the code location the UI would load
    job = ReconstructableRepository.for_module(
        "anime_pipeline.definitions", "defs", working_directory=str(REPO_ROOT)
    ).get_reconstructable_job("catalog_job")
    result = dg.execute_job(
        job, instance=instance, reexecution_options=dg.ReexecutionOptions(catalog_run.run_id)
    )
    assert result.success
    assert instance.get_run_by_id(result.run_id).parent_run_id == catalog_run.run_id


def test_catalog_outputs(demo_run):
    s, *_ = demo_run
    titles = pl.read_parquet(s.catalog_dir / "titles.parquet")
    synopses = pl.read_parquet(s.catalog_dir / "synopses.parquet")
    assert titles.height == synopses.height == DEMO_TITLE_COUNT
    assert titles["mal_id"].n_unique() == DEMO_TITLE_COUNT


def test_frames_per_title(demo_run):
    s, instance, *_ = demo_run
    frames = pl.scan_parquet(str(s.frames_dir / "**" / "*.parquet"), hive_partitioning=True).collect()
    per_title = frames.group_by("mal_id").len()
    assert per_title.height == DEMO_TITLE_COUNT
    assert set(per_title["len"].to_list()) == {8}
    assert instance.get_materialized_partitions(dg.AssetKey("frame_shards")) == set(
        instance.get_dynamic_partitions("mal_ids")
    )


def test_split_is_disjoint_by_title_and_complete(demo_run):
    s, *_ = demo_run
    train = pl.read_parquet(s.splits_dir / "train.parquet")
    val = pl.read_parquet(s.splits_dir / "val.parquet")
    assert set(train["mal_id"]).isdisjoint(set(val["mal_id"]))
    assert train.height + val.height == DEMO_TITLE_COUNT
    assert val.height >= 2


def test_adapter_loads_with_peft(demo_run):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    s, _, summary, _ = demo_run
    adapter = summary["adapter"]
    assert (s.home / "models").exists() and adapter
    base = AutoModelForImageTextToText.from_pretrained(s.tiny_model_dir)
    model = PeftModel.from_pretrained(base, adapter)
    assert any("lora_" in n for n, _ in model.named_parameters())


def test_eval_metrics_present(demo_run):
    _, instance, summary, _ = demo_run
    md = instance.get_latest_materialization_event(dg.AssetKey("caption_eval")).asset_materialization.metadata
    for key in (
        "val_loss_base",
        "val_loss_finetuned",
        "bleu_finetuned",
        "rouge_l_finetuned",
        "cider_finetuned",
    ):
        assert key in md, key
    captions = pl.read_parquet(str(summary["eval"]))
    assert captions.height >= 2
    assert {"reference", "caption_base", "caption_finetuned"} <= set(captions.columns)


def test_lineage_metadata_of_adapter(demo_run):
    _, instance, *_ = demo_run
    md = instance.get_latest_materialization_event(
        dg.AssetKey("finetuned_adapter")
    ).asset_materialization.metadata
    for key in ("base_model", "data_version", "code_version", "git_commit", "hyperparameters", "adapter_mb"):
        assert key in md, key
    assert md["adapter_mb"].value > 0
    assert md["base_model_revision"].value.startswith("local:")  # the demo's tiny model dir, content-hashed
    hp = {r.data["name"]: r.data["value"] for r in md["hyperparameters"].records}  # a name | value table
    assert hp["lora_r"] == 16


def test_checks_passed(demo_run):
    _, instance, *_ = demo_run
    for asset, check in [
        ("titles", "titles_unique_mal_ids"),
        ("synopses", "synopses_clean"),
        ("train_val_split", "split_disjoint_by_title"),
        ("train_val_split", "samples_well_formed"),
    ]:
        key = dg.AssetCheckKey(dg.AssetKey(asset), check)
        rec = instance.event_log_storage.get_latest_asset_check_execution_by_key([key]).get(key)
        assert rec is not None and rec.status.value == "SUCCEEDED", (check, rec)


def test_training_learns_the_demo_task(demo_run):
    """Proof that it learns: the captions depend on the frames' colours, which only the frames show."""
    _, _, summary, _ = demo_run
    assert summary["val_loss_finetuned"] < 0.5 * summary["val_loss_base"]
    # Chance of naming both scene colours (ordered pair of 6) is 1/30.
    assert summary["content_score_finetuned"] >= 0.5
    assert summary["content_score_base"] <= 0.2


def test_dataset_release_loads_with_hf_datasets(demo_run, tmp_path, monkeypatch):
    import datasets

    s, *_ = demo_run
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    ds = datasets.load_dataset(str(s.home / "release"))
    train = pl.read_parquet(s.splits_dir / "train.parquet")
    val = pl.read_parquet(s.splits_dir / "val.parquet")
    assert ds["train"].num_rows == train.height and ds["validation"].num_rows == val.height
    row = ds["validation"][0]
    assert len(row["frames"]) == 8 and row["frames"][0].size[0] > 0


def test_model_card_in_adapter_dir(demo_run):
    import yaml

    _, _, summary, _ = demo_run
    from pathlib import Path

    card = (Path(summary["adapter"]) / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft"
    metrics = {m["type"]: m["value"] for m in front["model-index"][0]["results"][0]["metrics"]}
    assert metrics["val_loss"] == pytest.approx(
        summary["val_loss_finetuned"], abs=1e-4
    )  # metadata: 4 decimals
    assert "data_version" in card.lower().replace(" ", "_") or "data version" in card.lower()
    assert "huggingface.co//" not in card
