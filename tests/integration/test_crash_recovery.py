"""Nothing lost, nothing duplicated, nothing leaked.

A run killed by SIGKILL in the middle of ingest, of the dbt build, of the exports and of the
datastore publish, then run again, ends with exactly the outputs of a run that was never
interrupted (same datastore tables, row for row, same warehouse events, same cohort files,
Segment messages and recommendation table). And the outputs of a run carry no IP address,
user agent or e-mail address from the clickstream, and no secret from the environment; a
person forgotten leaves the warehouse and every output, and is not loaded again."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
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
    "SEGMENT_API_TOKEN": "fake-segment-public-api-token-for-tests",
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


def _people_in_warehouse(path: Path, ids: set[str]) -> list[str]:
    """Every warehouse table (outside ``privacy``) with a value holding one of ``ids``."""
    con = duckdb.connect(str(path), read_only=True)
    found = []
    for schema, table in con.execute(
        "select table_schema, table_name from information_schema.tables "
        "where table_type = 'BASE TABLE' and table_schema <> 'privacy'"
    ).fetchall():
        columns = [c[0] for c in con.execute(f'describe "{schema}"."{table}"').fetchall()]
        text = " || '|' || ".join(f"coalesce(\"{c}\"::varchar, '')" for c in columns)
        for id_ in ids:
            if con.execute(f'select count(*) from "{schema}"."{table}" where contains({text}, ?)', [id_]).fetchone()[0]:
                found.append(f"{schema}.{table}: {id_}")
    con.close()
    return found


def _model_users(root: Path) -> set[str]:
    users: set[str] = set()
    for path in (root / "warehouse" / "models").rglob("als.npz"):
        with np.load(path) as arrays:
            users |= set(arrays["user_ids"].tolist())
    return users


def test_a_forgotten_person_leaves_every_output_and_never_comes_back(
    site: Path, uninterrupted: dict, tmp_path: Path
) -> None:
    root = tmp_path / "forget"
    shutil.copytree(uninterrupted["root"], root)
    warehouse = root / "warehouse" / "insights.duckdb"
    wh = duckdb.connect(str(warehouse), read_only=True)
    # An identified user with cookies nobody else used, and a visitor who never logged in.
    user, cookies = wh.execute(
        """
        select user_id, list(distinct anonymous_id order by anonymous_id) from raw.events e
        where user_id in (select user_id from main.recommendations) and anonymous_id is not null
          and not exists (select 1 from raw.events o where o.anonymous_id = e.anonymous_id and o.user_id <> e.user_id)
        group by user_id having count(distinct anonymous_id) >= 2 order by user_id limit 1
        """
    ).fetchone()
    (visitor,) = wh.execute(
        "select user_id from main.user_insights where not is_identified "
        "and user_id in (select user_id from main.recommendations) order by user_id limit 1"
    ).fetchone()
    events_before, theirs = wh.execute(
        "select count(*), count(*) filter (where user_id = ? or anonymous_id in (select unnest(?)) "
        "or anonymous_id = ?) from raw.events",
        [user, cookies, visitor],
    ).fetchone()
    # Their session ids, which only their events carry: bytes to look for in the file.
    sessions = [
        r[0]
        for r in wh.execute(
            "select session_id from raw.events where session_id is not null group by session_id having "
            "bool_and(coalesce(user_id = ? or anonymous_id in (select unnest(?)) or anonymous_id = ?, false))",
            [user, cookies, visitor],
        ).fetchall()
    ]
    wh.close()
    assert len(sessions) >= 2 and all(s.encode() in warehouse.read_bytes() for s in sessions)
    ids = {user, visitor, *cookies}
    before = _exported_text(root)
    # Not vacuous: they are in the warehouse, the datastore, the CSVs, Segment's file, the
    # recommendation table (the cookies as aliases) and the model.
    assert theirs > 20 and _people_in_warehouse(warehouse, ids)
    for id_ in ids:
        assert any(id_ in text for text in before.values()), id_
    assert any("segment_dry_run" in k and user in t for k, t in before.items())
    assert {user, visitor} <= _model_users(root)
    users_before = read_latest_rows(root, "user_insights")

    env = {k: v for k, v in os.environ.items() if not k.startswith("INSIGHTS")} | SECRETS
    command = [INSIGHTS, "--config", str(root / "insights.yml"), "forget", user, visitor]
    dry = subprocess.run([*command, "--dry-run"], env=env, capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert "Nothing was changed" in dry.stdout and _exported_text(root) == before

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "recorded in privacy.forgotten" in done.stdout
    assert _people_in_warehouse(warehouse, ids) == []
    for where, text in _exported_text(root).items():
        assert not [i for i in ids if i in text], f"{where} still names a forgotten id"
    assert not ({user, visitor} & _model_users(root))
    wh = duckdb.connect(str(warehouse), read_only=True)
    assert wh.execute("select count(*) from raw.events").fetchone()[0] == events_before - theirs
    wh.close()
    # Everyone else's rows are untouched.
    users_after = read_latest_rows(root, "user_insights")
    assert users_after == [r for r in users_before if r[0] not in ids]
    # Then the warehouse file rewritten: no byte of their rows is left on disk.
    compacted = subprocess.run(
        [*command[:-3], "forget", "--compact"], env=env, capture_output=True, text=True, timeout=300
    )
    assert compacted.returncode == 0, compacted.stderr
    assert "rewritten with only its live rows" in compacted.stdout
    assert not [s for s in sessions if s.encode() in warehouse.read_bytes()]
    assert _people_in_warehouse(warehouse, ids) == []

    # The same files delivered again (a site moved to a new folder, so every file is new):
    # the forgotten people's lines are counted, not loaded, and the run's outputs stay clean.
    moved = tmp_path / "moved_site"
    shutil.copytree(site, moved)
    config = yaml.safe_load((root / "insights.yml").read_text())
    config["sources"] = default_sources(str(moved))
    (root / "insights.yml").write_text(yaml.safe_dump(config))
    rerun = subprocess.run(
        [INSIGHTS, "--config", str(root / "insights.yml"), "run", "--as-of", AS_OF],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rerun.returncode == 0, rerun.stderr
    wh = duckdb.connect(str(warehouse), read_only=True)
    loads = wh.execute(
        "select sum(forgotten), bool_and(lines_read = loaded + duplicates + quarantined + control_messages + "
        "forgotten) from ingest.loads where forgotten is not null and started_at > (select max(recorded_at) "
        "from privacy.forgotten)"
    ).fetchone()
    assert wh.execute("select count(*) from raw.events").fetchone()[0] == events_before - theirs
    wh.close()
    assert loads[0] >= theirs // 2 and loads[1]
    assert _people_in_warehouse(warehouse, ids) == []
    for where, text in _exported_text(root).items():
        assert not [i for i in ids if i in text], f"{where} names a forgotten id after the next run"


def read_latest_rows(root: Path, table: str) -> list[tuple]:
    """The rows of a datastore table's latest partition, sorted."""
    store = root / "datastore" / table
    manifest = json.loads((store / json.loads((store / "_latest").read_text())["manifest"]).read_text())
    con = duckdb.connect()
    rows = con.execute(
        f"select * from read_parquet({[str(root / 'datastore' / f['key']) for f in manifest['files']]!r})"
    )
    found = sorted(rows.fetchall(), key=repr)
    con.close()
    return found
