import numpy as np
import yaml

from anime_pipeline.evaluation.model_card import ModelCardInfo, render_model_card, write_model_card


def info(**kw):
    base = dict(
        model_name="smolvlm2-anime-lora",
        base_model="HuggingFaceTB/SmolVLM2-256M-Video-Instruct",
        train_samples=90,
        val_samples=10,
        hyperparameters={"learning_rate": 1e-4, "epochs": 3, "lora_r": 16, "lora_alpha": 32, "target": "q|v"},
        base_metrics={"bleu": 1.5, "rouge_l": 0.12, "cider": np.float64(0.05), "content": 0.0},
        finetuned_metrics={"bleu": 8.25, "rouge_l": 0.31, "cider": np.float32(0.42), "content": 0.7},
        data_version="sha256:abc",
        code_version="0.1.0",
        git_commit="31172a8",
        datasets=["someone/anime-first-episodes"],
        synopsis_sources={"mal": 60, "anilist": 40},
        catalog_sources={"shikimori": 100},
        frames_per_sample=8,
        excluded_titles=4,
    )
    base.update(kw)
    return ModelCardInfo(**base)


def split_card(text):
    assert text.startswith("---\n")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_front_matter_parses():
    meta, _body = split_card(render_model_card(info()))
    assert meta["base_model"] == "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
    assert meta["library_name"] == "peft"
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert meta["tags"] == ["lora", "smolvlm2", "video-captioning", "anime_pipeline"]
    assert meta["datasets"] == ["someone/anime-first-episodes"]
    (entry,) = meta["model-index"]
    assert entry["name"] == "smolvlm2-anime-lora"
    metrics = {m["type"]: m["value"] for m in entry["results"][0]["metrics"]}
    assert metrics["bleu"] == 8.25 and abs(metrics["cider"] - 0.42) < 1e-6
    assert entry["results"][0]["dataset"]["split"] == "validation"


def test_sections_and_tables():
    _, body = split_card(render_model_card(info()))
    for heading in (
        "## Model description",
        "## Training data",
        "## Training settings",
        "## Metrics",
        "## Lineage",
        "## Limitations",
    ):
        assert heading in body
    assert "| learning_rate | 0.0001 |" in body
    assert "q\\|v" in body  # pipes escaped in tables
    assert "| BLEU | 1.5 | 8.25 | 6.75 |" in body
    assert "31172a8" in body and "sha256:abc" in body
    assert "anilist: 40, mal: 60" in body


def test_missing_values_render(tmp_path):
    card = render_model_card(
        info(
            datasets=[],
            git_commit=None,
            base_metrics={},
            finetuned_metrics={"bleu": None},
            hyperparameters={},
        )
    )
    meta, _body = split_card(card)
    assert "datasets" not in meta
    assert "model-index" not in meta  # the Hub requires metrics in a model-index entry: none recorded, none
    path = write_model_card(tmp_path / "adapter", info())
    assert path == tmp_path / "adapter" / "README.md"
    assert path.read_text(encoding="utf-8") == render_model_card(info())
    assert [p.name for p in (tmp_path / "adapter").iterdir()] == ["README.md"]


def test_the_hub_library_reads_the_card_back(tmp_path):
    from huggingface_hub import ModelCard

    path = write_model_card(tmp_path / "adapter", info())
    card = ModelCard.load(path)
    assert card.data.base_model == "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
    assert card.data.model_name == "smolvlm2-anime-lora"
    results = {r.metric_type: r for r in card.data.eval_results}
    assert sorted(results) == ["bleu", "cider", "content", "rouge_l"]
    assert results["bleu"].metric_value == 8.25 and results["bleu"].dataset_split == "validation"
    assert results["rouge_l"].metric_name == "ROUGE-L (F)"
    assert card.text.lstrip().startswith("# smolvlm2-anime-lora")
