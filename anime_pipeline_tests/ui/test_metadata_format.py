"""What the UI will show, checked on the metadata values themselves (no browser): tables with schemas,
short inline values, rounded numbers with units, readable progress lines."""

import io
import json

import dagster as dg
import polars as pl
import pytest
from PIL import Image

from anime_pipeline import schemas
from anime_pipeline.defs import _meta
from anime_pipeline.progress import format_event


def test_column_schema_describes_every_column():
    ts = _meta.column_schema(schemas.TITLES)
    assert [c.name for c in ts.columns] == list(schemas.TITLES)
    by_name = {c.name: c for c in ts.columns}
    assert by_name["genres"].type == "list[string]" and by_name["score"].type == "float64"
    for schema in (schemas.TITLES, schemas.SYNOPSES, schemas.FRAMES, schemas.SAMPLES, schemas.REJECTED):
        missing = [c.name for c in _meta.column_schema(schema).columns if not c.description]
        assert not missing, missing


def test_table_metadata_has_schema_and_row_counts():
    md = _meta.table_metadata(schemas.FRAMES, 192, partition_row_count=8)
    assert isinstance(md["dagster/column_schema"], dg.TableSchema)
    assert md["dagster/row_count"] == 192 and md["dagster/partition_row_count"] == 8
    # Dagster accepts it as materialization metadata
    dg.MaterializeResult(metadata=md)


def test_preview_table_shortens_rounds_and_joins():
    df = pl.DataFrame(
        {
            "mal_id": [1, 2],
            "score": [7.695416618795956, 8.0],
            "genres": [["a", "b"], []],
            "synopsis": ["word " * 100, None],
            "image": [b"\xff" * 10, b""],
        }
    )
    v = _meta.preview_table(df, max_chars=40)
    assert isinstance(v, dg.TableMetadataValue)
    rows = [r.data for r in v.records]
    assert rows[0]["score"] == 7.695 and rows[0]["genres"] == "a, b"
    assert len(rows[0]["synopsis"]) == 40 and rows[0]["synopsis"].endswith("…")
    assert rows[1]["synopsis"] is None and rows[0]["image"] == "<10 bytes>"
    long_word = _meta.preview_table(pl.DataFrame({"caption": ["At" * 200]})).records[0].data["caption"]
    assert len(long_word) == _meta.MAX_WORD_CHARS  # cut, so the cell can wrap inside the panel
    assert [c.name for c in v.schema.columns] == df.columns


def test_numbers_rounded_with_units():
    assert _meta.rounded(7.695416618795956) == 7.695
    assert _meta.rounded(0.000123456) == 0.0001235
    assert _meta.rounded(float("nan")) is None
    assert _meta.mb(772538368) == 772.54 and _meta.mb(4123) == 0.00412 and _meta.mb(0) == 0.0
    assert _meta.seconds(3.14159) == 3.14 and _meta.seconds(123.456) == 123.5


def _png(w, h):
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(buf, format="JPEG")
    return buf.getvalue()


def test_frames_sheet_fits_the_panel_and_image_has_caption():
    frames = [_png(512, 288)] * 8
    png = _meta.frames_sheet(frames, [1.0 + i for i in range(8)])
    img = Image.open(io.BytesIO(png))
    assert img.width <= _meta.MAX_IMAGE_WIDTH_PX and img.height < 500
    md = _meta.image_md(png, "Blue Meadow (MAL 990001): 8 frames")
    assert md.value.startswith("**Blue Meadow (MAL 990001): 8 frames**\n\n![")


def test_training_metadata_tables_and_units():
    reported = {
        "steps": 120,
        "total_steps": 120,
        "epochs": 60.00000001,
        "train_samples": 8,
        "val_samples": 6,
        "loss_start": 6.123456789,
        "loss_end": 0.412345678,
        "val_loss_before": 6.2,
        "val_loss_after": 0.51234,
        "samples_per_s": 41.23456,
        "train_seconds": 12.3456,
        "peak_memory_bytes": 772538368,
        "peak_memory_kind": "cpu_max_rss",
        "device": "cpu",
        "dtype": "float32",
        "adapter_bytes": 1234,
        "params_vision_trainable": 0,
        "params_vision_frozen": 100,
        "params_text_trainable": 10,
        "params_text_frozen": 90,
        "params_total_trainable": 10,
        "params_total_frozen": 190,
        "trainable_params": 10,
        "frozen_params": 190,
        "worker_data_dir": "/tmp/x",
    }
    md = _meta.training_metadata(
        {k: dg.MetadataValue.text(v) if isinstance(v, str) else v for k, v in reported.items()},
        {"lr": 0.003, "lora_r": 16, "max_length": None},
    )
    assert md["peak_memory_mb"] == 772.54 and md["train_compute_s"] == 12.35 and md["epochs"] == 60.0
    assert md["samples_per_s"] == 41.23 and md["device"] == "cpu (float32)"
    assert not any(k.startswith("params_") or k.endswith("_bytes") for k in md)
    losses = {r.data["loss"]: r.data for r in md["losses"].records}
    assert losses["val"]["after"] == 0.5123
    comps = [r.data["component"] for r in md["parameters"].records]
    assert comps[-1] == "total" and set(comps) == {"vision", "text", "total"}
    assert md["worker_data_dir"] == "/tmp/x"
    # the hyperparameters table reads back as the dict (lineage for the model card)
    assert _meta.plain({"hyperparameters": md["hyperparameters"]})["hyperparameters"] == {
        "lr": 0.003,
        "lora_r": 16,
        "max_length": None,
    }
    dg.MaterializeResult(metadata=md)


def test_eval_metadata_one_table_and_every_title():
    metrics = {
        "val_loss_base": 6.123456,
        "val_loss_finetuned": 0.5,
        "bleu_base": 0.0,
        "bleu_finetuned": 12.3456,
        "content_score_base": 0.0,
        "content_score_finetuned": 1.0,
    }
    captions = pl.DataFrame(
        {
            "mal_id": [3, 1, 2],
            "name": ["C", "A", None],
            "reference": ["r"] * 3,
            "caption_base": ["b" * 400] * 3,
            "caption_finetuned": ["f"] * 3,
            "content_finetuned": [True, False, True],
        }
    )
    md = _meta.eval_metadata(metrics, captions)
    rows = {r.data["metric"]: r.data for r in md["metrics"].records}
    assert rows["val loss ↓"]["change"] == pytest.approx(-5.6235)
    assert md["val_loss_base"] == 6.1235 and md["bleu_finetuned"] == 12.3456
    titles = [r.data["title"] for r in md["examples"].records if r.data["title"]]
    assert titles == ["A (MAL 1)", "MAL 2", "C (MAL 3)"]  # every validation title, in MAL id order
    assert [r.data["by"] for r in md["examples"].records[:6]] == [
        "reference",
        "base",
        "fine-tuned ✗",
        "reference",
        "base",
        "fine-tuned ✓",
    ]  # MAL 1: False, MAL 2: True
    assert [c.name for c in md["examples"].schema.columns] == ["title", "by", "text"]
    texts = [r.data["text"] for r in md["examples"].records]
    assert (
        all(len(t) <= 110 for t in texts)
        and max(len(w) for t in texts for w in t.split()) <= _meta.MAX_WORD_CHARS
    )
    assert [c.name for c in md["metrics"].schema.columns] == ["metric", "base", "fine_tuned", "change"]


def test_progress_line_is_readable_with_rounded_data_beside():
    line = format_event(
        {
            "event": "progress",
            "step": 20,
            "total_steps": 120,
            "loss": 2.314159265358979,
            "lr": 0.0029999999999,
            "samples_per_s": 41.234567,
            "epoch": 3.3333333,
            "elapsed_s": 10.0,
        }
    )
    text, data = line.split("  ", 1)
    assert text == "step 20/120 (17%) · loss 2.314 · lr 3.00e-03 · 41.2 samples/s · epoch 3.3 · ETA 50s"
    parsed = json.loads(data)
    assert parsed["loss"] == 2.314 and parsed["step"] == 20
    assert "2.314159" not in line
    done = format_event(
        {
            "event": "done",
            "steps": 120,
            "loss_end": 0.41234,
            "val_loss_after": 0.51234,
            "train_seconds": 75.0,
            "peak_memory_bytes": 772538368,
        }
    )
    assert done.startswith(
        "training done: 120 steps · final loss 0.4123 · val loss 0.5123 · in 1m15s · peak memory 772.5 MB"
    )
    assert format_event({"event": "other", "x": 1.23456789}) == '{"event": "other", "x": 1.235}'


def test_readable_turns_json_into_tables():
    md = _meta.readable(
        {
            "eval_as_trained": dg.MetadataValue.json({"max_frames": 8, "dtype": "auto"}),
            "eval_skipped": dg.MetadataValue.json([]),
            "loss": 1.23456789,
            "n": 3,
            "rows": [{"mal_id": 1, "error": "too long"}],
            "path": dg.MetadataValue.path("/x"),
        }
    )
    assert {r.data["name"]: r.data["value"] for r in md["eval_as_trained"].records} == {
        "max_frames": 8,
        "dtype": "auto",
    }
    assert md["eval_skipped"] == "none" and md["loss"] == 1.235 and md["n"] == 3
    assert [c.name for c in md["rows"].schema.columns] == ["mal_id", "error"]
    assert isinstance(md["path"], dg.PathMetadataValue)


def test_split_stats_table_is_narrow_and_hyperparameters_keep_whole_values():
    stats = {
        "train": {
            "samples": 5,
            "frames": 40,
            "synopsis_words": {"min": 30, "mean": 30.123456, "p50": 30, "p95": 31, "max": 32},
        },
        "val": {"samples": 3, "frames": 24, "synopsis_words": None},
    }
    t = _meta.split_stats_table(stats)
    assert [c.name for c in t.schema.columns] == ["stat", "train", "val"]
    rows = {r.data["stat"]: r.data for r in t.records}
    assert (
        rows["samples"] == {"stat": "samples", "train": 5, "val": 3} and rows["words mean"]["train"] == 30.1
    )
    hp = {
        "output_dir": "/very/long/" + "x" * 80,
        "lora_target": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj",
        "lr": 1e-4,
    }
    back = _meta.plain({"h": _meta.hyperparameters_table(hp)})["h"]
    assert back == {"lora_target": hp["lora_target"], "lr": 1e-4}  # paths left out, values not shortened
