"""The whole pipeline at scale: generate a site of about N events, run every stage in its own
process (wall time and peak memory each), then one more hour of events through the refresh
path (ingest, transform, score, export, report: what insights_refresh runs).

    python bench/pipeline_scale.py --events 10000000      # about 500k users, 50k items, 90 days
    python bench/pipeline_scale.py --events 1000000 --events 3000000 --events 10000000

The site keeps the issue's shape at every size: 20 events per user over 90 days (most
visitors come a few times), a tenth as many items as users. The last hour of files is held
back for the incremental run. Before it, the history gets the load times that hourly
loads would have given it (its last hour an hour ago, the rest a day ago): here it was all
loaded minutes earlier in one ingest and would fall inside the incremental models'
one-hour lookback, so the refresh would recompute everything. ``--refresh-again DIR`` repeats the incremental run on a kept
work folder (the last load is taken out and loaded again). ``--reuse-site`` (with
``--workdir``) keeps a site generated there before (about 9 minutes at 10M). Results go to
bench/results/pipeline.jsonl. Targets on the
2-core reference machine at 10M events: full run <= 300 s, peak memory <= 6 GB,
incremental refresh <= 60 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _record import machine_cpu, machine_load, machine_probe, record, run_child  # noqa: E402  (bench/ is the script's folder)

EVENTS_PER_USER = 20
# Visit-rate scale of the generator that gives about EVENTS_PER_USER over 90 days.
ACTIVITY = 0.09
END = datetime(2026, 11, 1)
FULL = ["ingest", "transform", "train", "score", "export", "report"]
REFRESH = ["ingest", "transform", "score", "export", "report"]


def run_stage(stage: str, as_of: str) -> None:
    """Child mode: one step in this process, its summary's headline as JSON on stdout."""
    from insights import steps
    from insights.config import load_config

    config = load_config()
    moment = steps.parse_as_of(as_of)
    summary = steps.run_step(stage, config, moment)
    out = {"headline": steps.headline(stage, summary)}
    if stage in ("export", "train", "score"):
        out["parts"] = summary["seconds"]
    if stage == "transform":
        out["slowest"] = sorted(((m["name"], m["seconds"]) for m in summary["models"]), key=lambda x: -x[1])[:5]
    print("STAGE" + json.dumps(out))


def _stage(stage: str, as_of: str, env: dict[str, str], cwd: Path) -> dict:
    # wait4: this stage's own peak memory and CPU time, its children's (dbt, ALS workers)
    # included: CPU seconds over wall seconds says how much of the two cores a stage used.
    # The machine's CPU time around it: a stage slowed by the host (steal) or by another
    # process is told apart from one slowed by the code.
    before = machine_cpu()
    code, out, err, usage, seconds = run_child(
        [sys.executable, __file__, "--stage", stage, "--as-of", as_of], env=env, cwd=cwd
    )
    if code != 0:
        raise SystemExit(f"{stage} failed ({code}):\n{err[-3000:]}")
    line = next((x for x in out.splitlines() if x.startswith("STAGE")), "STAGE{}")
    cpu = usage.ru_utime + usage.ru_stime
    result = {
        "stage": stage,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),
        **machine_load(before, machine_cpu(), cpu),
    }
    result.update(json.loads(line[len("STAGE") :]))
    load = (
        f"  steal {result['steal_pct']}%, others {result['others_cpu_seconds']} CPU-s" if "steal_pct" in result else ""
    )
    print(
        f"  {stage:<9} {seconds:7.1f}s  {cpu:7.1f} CPU-s  {result['peak_rss_mb']:6,} MB{load}  {result.get('headline', '')}",
        flush=True,
    )
    return result


# The time column that says in which hourly load a row of an event table would have come.
_LOAD_TIME = {
    ("raw", "events"): "coalesce(collector_tstamp, occurred_at)",
    ("main", "fct_events"): "coalesce(collector_tstamp, occurred_at)",
    ("main", "fct_page_views"): "ended_at",
    ("main", "fct_sessions"): "ended_at",
}


def _age_history(workdir: Path, history_end: datetime) -> None:
    """Give the history the load times hourly loads would have given it: rows of its last
    hour (before ``history_end``) were loaded an hour ago, everything older a day ago.

    Here the whole history was loaded minutes ago in one ingest, so every row would fall in
    the incremental models' one-hour lookback behind their high-water mark and the refresh
    would recompute everything. (Moving every load time back by the same amount does not
    help: the high-water mark moves with it.)"""
    import duckdb

    last_hour = history_end - timedelta(hours=1)
    con = duckdb.connect(str(workdir / "warehouse" / "insights.duckdb"))
    tables = con.execute(
        "select c.table_schema, c.table_name from information_schema.columns c join information_schema.tables t "
        "using (table_schema, table_name) where c.column_name = 'loaded_at' and t.table_type = 'BASE TABLE' "
        "and c.table_schema in ('raw', 'main')"
    ).fetchall()
    for schema, table in tables:
        when = _LOAD_TIME.get((schema, table))
        recent = f"{when} >= ?" if when else "false"
        con.execute(
            f"update {schema}.{table} set loaded_at = case when {recent} "
            "then now()::timestamp - interval 1 hour else now()::timestamp - interval 1 day end",
            [last_hour] if when else [],
        )
    con.execute("update ingest.load_manifest set loaded_at = now()::timestamp - interval 1 day")
    # The previous hour's build of the user models saw every event loaded so far.
    for (table,) in con.execute(
        "select table_name from information_schema.tables where table_schema = 'build_state'"
    ).fetchall():
        con.execute(f"update build_state.{table} set loaded_at = (select max(loaded_at) from main.fct_events)")
    con.close()


def _refresh(workdir: Path, as_of: str, env: dict[str, str]) -> dict:
    # The refresh's hour is the hour before its as-of instant; the history ends where it starts.
    _age_history(workdir, datetime.fromisoformat(as_of) - timedelta(hours=1))
    refresh = [_stage(stage, as_of, env, workdir) for stage in REFRESH]
    return {
        "incremental_seconds": round(sum(s["seconds"] for s in refresh), 1),
        "incremental_peak_rss_mb": max(s["peak_rss_mb"] for s in refresh),
        "incremental_stages": refresh,
    }


def refresh_again(workdir: Path) -> dict:
    """The incremental run once more on a kept work folder: the last load is removed from
    the raw tables and the load manifest; the warehouse is transformed and scored as of the
    hour before the last transform's instant (untimed: what the previous hourly run leaves,
    its point-in-time models and stored picks), history aged, then the refresh path runs as
    of that instant."""
    import duckdb

    con = duckdb.connect(str(workdir / "warehouse" / "insights.duckdb"))
    load_id, as_of = con.execute(
        "select load_id, (select max(as_of) from main.dim_users) from ingest.loads "
        "where source_name = 'web' order by started_at desc limit 1"
    ).fetchone()
    con.execute("delete from raw.events where load_id = ?", [load_id])
    con.execute("delete from ingest.load_manifest where load_id = ?", [load_id])
    events = con.execute("select count(*) from raw.events").fetchone()[0]
    con.close()
    env = {**os.environ, "INSIGHTS_CONFIG": str(workdir / "insights.yml"), "OPENBLAS_NUM_THREADS": "1"}
    print(f"refresh again on {workdir} ({events:,} events), as of {as_of:%Y-%m-%dT%H:%M:%S}")
    previous_hour = (as_of - timedelta(hours=1)).isoformat()
    for stage in ("transform", "score"):
        done = _stage(stage, previous_hour, env, workdir)
        print(f"  (the previous hour's {stage}: {done['seconds']}s, not counted)")
    probe_before = machine_probe()
    refresh = _refresh(workdir, as_of.isoformat(), env)
    return {
        "benchmark": "pipeline_scale_refresh",
        "workdir": str(workdir),
        "raw_events": events,
        **refresh,
        "machine_probe": {"before": probe_before, "after": machine_probe()},
    }


def _site(events: int, days: int, workdir: Path, reuse: bool) -> tuple[dict, float]:
    """Generate the site into ``workdir/site`` (or, with ``reuse``, keep the one a previous
    run generated there with the same parameters); everything else in ``workdir`` is removed."""
    from insights.sample import generate

    users = max(100, events // EVENTS_PER_USER)
    params = {"users": users, "days": days, "seed": 3, "items": max(200, users // 10), "activity": ACTIVITY}
    site, stamp = workdir / "site", workdir / "site.json"
    kept = json.loads(stamp.read_text()) if reuse and stamp.exists() and site.exists() else None
    # A run stopped while the last hour was held back left the site incomplete.
    if kept is None or kept["params"] != params or (workdir / "later").exists():
        kept = None
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        for path in workdir.iterdir():
            if path not in (site, stamp):
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    if kept is not None:
        print(f"reusing the site generated in {kept['seconds']:.0f}s in {site}")
        return kept["summary"], kept["seconds"]
    started = time.perf_counter()
    summary = generate(site, **params, compresslevel=1)
    seconds = time.perf_counter() - started
    stamp.write_text(json.dumps({"params": params, "summary": summary, "seconds": seconds}, default=str))
    return summary, seconds


def bench(events: int, days: int, workdir: Path, reuse_site: bool = False) -> dict:
    from insights.config import default_sources

    summary, generate_seconds = _site(events, days, workdir, reuse_site)
    site = workdir / "site"
    # Hold back the last hour of web files: the incremental run loads it.
    hours = sorted({p.parent for p in (site / "snowplow_enriched").rglob("*.tsv.gz")})
    # The last hour of the site's days (later folders hold only late arrivals).
    last_hour = max(h for h in hours if datetime.strptime("/".join(h.parts[-4:]), "%Y/%m/%d/%H") < END)
    later = workdir / "later"
    shutil.move(str(last_hour), str(later))
    held = sum(1 for _ in later.glob("*.tsv.gz"))
    hour = datetime.strptime("/".join(last_hour.parts[-4:]), "%Y/%m/%d/%H")
    as_of = hour.isoformat()
    config = workdir / "insights.yml"
    config.write_text(
        json.dumps(
            {
                "sources": default_sources(str(site)),
                "cohorts": {"folder": None},
                "warehouse": {"memory_limit": "5GB"},
            }
        )
    )
    env = {**os.environ, "INSIGHTS_CONFIG": str(config), "OPENBLAS_NUM_THREADS": "1"}
    print(
        f"{events:,} events asked: {summary['web_events']:,} web + {summary['app_events']:,} app events, "
        f"{summary['users']:,} people, {summary['items']:,} items, generated in {generate_seconds:.0f}s; as of {as_of}"
    )
    # The machine's speed before and after (see _record.machine_probe).
    probe_before = machine_probe()
    full = [_stage(stage, as_of, env, workdir) for stage in FULL]
    shutil.move(str(later), str(last_hour))
    next_as_of = (hour + timedelta(hours=1)).isoformat()
    refresh = _refresh(workdir, next_as_of, env)
    probe = {"before": probe_before, "after": machine_probe()}
    import duckdb

    con = duckdb.connect(str(workdir / "warehouse" / "insights.duckdb"), read_only=True)
    counts = con.execute(
        "select (select count(*) from raw.events), (select count(*) from main.user_insights), "
        "(select count(*) from main.dim_items)"
    ).fetchone()
    con.close()
    return {
        "benchmark": "pipeline_scale",
        "events_asked": events,
        "raw_events": counts[0],
        "users_scored": counts[1],
        "items": counts[2],
        "days": days,
        "generate_seconds": round(generate_seconds, 1),
        "full_seconds": round(sum(s["seconds"] for s in full), 1),
        "full_cpu_seconds": round(sum(s["cpu_seconds"] for s in full), 1),
        "full_peak_rss_mb": max(s["peak_rss_mb"] for s in full),
        "stages": full,
        "incremental_hour_files": held,
        **refresh,
        "machine_probe": probe,
        "targets": {"full_seconds": 300, "peak_rss_mb": 6144, "incremental_seconds": 60},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, action="append", help="approximate events (repeatable)")
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--workdir", help="keep the data here (default: a temporary folder per size, removed)")
    parser.add_argument(
        "--reuse-site",
        action="store_true",
        help="with --workdir: keep a site generated there before with the same size",
    )
    parser.add_argument("--refresh-again", metavar="DIR", help="repeat the incremental run on a kept work folder")
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--as-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        run_stage(args.stage, args.as_of)
        return
    if args.refresh_again:
        record("pipeline", refresh_again(Path(args.refresh_again)))
        return
    for events in args.events or [10_000_000]:
        work = (
            Path(args.workdir) / f"events_{events}"
            if args.workdir
            else Path(tempfile.mkdtemp(prefix="insights-scale-"))
        )
        try:
            record("pipeline", bench(events, args.days, work, reuse_site=bool(args.workdir and args.reuse_site)))
        finally:
            if not args.workdir:
                shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
