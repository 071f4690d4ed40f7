"""anime_pipeline: first-episode video + synopsis dataset and SmolVLM2 fine-tuning, orchestrated by Dagster."""

__version__ = "0.1.0"
