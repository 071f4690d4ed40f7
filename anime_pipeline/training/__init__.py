"""SmolVLM2 video-caption fine-tuning (LoRA / DoRA / QLoRA) — the pure training package.

No Dagster import here (the CLI entry point uses `dagster_pipes` only when launched under Pipes).

Modules:
  prompt         transformers' SmolVLM video prompt, frames as images, rendered with the hub template
  processor      `load_processor()`: tokenizer + PIL image processor pair (no torchvision needed)
  collator       `VideoSFTCollator` (labels = answer + closing <end_of_utterance>, no silent
                 truncation), `VideoPromptCollator` (generation, left padding)
  data           `ShardVideoDataset` (SAMPLES rows + FRAMES shards), `make_dataloader()`
  model          `load_for_training()`, `param_report()`, `answer_loss()`
  feature_cache  post-connector vision features cached as safetensors
  config         `TrainConfig`, `TrainResult`, `run_name()` (data version + config hash) (torch-free)
  train          `train(cfg, reporter)`: on `transformers.Trainer` (resumable, data-parallel under torchrun); the
                 stable call for launchers (`anime_pipeline.gpu_job`, `python -m anime_pipeline.training`)
  inference      `load_model()`, `generate_captions()`, `compute_loss()`
  tiny           `build_tiny_model()`: random-init tiny SmolVLM for the demo profile and tests
  __main__       `python -m anime_pipeline.training --config train.json [--<field> value ...]`
"""
