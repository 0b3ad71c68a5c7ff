"""dbt build at scale: a full build over about N events, then one more hour incrementally.

    python bench/dbt_build.py --events 10000000

A base site (--base-users people over --days days) is generated and ingested, then its
events are replicated in DuckDB under new ids (user, cookie, session, page view, order and
event ids suffixed per copy) until about N events: the behaviour of the base site, at scale.
The last hour is held back, `insights transform --full-refresh` is timed, then that hour is
loaded as a new batch and the incremental `insights transform` is timed. dbt runs in a
child process, so the peak RSS reported is dbt's. Results are appended to
bench/results/dbt.jsonl. Targets on the 2-core reference machine: full build <= 120 s,
incremental hour <= 20 s.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _record import record  # noqa: E402  (bench/ is the script's folder)

ID_COLUMNS = ("event_id", "user_id", "anonymous_id", "session_id", "page_view_id", "order_id")


def _peak_child_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--base-users", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    args = parser.parse_args()

    import duckdb

    from insights import steps
    from insights.config import load_config
    from insights.sample import generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="insights-dbt-bench-"))
    site = work / "site"
    if not (site / "truth").exists():
        generate(site, users=args.base_users, days=args.days, seed=3, compresslevel=1)
    config_path = work / "insights.yml"
    config_path.write_text(
        f"warehouse: {{path: {work / 'bench.duckdb'}, memory_limit: 6GB}}\n"
        f"sources:\n  - {{name: web, kind: snowplow_enriched, path: {site / 'snowplow_enriched'}}}\n"
        f"  - {{name: catalog, kind: catalog, path: {site / 'catalog'}}}\n"
    )
    (work / "bench.duckdb").unlink(missing_ok=True)
    config = load_config(config_path, environ={})
    steps.ingest(config)

    con = duckdb.connect(str(work / "bench.duckdb"))
    base = con.execute("select count(*) from raw.events").fetchone()[0]
    copies = max(1, round(args.events / base))
    replaced = ", ".join(f"{c} || '~' || k as {c}" for c in ID_COLUMNS)
    started = time.perf_counter()
    con.execute(
        f"""
        create table raw.base_events as select * from raw.events;
        insert into raw.events
            select * exclude (k) replace ({replaced})
            from raw.base_events, (select range::varchar as k from range(1, {copies})) as copies;
        drop table raw.base_events;
        -- Steady state: as if every hour's events had been loaded an hour later.
        update raw.events set loaded_at = date_trunc('hour', coalesce(collector_tstamp, occurred_at)) + interval 1 hour;
        """
    )
    max_at = con.execute("select max(occurred_at) from raw.events").fetchone()[0]
    con.execute(
        "create table raw.last_hour as select * from raw.events where occurred_at >= ? - interval 1 hour", [max_at]
    )
    con.execute("delete from raw.events where event_id in (select event_id from raw.last_hour)")
    total = con.execute("select count(*) from raw.events").fetchone()[0]
    hour = con.execute("select count(*) from raw.last_hour").fetchone()[0]
    con.close()
    replicate_seconds = time.perf_counter() - started
    as_of = steps.parse_as_of(max_at.replace(minute=0, second=0, microsecond=0).isoformat())

    started = time.perf_counter()
    full = steps.transform(config, as_of, full_refresh=True)
    full_seconds = time.perf_counter() - started
    full_peak = _peak_child_mb()

    con = duckdb.connect(str(work / "bench.duckdb"))
    con.execute(
        "insert into raw.events select * replace ("
        "(select max(loaded_at) from raw.events) + interval 1 hour as loaded_at) from raw.last_hour;"
        "drop table raw.last_hour;"
    )
    con.close()
    started = time.perf_counter()
    incremental = steps.transform(config, steps.parse_as_of(max_at.isoformat()))
    incremental_peak = _peak_child_mb()
    incremental_seconds = time.perf_counter() - started
    result = {
        "benchmark": "dbt_build",
        "events": total,
        "base_events": base,
        "copies": copies,
        "users": full["rows"].get("dim_users"),
        "sessions": full["rows"].get("fct_sessions"),
        "replicate_seconds": round(replicate_seconds, 1),
        "full_build_seconds": round(full_seconds, 1),
        "full_build_peak_rss_mb": round(full_peak),
        "slowest_models": sorted(((m["name"], m["seconds"]) for m in full["models"]), key=lambda x: -x[1])[:5],
        "incremental_hour_events": hour,
        "incremental_seconds": round(incremental_seconds, 1),
        "incremental_slowest_models": sorted(
            ((m["name"], m["seconds"]) for m in incremental["models"]), key=lambda x: -x[1]
        )[:5],
        "peak_rss_mb_all_runs": round(incremental_peak),
        "targets": {"full_build_seconds": 120, "incremental_seconds": 20},
    }
    record("dbt", result)


if __name__ == "__main__":
    main()
