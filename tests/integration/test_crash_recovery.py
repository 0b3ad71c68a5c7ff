"""Nothing lost, nothing duplicated, nothing leaked.

A run killed by SIGKILL in the middle of ingest, of the dbt build, of the exports and of the
datastore publish, then run again, ends with exactly the outputs of a run that was never
interrupted (same datastore tables, row for row, same warehouse events, same cohort files,
Segment messages and recommendation table). And the outputs of a run carry no IP address,
user agent or e-mail address from the clickstream, and no secret from the environment."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from insights.config import default_sources
from insights.sample import generate

INSIGHTS = str(Path(sys.executable).with_name("insights"))
AS_OF = "2026-11-01"
# Columns that say when something happened, not what: they differ between any two runs.
VOLATILE = {"model_metrics": {"trained_at"}}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("crash_site")
    generate(str(folder), users=300, days=35, seed=23)
    return folder


def _project(root: Path, site: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "insights.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "sources": default_sources(str(site)),
                "ingest": {"batch_bytes": 400_000},  # several load batches per source
                "cohorts": {"folder": None},
                "ml": {"als_factors": [16], "als_alpha": [5.0], "als_regularization": [0.1]},
            }
        )
    )
    return path


# Known fake secrets in the environment of every run: none may appear in any output.
SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIAFAKEKEYFORTESTS0",
    "AWS_SECRET_ACCESS_KEY": "fake/secret+access+key+for+tests+only0",
    "SEGMENT_WRITE_KEY": "fake-segment-write-key-for-tests",
    "INSIGHTS_API_TOKEN": "fake-api-token-for-tests",
}


def _run(config: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSIGHTS")}
    env.update(SECRETS)
    if failpoint:
        env["INSIGHTS_FAILPOINT"] = failpoint
    return subprocess.run(
        [INSIGHTS, "--config", str(config), "run", "--as-of", AS_OF],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,  # the failpoint kills the run's process group, as a lost worker
    )


def _digest(rows: list[tuple]) -> str:
    return hashlib.sha256(json.dumps(sorted(map(repr, rows))).encode()).hexdigest()


def _fingerprint(root: Path) -> dict:
    """What a downstream reader sees, independent of run ids and clocks."""
    store = root / "datastore"
    out: dict = {"tables": {}}
    con = duckdb.connect()
    listed: set[str] = set()
    for table in sorted(p.name for p in store.iterdir() if p.is_dir() and p.name != "reports"):
        latest = json.loads((store / table / "_latest").read_text())
        manifest = json.loads((store / table / latest["manifest"]).read_text())
        files = [str(store / f["key"]) for f in manifest["files"]]
        listed.update(files)
        relation = con.execute(f"select * from read_parquet({files!r})")
        keep = [c[0] for c in relation.description if c[0] not in VOLATILE.get(table, set())]
        columns = ", ".join(f'"{c}"' for c in keep)
        rows = con.execute(f"select {columns} from read_parquet({files!r})").fetchall()
        out["tables"][table] = (manifest["dt"], manifest["rows"], _digest(rows))
    con.close()
    # Nothing duplicated: every data file in the datastore belongs to a published partition
    # of the retained ones (orphans of a killed publish are cleaned up).
    out["orphans"] = sorted(
        str(p.relative_to(store))
        for p in store.rglob("*.parquet")
        if str(p) not in listed and not (p.parent / "_manifest.json").exists()
    )
    wh = duckdb.connect(str(root / "warehouse" / "insights.duckdb"), read_only=True)
    out["events"] = wh.execute("select count(*), count(distinct event_id) from raw.events").fetchone()
    out["quarantine"] = wh.execute("select count(*) from ingest.quarantine").fetchone()[0]
    out["manifest_files"] = wh.execute("select count(*), sum(rows_loaded) from ingest.load_manifest").fetchone()
    out["sessions"] = _digest(wh.execute("select session_id, user_id, page_views from main.fct_sessions").fetchall())
    wh.close()
    out["cohort_csvs"] = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((root / "out" / "cohorts").glob("*.csv"))
    }
    segment = (root / "out" / "segment_dry_run.jsonl").read_text().splitlines()
    out["segment"] = _digest([tuple(sorted(json.loads(line).items())) for line in segment])
    db = sqlite3.connect(root / "warehouse" / "recommendations.sqlite")
    tables = [r[0] for r in db.execute("select name from sqlite_master where type = 'table' and name != 'meta'")]
    out["serving"] = {t: _digest(db.execute(f"select * from {t}").fetchall()) for t in sorted(tables)}
    db.close()
    return out


@pytest.fixture(scope="module")
def uninterrupted(site: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("uninterrupted")
    result = _run(_project(root, site))
    assert result.returncode == 0, result.stderr
    return {"root": root, "output": result.stdout + result.stderr, "fingerprint": _fingerprint(root)}


def test_killed_runs_resume_to_the_uninterrupted_outputs(site: Path, uninterrupted: dict, tmp_path: Path) -> None:
    expected = uninterrupted["fingerprint"]
    assert expected["orphans"] == [] and expected["events"][0] == expected["events"][1] > 10_000

    config = _project(tmp_path / "crashed", site)
    for point in ("ingest.batch", "transform.dbt@1.0", "export.cohorts", "publish.data", "publish.manifests"):
        killed = _run(config, point)
        assert killed.returncode == -signal.SIGKILL, f"{point}: the run was not killed there\n{killed.stderr}"
    resumed = _run(config)
    assert resumed.returncode == 0, resumed.stderr
    assert _fingerprint(tmp_path / "crashed") == expected


def _exported_text(root: Path) -> dict[str, str]:
    """Every output a run delivers, as text: datastore Parquet (every value), cohort CSVs,
    Segment payloads, the recommendation table, the run report."""
    texts: dict[str, str] = {}
    con = duckdb.connect()
    for path in sorted((root / "datastore").rglob("*")):
        if path.suffix == ".parquet":
            rows = con.execute(f"select * from read_parquet('{path}')").fetchall()
            texts[str(path)] = repr(rows)
        elif path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    con.close()
    for path in sorted((root / "out").rglob("*")):
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    db = sqlite3.connect(root / "warehouse" / "recommendations.sqlite")
    for (table,) in db.execute("select name from sqlite_master where type = 'table'").fetchall():
        texts[f"recommendations.sqlite:{table}"] = repr(db.execute(f"select * from {table}").fetchall())
    db.close()
    return texts


def test_no_personal_data_or_secret_leaves_the_warehouse(uninterrupted: dict) -> None:
    root = uninterrupted["root"]
    wh = duckdb.connect(str(root / "warehouse" / "insights.duckdb"), read_only=True)
    ips = {
        r[0] for r in wh.execute("select distinct user_ipaddress from raw.events where user_ipaddress <> ''").fetchall()
    }
    agents = {
        r[0] for r in wh.execute("select distinct useragent from raw.events where length(useragent) > 20").fetchall()
    }
    emails = {
        m
        for (text,) in wh.execute("select raw_text from ingest.quarantine").fetchall()
        + wh.execute("select record::varchar from raw.singer_records").fetchall()
        for m in re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", text or "")
    }
    wh.close()
    assert len(ips) > 50 and len(agents) > 5 and len(emails) > 10  # the sample carries them: not vacuous
    texts = _exported_text(root)
    assert any("datastore" in k for k in texts) and any("segment_dry_run" in k for k in texts)
    assert any("run_report.html" in k for k in texts) and any("cohorts" in k for k in texts)
    for where, text in texts.items():
        leaked_ips = [ip for ip in ips if ip in text]
        assert not leaked_ips, f"{where} holds IP addresses {leaked_ips[:3]}"
        assert not [a for a in agents if a in text], f"{where} holds raw user agents"
        assert not [e for e in emails if e in text], f"{where} holds e-mail addresses"
        for name, secret in SECRETS.items():
            assert secret not in text, f"{where} holds ${name}"
    for name, secret in SECRETS.items():
        assert secret not in uninterrupted["output"], f"the run printed ${name}"
