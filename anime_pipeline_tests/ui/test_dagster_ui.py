"""What a user sees in `dagster dev`, checked in a real browser (Debian's chromium driven by Playwright).

A demo instance (a third of the demo titles, so the whole module stays near two minutes) is materialized
through the same entry point as ./scripts/demo, `dagster dev` is started on it, and Chromium walks the
pages a user opens: the asset catalog, every asset's page, a partition of `frame_shards`, the latest
run's log and the fine-tune's run log, the launchpad of `finetuned_adapter`. Screenshots of every page go
to `build/ui-screenshots/` (or $ANIME_PIPELINE_UI_SCREENSHOTS), kept after a failing run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline import schemas
from anime_pipeline_tests.conftest import DagsterDev

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SHOTS = Path(os.environ.get("ANIME_PIPELINE_UI_SCREENSHOTS") or REPO / "build" / "ui-screenshots")
VIEWPORT = {"width": 1440, "height": 900}

ASSETS = [
    "titles",
    "synopses",
    "episodes",
    "frame_shards",
    "train_val_split",
    "dataset_export",
    "finetuned_adapter",
    "caption_eval",
]
# What a user must find on each asset's page: metadata labels and the column headers of its tables.
EXPECTED = {
    "titles": {
        "labels": ["num_titles", "size_mb", "compute_s", "preview"],
        "headers": ["mal_id", "name", "genres"],
    },
    "synopses": {
        "labels": ["num_synopses", "by_source", "preview"],
        "headers": ["mal_id", "source", "synopsis"],
    },
    "episodes": {"labels": ["title", "video_duration_s", "size_mb", "compute_s"], "headers": []},
    "frame_shards": {"labels": ["title", "num_frames", "video_duration_s", "contact_sheet"], "headers": []},
    "train_val_split": {
        "labels": ["num_train", "num_val", "stats", "preview"],
        "headers": ["stat", "train", "val", "synopsis", "num_frames"],
    },
    "dataset_export": {"labels": ["rows_per_split", "size_mb"], "headers": ["split", "rows"]},
    "finetuned_adapter": {
        "labels": ["losses", "parameters", "hyperparameters", "peak_memory_mb", "adapter_mb"],
        "headers": ["loss", "before", "after", "component", "trainable", "frozen"],
    },
    "caption_eval": {
        "labels": ["metrics", "examples", "contact_sheet", "val_loss_base"],
        "headers": ["metric", "base", "fine_tuned", "change", "title", "by", "text"],
    },
}
# Table assets: the columns their "Columns" section lists (dagster/column_schema).
TABLE_COLUMNS = {
    "titles": list(schemas.TITLES),
    "synopses": list(schemas.SYNOPSES),
    "frame_shards": list(schemas.FRAMES),
    "train_val_split": list(schemas.SAMPLES),
    "caption_eval": ["mal_id", "name", "reference", "caption_base", "caption_finetuned"],
    "dataset_export": ["mal_id", "synopsis", "frames"],
}
# Metadata tables (tables inside the metadata table) that cannot fit the panel: narrowed as far as their
# content allows (min-content), they still reach past the right edge of the scrolling panel. (Long unbroken
# values such as a 64-hex data version or a path can widen the whole panel; that is Dagster's rendering.)
CLIPPED_TABLES = """() => [...document.querySelectorAll('table table')].filter((t) => {
  const cell = t.closest('td');
  let panel = cell.parentElement;
  while (panel && panel !== document.body && getComputedStyle(panel).overflowX === 'visible') panel = panel.parentElement;
  const available = panel.getBoundingClientRect().right - cell.getBoundingClientRect().left;
  const old = t.style.width;
  t.style.width = '0px';
  const narrowest = t.getBoundingClientRect().width;
  t.style.width = old;
  return narrowest > available + 1;
}).map((t) => [...t.querySelectorAll('th')].map((th) => th.innerText).join(' | '))"""
ERROR_BOUNDARY = re.compile(
    r"Something went wrong|Unexpected error|An error occurred|TypeError|is not a function"
)


# Demo instance ---------------------------------------------------------------------------------------
def _subset_ids() -> list[int]:
    """Eight demo titles, at least three of them on the validation side of the split."""
    from anime_pipeline.dataset.split import DEFAULT_SALT, assign_split
    from anime_pipeline.defs.dataset import DEMO_VAL_FRACTION
    from anime_pipeline.demo import demo_titles

    ids = [t.mal_id for t in demo_titles()]
    val = [i for i in ids if assign_split(i, DEMO_VAL_FRACTION, DEFAULT_SALT) == "val"][:3]
    train = [i for i in ids if i not in val][:5]
    assert len(val) == 3 and len(train) == 5
    return sorted(val + train)


# Set both to check a `dagster dev` you already run (e.g. ./scripts/dev after ./scripts/demo) instead.
EXISTING_UI = os.environ.get("ANIME_PIPELINE_UI_URL", "").rstrip("/")


@pytest.fixture(scope="module")
def demo_instance(tmp_path_factory):
    """A demo run (catalog_job, media_job per title, training_job) on an instance on disk, then `dagster dev`
    on it. Yields (settings, base URL)."""
    import polars as pl

    import anime_pipeline.defs.catalog as catalog_defs
    from anime_pipeline.cli import ensure_dagster_home, run_all
    from anime_pipeline.settings import Settings

    if EXISTING_UI:
        yield Settings.from_env(), EXISTING_UI
        return
    home = tmp_path_factory.mktemp("ui") / "data"
    settings = Settings.from_env({"ANIME_PIPELINE_HOME": str(home)})
    dagster_home = ensure_dagster_home(settings)
    log = tmp_path_factory.mktemp("ui-log") / "dagster-dev.log"
    keep = _subset_ids()
    full = catalog_defs.demo_catalog

    def subset(*args, **kwargs):
        titles, synopses = full(*args, **kwargs)
        return titles.filter(pl.col("mal_id").is_in(keep)), synopses.filter(pl.col("mal_id").is_in(keep))

    mp = pytest.MonkeyPatch()
    mp.setattr(catalog_defs, "demo_catalog", subset)
    dev = None
    try:
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            summary = run_all(
                settings,
                instance=instance,
                out=sys.stderr,
                run_config={
                    "finetuned_adapter": {"config": {"epochs": 10}},
                    "caption_eval": {"config": {"max_new_tokens": 48}},
                },
            )
        mp.undo()
        assert summary["failed_titles"] == [] and summary["titles"] == len(keep), summary
        # started after the demo: its daemon never races the demo's runs, and the storages exist already
        dev = DagsterDev(
            dagster_home,
            settings.home,
            log,
            ANIME_PIPELINE_CATALOG_SCHEDULE="off",
            ANIME_PIPELINE_MEDIA_SENSOR="off",
        )
        dev.wait_for_assets("{ assetNodes { assetKey { path } } }")
        yield settings, dev.base
    finally:
        mp.undo()
        if dev is not None:
            dev.stop()
            dev.kill_group()  # nothing of it outlives the module


def _graphql(base: str, query: str) -> dict:
    req = urllib.request.Request(
        f"{base}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.loads(urllib.request.urlopen(req, timeout=10).read())["data"]


# Browser ---------------------------------------------------------------------------------------------
class Page:
    """A page plus the console errors and failed project requests seen while it was open."""

    def __init__(self, browser, base: str):
        self.base = base
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.page.set_default_timeout(30_000)
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None,
        )
        self.page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))

    def open(self, path: str, wait_for: str | None = None):
        self.page.goto(self.base + path, wait_until="domcontentloaded")
        if wait_for:  # (not "networkidle": the UI polls the server all the time)
            self.page.get_by_text(wait_for, exact=False).first.wait_for(state="visible")
        return self.page

    def shot(self, name: str, full_page: bool = True) -> Path:
        path = SHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def assert_healthy(self, where: str):
        body = self.page.inner_text("body")
        m = ERROR_BOUNDARY.search(body)
        assert not m, f"{where}: the page shows {m.group(0)!r} (screenshots: {SHOTS})"
        project = [e for e in self.errors if not _dagster_noise(e)]
        assert not project, f"{where}: console errors {project} (screenshots: {SHOTS})"


def _dagster_noise(error: str) -> bool:
    """Errors the Dagster UI logs on its own (not caused by this project's definitions or metadata)."""
    return False


@pytest.fixture(scope="module")
def shared_page(demo_instance):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (./scripts/test does it with apt-get)")
    from playwright.sync_api import sync_playwright

    _, base = demo_instance
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield Page(browser, base)
        finally:
            browser.close()


@pytest.fixture
def page(shared_page):
    """The module's browser page, with this test's console errors only."""
    shared_page.errors.clear()
    shared_page.page.keyboard.press("Escape")  # a dialog left open by an earlier test
    return shared_page


def _headers(page) -> list[str]:
    return [t.strip() for t in page.locator("th").all_inner_texts()]


# Tests -----------------------------------------------------------------------------------------------
def test_asset_catalog_lists_every_asset(page):
    pg = page.open("/assets", wait_for="train_val_split")
    body = pg.inner_text("body")
    for key in ASSETS:
        assert key in body, key
    page.shot("01-asset-catalog")
    page.assert_healthy("asset catalog")


def test_lineage_graph(page):
    # every group expanded: the neighbours of the split reach from the catalog to the evaluation
    pg = page.open(
        "/assets/train_val_split?view=lineage&lineageScope=neighbors&lineageDepth=10",
        wait_for="finetuned_adapter",
    )
    pg.wait_for_timeout(1500)  # the graph lays out after the data arrives
    for key in ("titles", "frame_shards", "finetuned_adapter", "caption_eval"):
        assert pg.get_by_text(key, exact=True).first.is_visible(), key
    page.shot("02-lineage-graph", full_page=False)
    page.assert_healthy("lineage graph")


@pytest.mark.parametrize("key", ASSETS)
def test_asset_page_shows_tables_numbers_and_no_errors(page, key):
    pg = page.open(f"/assets/{key}", wait_for="Latest materialization")
    pg.get_by_text(EXPECTED[key]["labels"][0], exact=True).first.wait_for(state="visible")
    page.shot(f"10-asset-{key}")  # before the checks, so a failing run has it
    metadata = pg.get_by_text("Metadata", exact=True).first
    metadata.evaluate("(e) => e.scrollIntoView({block: 'start'})")
    page.shot(f"11-asset-{key}-metadata", full_page=False)
    body = pg.inner_text("body")
    for label in EXPECTED[key]["labels"]:
        assert label in body, f"{key}: metadata {label!r} not shown"
    headers = _headers(pg)
    for h in EXPECTED[key]["headers"]:
        assert h in headers, f"{key}: no table column {h!r} among {headers}"
    assert "[Show JSON]" not in body, f"{key}: a JSON blob where a table would read better"
    clipped = pg.evaluate(CLIPPED_TABLES)
    assert not clipped, f"{key}: tables wider than the metadata panel (cut off): {clipped}"
    assert not re.search(r"\d\.\d{7,}", body), f"{key}: an unrounded number on the page"
    assert "_bytes" not in body, f"{key}: a byte count without a unit"
    if key in TABLE_COLUMNS:
        # the column schema ("Columns") with every column, and the row count
        assert "Columns" in body, f"{key}: no Columns section"
        for column in TABLE_COLUMNS[key]:
            assert re.search(rf"(^|\s){re.escape(column)}(\s|$)", body), (
                f"{key}: column {column!r} not listed"
            )
        assert re.search(r"Row count\s+\d+", body), f"{key}: no row count"
    page.assert_healthy(f"asset page {key}")


def _open_dialog_image(pg, label: str):
    row = pg.locator("tr", has=pg.get_by_text(label, exact=True)).first
    # Animations at a quarter speed, as on a loaded machine: the measurement below must not depend on how
    # fast the dialog's opening transition runs (at 0.1x, read before it ends, the sheet measured 683 px)
    cdp = pg.context.new_cdp_session(pg)
    cdp.send("Animation.enable")
    cdp.send("Animation.setPlaybackRate", {"playbackRate": 0.25})
    row.get_by_text("[Show Markdown]").click()
    dialog = pg.locator(".bp5-dialog, [role=dialog]").last
    dialog.wait_for(state="visible")
    img = dialog.locator("img").first
    img.wait_for(state="visible")
    pg.wait_for_function("(img) => img.complete && img.naturalWidth > 0", arg=img.element_handle())
    # Blueprint opens a dialog with CSS transitions (its transform scales it in): a bounding box read
    # before they end is scaled down (on a loaded CI machine the 718 px sheet read as 697-710 px, centred).
    # Measure once the dialog's own transitions have ended (those of its overlay: backdrop, container, dialog;
    # a spinner elsewhere on the page animates for ever and is not waited for).
    pg.wait_for_function(
        "(d) => { const overlay = d.closest('.bp5-overlay') || d;"
        " return document.getAnimations().every((a) => a.playState !== 'running'"
        " || !(a.effect && a.effect.target && overlay.contains(a.effect.target))); }",
        arg=dialog.element_handle(),
    )
    return dialog, img


def _layout_chain(img) -> list:
    """The image and its ancestors up to the dialog: tag, class, widths, overflow (for a failure message)."""
    return img.evaluate(
        "(i) => { const out = []; for (let e = i; e && !e.classList.contains('bp5-dialog-container');"
        " e = e.parentElement) { const cs = getComputedStyle(e); out.push([e.tagName,"
        " String(e.className).slice(0, 40), e.clientWidth, e.scrollWidth, e.clientHeight, e.scrollHeight,"
        " cs.width, cs.maxWidth, cs.overflowY]); } return out; }"
    )


def _assert_fully_visible(pg, dialog, img, where: str):
    box, dbox = img.bounding_box(), dialog.bounding_box()
    natural = img.evaluate("(i) => [i.naturalWidth, i.naturalHeight]")
    assert box and dbox, where
    assert box["x"] >= dbox["x"] - 1 and box["x"] + box["width"] <= dbox["x"] + dbox["width"] + 1, (
        where,
        box,
        dbox,
    )
    assert box["x"] >= 0 and box["x"] + box["width"] <= VIEWPORT["width"], (where, box)
    # shown at its own size, on screen and in the layout (offsetWidth ignores transforms)
    layout_width = img.evaluate("(i) => i.offsetWidth")
    assert abs(box["width"] - natural[0]) <= 1 and layout_width == natural[0], (
        f"{where}: image scaled {natural} -> {box} (layout {layout_width} px); dialog {dbox}; "
        f"ancestors {_layout_chain(img)}"
    )
    clipped = dialog.evaluate(
        "(d) => [...d.querySelectorAll('*')].some(e => e.scrollWidth > e.clientWidth + 1 && "
        "getComputedStyle(e).overflowX !== 'visible')"
    )
    assert not clipped, f"{where}: the image is wider than its dialog (horizontal scroll)"


def test_frame_shards_partition_shows_title_and_whole_contact_sheet(page, demo_instance):
    settings, _ = demo_instance
    import polars as pl

    titles = pl.read_parquet(settings.catalog_dir / "titles.parquet").sort("mal_id")
    mal_id, name = titles["mal_id"][0], titles["name"][0]
    pg = page.open(f"/assets/frame_shards?view=partitions&partition={mal_id}", wait_for=f"MAL {mal_id}")
    body = pg.inner_text("body")
    assert f"{name} (MAL {mal_id})" in body, "the partition's materialization does not name its title"
    page.shot("20-frame-shards-partition")
    dialog, img = _open_dialog_image(pg, "contact_sheet")
    assert f"{name} (MAL {mal_id})" in dialog.inner_text(), (
        "the contact sheet's caption does not name the title"
    )
    _assert_fully_visible(pg, dialog, img, "frame_shards contact sheet")
    page.shot("21-frame-shards-contact-sheet", full_page=False)
    page.assert_healthy("frame_shards partition")


def test_caption_eval_contact_sheet_names_its_title(page):
    pg = page.open("/assets/caption_eval", wait_for="contact_sheet")
    dialog, img = _open_dialog_image(pg, "contact_sheet")
    assert re.search(r"\(MAL \d+\)", dialog.inner_text()), (
        "caption_eval's sheet does not say which title it shows"
    )
    _assert_fully_visible(pg, dialog, img, "caption_eval contact sheet")
    page.shot("22-caption-eval-contact-sheet", full_page=False)
    page.assert_healthy("caption_eval contact sheet")


def _runs(base: str) -> list[dict]:
    data = _graphql(base, "{ runsOrError(limit: 20) { ... on Runs { results { runId jobName } } } }")
    return data["runsOrError"]["results"]


def test_latest_run_log_and_readable_training_progress(page):
    runs = _runs(page.base)
    latest = runs[0]
    pg = page.open(f"/runs/{latest['runId']}", wait_for="RUN_SUCCESS")
    page.shot("30-latest-run")
    page.assert_healthy("latest run")

    training = next(r for r in runs if r["jobName"] == "training_job")  # finetuned_adapter's run
    pg = page.open(f"/runs/{training['runId']}", wait_for="RUN_SUCCESS")
    search = pg.get_by_placeholder(re.compile("Filter", re.IGNORECASE)).first
    search.fill("samples/s")
    line = pg.get_by_text(
        re.compile(r"step \d+/\d+ \(\d+%\) · loss [\d.]+ · lr [\d.e+-]+ · [\d.]+ samples/s")
    ).first
    line.wait_for(state="visible")
    assert not re.search(r"\d\.\d{7,}", line.inner_text()), "progress line with unrounded numbers"
    page.shot("31-training-run-progress", full_page=False)
    page.assert_healthy("training run log")


def test_launchpad_of_finetuned_adapter_prefills_training_fields(page):
    pg = page.open("/assets/finetuned_adapter", wait_for="Materialize")
    pg.locator("button").filter(has_text="Materialize").first.click(
        modifiers=["Shift"]
    )  # shift: the launchpad
    editor = pg.locator(".CodeMirror").first
    editor.wait_for(state="visible")
    pg.wait_for_timeout(500)
    text = editor.evaluate("(e) => e.CodeMirror.getValue()")
    for line in ("epochs: 60", "learning_rate: 0.003", "batch_size: 4", "max_frames: 8", "max_length: 0"):
        assert line in text, f"launchpad config lacks {line!r}:\n{text}"
    assert "catalog: shikimori" not in text, "the demo's resource config names the live catalog"
    page.shot("40-launchpad-finetuned-adapter", full_page=False)
    page.assert_healthy("launchpad")
