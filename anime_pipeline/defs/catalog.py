"""Catalog stage: `titles` and `synopses` (group `catalog`)."""

import time

import dagster as dg
import polars as pl
from pydantic import Field

from anime_pipeline import schemas
from anime_pipeline.catalog import checks as catalog_checks
from anime_pipeline.catalog.demo import demo_catalog
from anime_pipeline.defs._meta import (
    mb,
    path_meta,
    preview_table,
    records_table,
    seconds,
    stage_asset,
    table_metadata,
)
from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME
from anime_pipeline.defs.resources import CatalogApiResource, DataStoreResource, PipelineResource
from anime_pipeline.paths import atomic_path

CATALOG_SOURCE = dg.AssetSpec(
    key="anime_catalog_api",
    group_name="catalog",
    description="External anime catalogs (Shikimori / AniList GraphQL, MAL v2, Jikan v4). "
    "In the demo profile: the bundled synthetic catalog.",
    kinds={"api"},
)


class TitlesConfig(dg.Config):
    max_titles: int = Field(
        default=614, description="Most titles to discover (live); the reference dataset had 614."
    )
    min_score: float = Field(default=7.0, description="Minimum catalog score (live).")
    page_size: int = Field(default=50, description="Titles per catalog page (the APIs allow at most 50).")
    listing_max_age_s: float = Field(
        default=12 * 3600.0,
        description="Catalog listing pages cached longer ago than this are fetched again (0: always), so the "
        "daily schedule sees new titles while a re-materialisation soon after reuses the cache.",
    )


class SynopsesConfig(dg.Config):
    min_chars: int = Field(default=80, description="Shorter cleaned synopses are rejected as unusable.")
    outage_threshold: int = Field(
        default=5,
        description="A source failing this many titles in a row with outages (timeouts, 5xx, 429) is skipped for "
        "the rest of the run; 0 disables the breaker.",
    )


def write_parquet(df: pl.DataFrame, path) -> int:
    with atomic_path(path, suffix=".parquet") as tmp:
        df.write_parquet(tmp)
    return path.stat().st_size


def pull_http_cache(data_store: DataStoreResource, api: CatalogApiResource) -> None:
    """The HTTP cache (ETags, listing pages) travels through the data store, so a catalog run in a fresh
    pod still revalidates unchanged synopses (304s) instead of fetching them again."""
    if api.cache:
        data_store.pull("http-cache", missing_ok=True)


def push_http_cache(data_store: DataStoreResource, api: CatalogApiResource) -> None:
    if api.cache and data_store.open().path("http-cache").is_dir():
        data_store.push("http-cache")


def make_http_client(api: CatalogApiResource, settings):
    from anime_pipeline.catalog.http import HttpClient, HttpConfig

    return HttpClient(
        HttpConfig(
            user_agent=api.user_agent,
            cache_dir=settings.http_cache_dir if api.cache else None,
            connect_timeout=api.connect_timeout_s,
            read_timeout=api.read_timeout_s,
            body_timeout=api.body_timeout_s,
            total_retries=api.total_retries,
        )
    )


@stage_asset(
    "catalog",
    deps=[CATALOG_SOURCE],
    kinds={"parquet", "polars"},
    code_version="titles-v1",
    schema=schemas.TITLES,
)
def titles(
    context: dg.AssetExecutionContext,
    config: TitlesConfig,
    pipeline: PipelineResource,
    catalog_api: CatalogApiResource,
    data_store: DataStoreResource,
) -> dg.MaterializeResult:
    """Discovered anime titles: TV, released, rated at most PG-13, score ≥ min_score, first seasons only.

    One row per MAL id (the join key of every later table), with names, genres, main characters,
    score, rating, popularity, episode count and duration. Titles dropped by the filters (sequels,
    missing MAL id) are recorded in `catalog/rejected.parquet` with the reason. A title collected
    before stays when it drops out of the listing (`max_titles` limits additions only); it is retired
    only with a reason in `rejected` (catalog.retention).
    """
    s = pipeline.settings()
    data_store.pull("catalog/titles.parquet", missing_ok=True)  # the titles collected before (retention)
    started = time.monotonic()
    requests = 0
    stop_reason = ""
    if s.profile == "demo":
        df, _ = demo_catalog()
        rejected = schemas.empty(schemas.REJECTED)
        source = "demo"
    else:
        from anime_pipeline.catalog.discovery import discover_titles

        url = catalog_api.shikimori_url if s.catalog == "shikimori" else catalog_api.anilist_url
        pull_http_cache(data_store, catalog_api)
        with make_http_client(catalog_api, s) as client:
            result = discover_titles(
                client,
                catalog=s.catalog,
                url=url,
                max_titles=config.max_titles,
                min_score=config.min_score,
                page_size=config.page_size,
                listing_max_age_s=config.listing_max_age_s,
            )
            requests = client.requests_sent
        push_http_cache(data_store, catalog_api)
        df, rejected, stop_reason = result.titles, result.rejected, result.stop_reason
        source = s.catalog
    from anime_pipeline.catalog.retention import retain_titles

    out = s.catalog_dir / "titles.parquet"
    kept = retain_titles(
        pl.read_parquet(out) if out.exists() else None,
        df,
        rejected,
        catalog=source,
        max_titles=config.max_titles,
    )
    df, rejected = kept.titles, kept.rejected
    size = write_parquet(df, out)
    write_parquet(schemas.conform(rejected, schemas.REJECTED), s.catalog_dir / "titles_rejected.parquet")
    data_store.push("catalog/titles.parquet", "catalog/titles_rejected.parquet")
    context.log.info(f"{df.height} titles from {source}, {rejected.height} rejected")
    return dg.MaterializeResult(
        metadata={
            "num_titles": df.height,
            "num_rejected": rejected.height,
            "num_added": len(kept.added),
            "num_kept_unlisted": len(kept.kept_unlisted),
            "num_retired": len(kept.retired),
            "not_added_cap": kept.not_added,
            "stop_reason": stop_reason or "demo catalog",
            "catalog": source,
            "http_requests": requests,
            "size_mb": mb(size),
            "compute_s": seconds(time.monotonic() - started),
            "path": path_meta(data_store.uri("catalog/titles.parquet")),
            "preview": preview_table(
                df.select("mal_id", "name", "score", "genres")
            ),  # few columns: the panel is narrow
            "rejected_preview": preview_table(rejected.select("mal_id", "name", "reason")),
            **table_metadata(schemas.TITLES, df.height),
        }
    )


@stage_asset(
    "catalog",
    deps=[titles],
    kinds={"parquet", "polars"},
    code_version="synopses-v1",
    schema=schemas.SYNOPSES,
)
def synopses(
    context: dg.AssetExecutionContext,
    config: SynopsesConfig,
    pipeline: PipelineResource,
    catalog_api: CatalogApiResource,
    data_store: DataStoreResource,
) -> dg.MaterializeResult:
    """One cleaned, human-written synopsis per title, with its source, URL, fetch time and content hash.

    Live: MAL API v2 → Jikan v4 → AniList, "[Written by …]" / "(Source: …)" attribution stripped.
    Titles without a usable synopsis are excluded with a reason (`catalog/rejected.parquet`); a title
    that had a synopsis before keeps it when this run found none (catalog.retention). Every title kept
    here becomes a partition (its MAL id) of the media assets.
    """
    s = pipeline.settings()
    data_store.pull("catalog/titles.parquet", "catalog/titles_rejected.parquet")
    data_store.pull("catalog/synopses.parquet", missing_ok=True)  # the synopses collected before (retention)
    started = time.monotonic()
    titles_df = pl.read_parquet(s.catalog_dir / "titles.parquet")
    requests = 0
    if s.profile == "demo":
        _, df = demo_catalog()
        rejected = schemas.empty(schemas.REJECTED)
        by_source = {"demo": df.height}
        errors: list[str] = []
    else:
        from anime_pipeline.catalog.synopses import SynopsisSources, fetch_synopses

        sources = SynopsisSources(
            mal_url=catalog_api.mal_url,
            mal_client_id=catalog_api.mal_client_id,
            jikan_url=catalog_api.jikan_url,
            anilist_url=catalog_api.anilist_url,
        )
        pull_http_cache(data_store, catalog_api)
        with make_http_client(catalog_api, s) as client:
            result = fetch_synopses(
                client,
                titles_df,
                sources=sources,
                min_chars=config.min_chars,
                outage_threshold=config.outage_threshold,
            )
            requests = client.requests_sent
        push_http_cache(data_store, catalog_api)
        df, rejected, by_source, errors = result.synopses, result.rejected, result.by_source, result.errors
        for e in errors:
            context.log.warning(e)
    from anime_pipeline.catalog.retention import retain_synopses

    out = s.catalog_dir / "synopses.parquet"
    kept = retain_synopses(pl.read_parquet(out) if out.exists() else None, df, rejected, titles_df)
    df, rejected = kept.synopses, kept.rejected
    for mal_id, why in kept.kept_previous.items():
        context.log.warning(f"mal_id {mal_id}: kept the synopsis collected before ({why})")
    size = write_parquet(df, out)
    all_rejected = pl.concat(
        [pl.read_parquet(s.catalog_dir / "titles_rejected.parquet"), rejected], how="vertical_relaxed"
    )
    write_parquet(all_rejected, s.catalog_dir / "rejected.parquet")
    data_store.push("catalog/synopses.parquet", "catalog/rejected.parquet")

    keys = [str(i) for i in df["mal_id"].to_list()]
    existing = set(context.instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME))
    new_keys = [k for k in keys if k not in existing]
    if new_keys:
        context.instance.add_dynamic_partitions(MAL_ID_PARTITIONS_NAME, new_keys)
    context.log.info(f"{df.height} synopses ({by_source}); {len(new_keys)} new title partitions")
    return dg.MaterializeResult(
        metadata={
            "num_synopses": df.height,
            "num_rejected": rejected.height,
            "num_kept_previous": len(kept.kept_previous),
            "by_source": records_table(
                [{"source": k, "synopses": v} for k, v in sorted(by_source.items())],
                [("source", "string"), ("synopses", "int")],
            ),
            "new_partitions": len(new_keys),
            "http_requests": requests,
            "size_mb": mb(size),
            "compute_s": seconds(time.monotonic() - started),
            "path": path_meta(data_store.uri("catalog/synopses.parquet")),
            "preview": preview_table(df.select("mal_id", "source", "synopsis"), max_chars=160),
            "rejected": preview_table(all_rejected.select("mal_id", "stage", "reason")),
            **table_metadata(schemas.SYNOPSES, df.height),
        }
    )


@dg.asset_check(
    asset=titles, blocking=True, description="Every title has a MAL id and no MAL id appears twice."
)
def titles_unique_mal_ids(pipeline: PipelineResource, data_store: DataStoreResource) -> dg.AssetCheckResult:
    data_store.pull("catalog/titles.parquet")
    df = pl.read_parquet(pipeline.settings().catalog_dir / "titles.parquet")
    ok, detail = catalog_checks.check_unique_mal_ids(df)
    return dg.AssetCheckResult(passed=ok, metadata={"detail": detail, "rows": df.height})


@dg.asset_check(
    asset=synopses,
    blocking=True,
    description="Synopses are non-empty, unique per title and free of attribution text.",
)
def synopses_clean(pipeline: PipelineResource, data_store: DataStoreResource) -> dg.AssetCheckResult:
    data_store.pull("catalog/synopses.parquet")
    df = pl.read_parquet(pipeline.settings().catalog_dir / "synopses.parquet")
    ok, detail = catalog_checks.check_synopses_clean(df)
    ok_ids, detail_ids = catalog_checks.check_unique_mal_ids(df)
    return dg.AssetCheckResult(
        passed=ok and ok_ids, metadata={"detail": f"{detail}; {detail_ids}", "rows": df.height}
    )
