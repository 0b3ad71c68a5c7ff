"""Ingest throughput: generate an enriched-TSV site of about N events, ingest it, report.

    python bench/ingest_throughput.py --events 5000000
    python bench/ingest_throughput.py --site /tmp/scale/events_10000000/site --source app

``--site`` ingests a site generated before (by this script or bench/pipeline_scale.py)
instead of generating one; ``--source`` picks which of the site's sources to ingest (web:
the Snowplow enriched TSV, the default; app: the Singer JSONL of the mobile app and the
customers stream; catalog: the items). ``--source clicks`` times an events file instead: a
CSV export of ``--events`` rows (ids, times, visitor and member ids, actions, items, prices,
quantities), written deterministically, mapped by column and event-type maps.

Reports events/s over the whole `insights ingest` run (reading, gunzip, parsing,
quarantine, de-duplication, Great Expectations, insert) and the peak resident memory of
the ingest process. Results are appended to bench/results/ingest.jsonl. Target on the
2-core reference machine: >= 200,000 events/s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _record import machine_cpu, machine_load, record  # noqa: E402  (bench/ is the script's folder)

# Events per simulated user-day of the generator, measured on its defaults.
EVENTS_PER_USER_DAY = 2.5


def _clicks_csv(folder: Path, rows: int) -> dict:
    """An events-file export of ``rows`` clicks (a third of them anonymous), and its source."""
    folder.mkdir(parents=True, exist_ok=True)
    actions = ("view", "view", "view", "cart", "buy")
    with (folder / "clicks.csv").open("w") as out:
        out.write("id,ts,visitor,member,action,sku,price,qty\n")
        for i in range(rows):
            member = f"u{i % 20011}" if i % 3 else ""
            out.write(
                f"e{i},2026-10-{1 + i % 28:02d} {i % 24:02d}:{i % 60:02d}:00,c{i % 50021},{member},"
                f"{actions[i % 5]},sku-{i % 5003},{(i * 7919) % 10000 / 100:.2f},{1 + i % 3}\n"
            )
    return {
        "name": "clicks",
        "kind": "events_file",
        "path": str(folder),
        "columns": {
            "event_id": "id",
            "occurred_at": "ts",
            "anonymous_id": "visitor",
            "user_id": "member",
            "event_name": "action",
            "item_id": "sku",
            "price": "price",
            "quantity": "qty",
        },
        "event_types": {"view": "product_view", "cart": "add_to_cart", "buy": "purchase"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=5_000_000, help="approximate web events to generate")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    parser.add_argument("--site", help="ingest this generated site instead of generating one")
    parser.add_argument(
        "--source", choices=["web", "app", "catalog", "clicks"], default="web", help="the source to ingest"
    )
    args = parser.parse_args()

    from insights.config import default_sources
    from insights.sample import generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="insights-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.source == "clicks":
        site, gen_seconds, summary = work / "clicks", 0.0, {}
        started = time.perf_counter()
        source = _clicks_csv(site, args.events)
        gen_seconds = time.perf_counter() - started
    elif args.site:
        site, gen_seconds = Path(args.site), 0.0
        summary = (
            json.loads((site / "truth" / "summary.json").read_text())
            if (site / "truth" / "summary.json").exists()
            else {}
        )
    else:
        site = work / "site"
        users = max(10, int(args.events / (EVENTS_PER_USER_DAY * args.days)))
        started = time.perf_counter()
        summary = generate(site, users=users, days=args.days, seed=1, compresslevel=1)
        gen_seconds = time.perf_counter() - started
    if args.source != "clicks":
        source = next(s for s in default_sources(str(site)) if s["name"] == args.source)
    config = work / "insights.yml"
    config.write_text(json.dumps({"warehouse": {"path": str(work / "bench.duckdb")}, "sources": [source]}))
    (work / "bench.duckdb").unlink(missing_ok=True)
    env = {**os.environ, "INSIGHTS_CONFIG": str(config)}
    before = machine_cpu()
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "insights.cli", "ingest"], check=True, env=env, cwd=work)
    seconds = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    peak_mb = children.ru_maxrss / 1024
    cpu = children.ru_utime + children.ru_stime
    import duckdb

    con = duckdb.connect(str(work / "bench.duckdb"), read_only=True)
    lines = con.execute("select sum(lines_read) from ingest.loads").fetchone()[0]
    con.close()
    result = {
        "benchmark": "ingest_throughput",
        "lines": int(lines),
        "source": args.source,
        "site": str(site),
        "generated_web_events": summary.get("web_events"),
        "generate_seconds": round(gen_seconds, 1),
        "ingest_seconds": round(seconds, 1),
        "events_per_second": round(lines / seconds),
        "peak_rss_mb": round(peak_mb),
        "cpu_seconds": round(cpu, 1),
        **machine_load(before, machine_cpu(), cpu),
        "target_events_per_second": 200_000,
    }
    record("ingest", result)


if __name__ == "__main__":
    main()
