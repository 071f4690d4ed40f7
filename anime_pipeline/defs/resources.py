"""Resources: small interfaces configured from environment variables, resolved in one place.

`pipeline` carries the data dir, profile and model; `catalog_api` carries the HTTP settings and the
MAL client id (a secret, read through `dg.EnvVar` and never logged); `pipes_client` launches the
training process (a subprocess locally; see docs/DEPLOYMENT.md for the K8s / ECS Pipes clients).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from anime_pipeline.settings import Settings


class PipelineResource(dg.ConfigurableResource):
    """Where data lives and which profile/model a run uses."""

    home: str = Field(description="Data dir (ANIME_PIPELINE_HOME); every stage reads and writes under it.")
    profile: str = Field(default="demo", description="`demo` (offline, bundled) or `live` (real catalog APIs).")
    base_model: Optional[str] = Field(
        default=None,
        description="Model id or local dir (ANIME_PIPELINE_BASE_MODEL). Unset: tiny local model in demo, "
        "HuggingFaceTB/SmolVLM2-500M-Video-Instruct in live.",
    )
    catalog: str = Field(default="shikimori", description="Title catalog for live runs: shikimori | anilist.")
    episode_source: Optional[str] = Field(
        default=None, description="Episode source: demo | local | manifest. Unset: demo in demo, local in live."
    )
    video_dir: Optional[str] = Field(default=None, description="Folder of episodes you already have (local source).")
    manifest: Optional[str] = Field(
        default=None, description="CSV/YAML of mal_id,url[,episode] you may download (manifest source)."
    )

    s3_bucket: Optional[str] = Field(
        default=None, description="Also publish frame shards to this S3 bucket (ANIME_PIPELINE_S3_BUCKET); unset: local only."
    )
    s3_prefix: str = Field(default="", description="Key prefix inside the bucket (ANIME_PIPELINE_S3_PREFIX).")
    s3_endpoint_url: Optional[str] = Field(
        default=None, description="S3-compatible endpoint (ANIME_PIPELINE_S3_ENDPOINT_URL); unset: AWS."
    )

    s3_region: Optional[str] = Field(default=None, description="Bucket region (ANIME_PIPELINE_S3_REGION); unset: us-east-1.")

    def object_store(self):
        """The S3 mirror of the data dir, or None when no bucket is configured (credentials: AWS chain)."""
        if not self.s3_bucket:
            return None
        from anime_pipeline.storage import ObjectStore

        kw = {"region": self.s3_region} if self.s3_region else {}
        return ObjectStore(bucket=self.s3_bucket, prefix=self.s3_prefix, endpoint_url=self.s3_endpoint_url, **kw)

    def settings(self) -> Settings:
        return Settings(
            home=Path(self.home).expanduser().resolve(),
            profile=self.profile,
            base_model=self.base_model,
            catalog=self.catalog,
            episode_source=self.episode_source,
            video_dir=Path(self.video_dir).expanduser().resolve() if self.video_dir else None,
            manifest=Path(self.manifest).expanduser().resolve() if self.manifest else None,
        )


class CatalogApiResource(dg.ConfigurableResource):
    """The catalog and synopsis HTTP APIs (base URLs overridable for mirrors and test servers)."""

    shikimori_url: str = Field(default=Settings.shikimori_url, description="Shikimori GraphQL endpoint.")
    anilist_url: str = Field(default=Settings.anilist_url, description="AniList GraphQL endpoint.")
    mal_url: str = Field(default=Settings.mal_url, description="MyAnimeList API v2 base URL.")
    jikan_url: str = Field(default=Settings.jikan_url, description="Jikan v4 base URL.")
    user_agent: str = Field(default=Settings.user_agent, description="User-Agent naming the app and a contact.")
    mal_client_id: Optional[str] = Field(
        default=None, description="MAL API client id (secret, MAL_CLIENT_ID). Unset: MAL is skipped, Jikan used."
    )
    read_timeout_s: float = Field(default=30.0, description="Read timeout per request, seconds.")
    connect_timeout_s: float = Field(default=10.0, description="Connect timeout per request, seconds.")
    total_retries: int = Field(default=5, description="Retries on 429/5xx per request (honours Retry-After).")
    cache: bool = Field(default=True, description="Cache responses on disk under <home>/http-cache.")


def build_resources(env: dict[str, str] | None = None, settings: Settings | None = None) -> dict[str, object]:
    """The resource wiring for the current environment (the only place the environment is read).

    `settings` overrides what the environment says (tests and the CLI pass their own).
    """
    env = dict(os.environ if env is None else env)
    s = settings or Settings.from_env(env)
    catalog_kwargs = dict(
        shikimori_url=s.shikimori_url,
        anilist_url=s.anilist_url,
        mal_url=s.mal_url,
        jikan_url=s.jikan_url,
        user_agent=s.user_agent,
    )
    if env.get("MAL_CLIENT_ID"):
        catalog_kwargs["mal_client_id"] = dg.EnvVar("MAL_CLIENT_ID")
    return {
        "pipeline": PipelineResource(
            home=str(s.home),
            profile=s.profile,
            base_model=s.base_model,
            catalog=s.catalog,
            episode_source=s.episode_source,
            video_dir=str(s.video_dir) if s.video_dir else None,
            manifest=str(s.manifest) if s.manifest else None,
            s3_bucket=env.get("ANIME_PIPELINE_S3_BUCKET") or None,
            s3_prefix=env.get("ANIME_PIPELINE_S3_PREFIX", ""),
            s3_endpoint_url=env.get("ANIME_PIPELINE_S3_ENDPOINT_URL") or None,
            s3_region=env.get("ANIME_PIPELINE_S3_REGION") or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
        ),
        "catalog_api": CatalogApiResource(**catalog_kwargs),
        "pipes_client": dg.PipesSubprocessClient(),
    }
