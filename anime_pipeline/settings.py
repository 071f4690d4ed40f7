"""Environment-driven settings, resolved in exactly one place.

Every variable is documented in README.md ("Environment variables"). Nothing here touches the
network or the disk at import time; `Settings.from_env()` reads the environment when called.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_BASE_MODEL = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
PROFILES = ("demo", "live")
CATALOGS = ("shikimori", "anilist")
EPISODE_SOURCES = ("demo", "local", "manifest")


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the variable."""


def _choice(env: dict[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in allowed:
        raise SettingsError(f"{name}={value!r} is not one of {', '.join(allowed)}")
    return value


@dataclass(frozen=True)
class Settings:
    home: Path
    profile: str = "demo"
    base_model: str | None = None  # None: demo → tiny local model, live → DEFAULT_BASE_MODEL
    catalog: str = "shikimori"
    episode_source: str | None = None  # None: demo profile → "demo", live → "local"
    video_dir: Path | None = None
    manifest: Path | None = None
    shikimori_url: str = "https://shikimori.one/api/graphql"
    anilist_url: str = "https://graphql.anilist.co"
    mal_url: str = "https://api.myanimelist.net/v2"
    jikan_url: str = "https://api.jikan.moe/v4"
    user_agent: str = "anime_pipeline/0.1 (+https://github.com/anime-pipeline; contact: set ANIME_PIPELINE_USER_AGENT)"
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if env is None else env)
        home = Path(env.get("ANIME_PIPELINE_HOME", "./data")).expanduser().resolve()
        profile = _choice(env, "ANIME_PIPELINE_PROFILE", "demo", PROFILES)
        source = env.get("ANIME_PIPELINE_EPISODE_SOURCE")
        if source:
            source = _choice(env, "ANIME_PIPELINE_EPISODE_SOURCE", "demo", EPISODE_SOURCES)
        video_dir = env.get("ANIME_PIPELINE_VIDEO_DIR")
        manifest = env.get("ANIME_PIPELINE_MANIFEST")
        kw = {}
        for attr, var in (
            ("shikimori_url", "ANIME_PIPELINE_SHIKIMORI_URL"),
            ("anilist_url", "ANIME_PIPELINE_ANILIST_URL"),
            ("mal_url", "ANIME_PIPELINE_MAL_URL"),
            ("jikan_url", "ANIME_PIPELINE_JIKAN_URL"),
            ("user_agent", "ANIME_PIPELINE_USER_AGENT"),
        ):
            if env.get(var):
                kw[attr] = env[var].strip()
        return cls(
            home=home,
            profile=profile,
            base_model=env.get("ANIME_PIPELINE_BASE_MODEL") or None,
            catalog=_choice(env, "ANIME_PIPELINE_CATALOG", "shikimori", CATALOGS),
            episode_source=source or None,
            video_dir=Path(video_dir).expanduser().resolve() if video_dir else None,
            manifest=Path(manifest).expanduser().resolve() if manifest else None,
            **kw,
        )

    # Resolved values -------------------------------------------------------------------------
    @property
    def resolved_episode_source(self) -> str:
        if self.episode_source:
            return self.episode_source
        return "demo" if self.profile == "demo" else "local"

    @property
    def resolved_base_model(self) -> str:
        """A model id or local directory. The demo profile uses the tiny model built under the data dir."""
        if self.base_model:
            return self.base_model
        if self.profile == "demo":
            return str(self.tiny_model_dir)
        return DEFAULT_BASE_MODEL

    # Layout under the data dir (see ARCHITECTURE.md "Data on disk") --------------------------
    @property
    def catalog_dir(self) -> Path:
        return self.home / "catalog"

    @property
    def http_cache_dir(self) -> Path:
        return self.home / "http-cache"

    @property
    def episodes_dir(self) -> Path:
        return self.home / "episodes"

    @property
    def frames_dir(self) -> Path:
        return self.home / "frames"

    @property
    def splits_dir(self) -> Path:
        return self.home / "splits"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def eval_dir(self) -> Path:
        return self.home / "eval"

    @property
    def tiny_model_dir(self) -> Path:
        return self.home / "tiny-model"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"
