"""`ANIME_PIPELINE_PROFILE=live` with the URL variables pointed at a loopback server materialises the catalog
assets from the command line (`dagster asset materialize`), as README's "Live runs" section says."""

import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from anime_pipeline_tests.fixtures.catalog_server import CatalogServer, shikimori_anime

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_live_profile_from_the_command_line(tmp_path):
    secret = "cli-test-mal-client-id-5f2b9c"
    with CatalogServer(mal_client_id=secret) as server:
        server.shikimori_titles = [
            shikimori_anime(11, name="Shingeki no Kyojin", japanese="進撃の巨人"),
            shikimori_anime(12, related=(("prequel", 11, "Earlier"),)),  # a sequel: dropped
            shikimori_anime(13, rating="r_plus"),  # over PG-13: dropped
        ]
        text = "A long enough synopsis about a walled city and the titans outside it, told from the start. "
        server.mal_synopses = {11: text + "[Written by MAL Rewrite]"}
        server.jikan_synopses = {}
        home, dagster_home = tmp_path / "data", tmp_path / "dagster"
        dagster_home.mkdir()
        env = dict(
            os.environ,
            **server.live_env(
                DAGSTER_HOME=str(dagster_home), ANIME_PIPELINE_HOME=str(home), MAL_CLIENT_ID=secret
            ),
        )
        out = subprocess.run(
            [
                str(Path(sys.executable).parent / "dagster"),
                "asset",
                "materialize",
                "-m",
                "anime_pipeline.definitions",
                "--select",
                "titles,synopses",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert any(
            r.headers.get("X-MAL-CLIENT-ID") == secret for r in server.requests if r.path.startswith("/mal/")
        )
    titles = pl.read_parquet(home / "catalog" / "titles.parquet")
    assert titles["mal_id"].to_list() == [11]
    assert titles["name_native"].to_list() == ["進撃の巨人"]
    synopses = pl.read_parquet(home / "catalog" / "synopses.parquet")
    assert synopses["source"].to_list() == ["mal"]
    assert "Written by" not in synopses["synopsis"][0]
    rejected = pl.read_parquet(home / "catalog" / "rejected.parquet")
    assert set(rejected["mal_id"].to_list()) >= {12}
    assert secret not in out.stdout + out.stderr
