"""Hostile values are data: a user id full of SQL and path characters travels through every
delivery unchanged and harms nothing (and is forgotten as data); a cohort named like a path stays a file in the
cohort folder; a filter that smuggles SQL is refused."""

from __future__ import annotations

import json
import threading
import urllib.parse
import urllib.request
from pathlib import Path

import duckdb
import pytest

from exports.cohorts import CohortError
from exports.datastore import read_latest
from insights import steps
from insights.config import Config, load_config

HOSTILE = "../../etc/passwd'; drop table recs; --\"<script>%00"


def _rename_user(config: Config, old: str, new: str) -> None:
    con = duckdb.connect(config.resolve(config.warehouse.path))
    for (table,) in con.execute(
        "select table_name from information_schema.columns where table_schema = 'main' and column_name = 'user_id'"
    ).fetchall():
        con.execute(f"update main.{table} set user_id = ? where user_id = ?", [new, old])
    con.close()


def test_a_hostile_user_id_is_delivered_as_data(small: Config, tmp_path: Path) -> None:
    from exports.serving import make_server

    _rename_user(small, "u001", HOSTILE)
    summary = steps.export(small)
    assert summary["datastore"]["tables"]["user_insights"]["rows"] == 60
    frame = read_latest(small, "user_insights")
    assert HOSTILE in set(frame["user_id"])
    payloads = [json.loads(line) for line in Path(small.resolve(small.segment.dry_run_path)).read_text().splitlines()]
    assert HOSTILE in {p["userId"] for p in payloads}
    # Nothing was written outside the output folders, whatever the id says.
    assert not (tmp_path.parent / "etc").exists() and not Path("etc/passwd").exists()

    server = make_server(small, "127.0.0.1", 0, token="")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        url = f"{base}/v1/users/{urllib.parse.quote(HOSTILE, safe='')}/recommendations?limit=3"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = json.loads(response.read())
        assert body["user_id"] == HOSTILE and len(body["items"]) == 3
        assert all(i["reason"] != "trending" for i in body["items"])  # its own list, not the fallback
        with urllib.request.urlopen(f"{base}/v1/users/u002/recommendations", timeout=5) as response:
            assert len(json.loads(response.read())["items"]) == 10  # the table is intact
    finally:
        server.shutdown()
        server.server_close()

    # Asked for and forgotten as data, too: exactly that user goes, everyone else stays.
    found = steps.person(small, [HOSTILE], str(tmp_path / "requests" / "hostile.json"))
    assert found["rows"]["main.user_insights"] == 1
    forgotten = steps.forget(small, [HOSTILE])
    assert forgotten["warehouse"]["main.user_insights"] == 1 and forgotten["outputs"]["datastore"]["user_insights"] == 1
    frame = read_latest(small, "user_insights")
    assert len(frame) == 59 and HOSTILE not in set(frame["user_id"])
    assert not (tmp_path.parent / "etc").exists() and not Path("etc/passwd").exists()


def test_a_cohort_named_like_a_path_stays_in_its_folder(small: Config, tmp_path: Path) -> None:
    config = load_config(Path(small.source_file), environ={})
    definition = {"name": "../../../tmp/evil; rm -rf ~", "where": "purchase_probability >= 0.5"}
    config = config.model_copy(
        update={"cohorts": config.cohorts.model_copy(update={"definitions": [definition], "defaults": False})}
    )
    con = duckdb.connect(config.resolve(config.warehouse.path), read_only=True)
    try:
        from exports.cohorts import run_cohorts

        result = run_cohorts(config, con)
    finally:
        con.close()
    out = Path(config.resolve(config.cohorts.out_dir)).resolve()
    written = [Path(f).resolve() for f in result["files"]]
    assert written and all(out in f.parents for f in written)
    assert any(f.name == "tmp_evil_rm_rf.csv" for f in written)


def test_a_filter_that_smuggles_sql_is_refused(small: Config) -> None:
    from exports.cohorts import run_cohorts

    con = duckdb.connect(small.resolve(small.warehouse.path), read_only=True)
    try:
        for where in ("x'; drop table user_insights; --", "segment = 'a' or 1=1; drop table recs", "segment = $1"):
            with pytest.raises(CohortError):
                run_cohorts(small, con, where=where)
        assert con.execute("select count(*) from main.user_insights").fetchone()[0] == 60
    finally:
        con.close()
