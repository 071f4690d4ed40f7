"""A manifest with bad rows in a real Dagster run: each bad row fails only its own title, every invalid row is
listed by the `episode_manifest_rows` check, no secret reaches the event log or error.json, and a redirect to
file:// becomes a recorded MediaError (the stale error.json is replaced)."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from anime_pipeline_tests.fixtures.runs import catalog_then_partitions, step_failure_message
from anime_pipeline_tests.media.test_media_manifest import hostile  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
SECRETS = ("hunter2", "s3cr3t-token")


def test_bad_manifest_rows_fail_only_themselves(tmp_path, hostile):  # noqa: F811
    base, handler = hostile
    home = tmp_path / "data"
    good, creds, redirect = "990001", "990002", "990003"
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "mal_id,url\n"
        f"{good},{base}/clip.mp4\n"  # row 2
        f"{creds},https://alice:hunter2@example.org/two.mp4\n"  # row 3
        f"{redirect},{base}/to-file.mp4?token=s3cr3t-token\n"  # row 4
        "abc,https://example.org/x.mp4\n"  # row 5
        f"424242,{base}/clip.mp4\n"  # row 6: not a title
    )
    stale = home / "episodes" / redirect / "error.json"
    stale.parent.mkdir(parents=True)
    stale.write_text('{"error": "stale"}')
    env = {
        "ANIME_PIPELINE_HOME": str(home),
        "ANIME_PIPELINE_EPISODE_SOURCE": "manifest",
        "ANIME_PIPELINE_MANIFEST": str(manifest),
        "ANIME_PIPELINE_USER_AGENT": "test-team/1.0 (t@example.org)",
    }
    episodes_and_checks = dg.AssetSelection.assets(
        "episodes"
    ).without_checks() | dg.AssetSelection.checks_for_assets("episodes")
    with dg.instance_for_test() as instance:
        results = catalog_then_partitions(env, instance, (good, creds, redirect), episodes_and_checks).results
        assert results[good].success and not results[creds].success and not results[redirect].success
        messages = {k: step_failure_message(r) for k, r in results.items() if k != good}
        assert "manifest.csv: row 3:" in messages[creds] and "credentials" in messages[creds]
        assert f"{base}/to-file.mp4?token=***: download failed" in messages[redirect]
        # the check lists every problem row, the good title's run included
        check = results[good].get_asset_check_evaluations()[0]
        assert not check.passed
        rows = {r.data["row"]: r.data["reason"] for r in check.metadata["problems"].value.records}
        assert sorted(rows) == [3, 5, 6]  # row 4 is a valid row; its failure is the download's
        assert "MAL id 424242 is not a title" in rows[6] and "credentials" in rows[3]
        logs = "".join(str(e) for r in results.values() for e in instance.all_logs(r.run_id))
        for secret in SECRETS:
            assert secret not in logs
    record = json.loads(stale.read_text())
    assert (
        record["stage"] == "episodes"
        and "download failed" in record["error"]
        and "s3cr3t" not in record["error"]
    )
    assert "hunter2" not in (home / "episodes" / creds / "error.json").read_text()
    assert set(handler.agents) == {"test-team/1.0 (t@example.org)"}
    assert json.loads((home / "episodes" / good / "probe.json").read_text())["origin"] == f"{base}/clip.mp4"
