"""The floor under Snowplow ingest: what any load of an enriched-TSV batch must do, timed alone.

    python bench/ingest_floor.py --site /tmp/scale/events_10000000/site

Takes one batch of a generated site's enriched TSV files (``--batch-bytes`` of gzip, as
``ingest.batch_bytes`` cuts them, starting at file ``--skip``) and times, in this process
and each on its own, the parts no load can skip: read the files, checksum them (the load
manifest), gunzip, parse the fields the canonical events need (polars, as the load does),
and insert them, typed, into an empty ``raw.events`` of the warehouse's own schema, then
commit. Nothing else: no field count or quarantine, no JSON contexts (page view ids,
products, orders), no checks, no de-duplication, no Great Expectations. Each part's best
of ``--repeats`` runs is reported in CPU seconds (all threads) and in microseconds a line.

The sum bounds the load from below: with both cores busy all the time, ``2 / floor`` lines a
second is the most any load built on these parts could reach. Compare it with what the whole
load spends (``bench/ingest_throughput.py`` records ``cpu_seconds``) and with the issue's
target (200,000 events/s on two cores: 10 CPU-microseconds a line). Results are appended to
bench/results/ingest_floor.jsonl.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import duckdb  # noqa: E402
from _record import machine_cpu, machine_load, record  # noqa: E402  (bench/ is the script's folder)

# polars as the load has it (insights.ingest.snowplow sets its allocator before importing it).
from insights.ingest.loader import file_batches  # noqa: E402
from insights.ingest.snowplow import NEEDED_FIELDS, needed_fields, pl  # noqa: E402
from insights.storage import FileRef, checksum, decompress  # noqa: E402
from insights.warehouse import DDL, EVENT_COLUMNS  # noqa: E402

# raw.events columns filled straight from an enriched field, cast to the column's type;
# the rest (event type, items, prices, page view ids: the JSON a real load reads) stay null.
DIRECT = {
    "event_id": "event_id",
    "event_name": "event",
    "occurred_at": "derived_tstamp",
    "user_id": "user_id",
    "anonymous_id": "domain_userid",
    "session_id": "domain_sessionid",
    "page_url": "page_url",
    "referrer": "page_referrer",
    "app_id": "app_id",
    "platform": "platform",
    "collector_tstamp": "collector_tstamp",
    "dvce_created_tstamp": "dvce_created_tstamp",
    "session_index": "domain_sessionidx",
    "page_title": "page_title",
    "page_urlhost": "page_urlhost",
    "page_urlpath": "page_urlpath",
    "refr_medium": "refr_medium",
    "refr_source": "refr_source",
    "mkt_medium": "mkt_medium",
    "mkt_source": "mkt_source",
    "mkt_campaign": "mkt_campaign",
    "useragent": "useragent",
    "user_ipaddress": "user_ipaddress",
    "network_userid": "network_userid",
}
TARGET_EVENTS_PER_SECOND = 200_000


def batch_files(site: Path, batch_bytes: int, skip: int) -> list[Path]:
    """The first batch of the site's enriched TSV files from file ``skip`` on, cut as the
    load cuts its batches (:func:`file_batches`)."""
    files = sorted((site / "snowplow_enriched").rglob("*.gz"))[skip:]
    if not files:
        raise SystemExit(f"no enriched TSV files (*.gz) under {site / 'snowplow_enriched'} after the first {skip}")
    first = file_batches([FileRef(str(p), p.stat().st_size, 0.0) for p in files], batch_bytes)[0]
    return [Path(ref.path) for ref in first]


def insert_sql() -> str:
    """The cheapest typed insert: each column from its field by a plain cast, or null."""
    fields = set(NEEDED_FIELDS)
    missing = sorted(f for f in DIRECT.values() if f not in fields)
    if missing:
        raise SystemExit(f"fields not parsed by the load: {', '.join(missing)}")
    columns = ", ".join(EVENT_COLUMNS)
    values = ", ".join(
        f"try_cast({DIRECT[name]} as {kind})" if name in DIRECT else f"null::{kind}"
        for name, kind in EVENT_COLUMNS.items()
    )
    return f"insert into raw.events ({columns}) select {values} from frame"


def _parse(texts: list[bytes]) -> Any:
    """The needed fields of every line, as the load reads them (Arrow string views)."""
    return needed_fields(texts).to_arrow(compat_level=pl.CompatLevel.newest())


def measure(batch: list[Path], repeats: int) -> tuple[int, dict[str, tuple[float, float]]]:
    """Lines in the batch and, per part, its best (CPU seconds, wall seconds)."""
    runs: dict[str, list[tuple[float, float]]] = {}

    def timed(label: str, work: Callable[..., Any], *args: Any) -> Any:
        cpu, wall = time.process_time(), time.perf_counter()
        out = work(*args)
        runs.setdefault(label, []).append((time.process_time() - cpu, time.perf_counter() - wall))
        return out

    sql = insert_sql()
    lines = 0
    with tempfile.TemporaryDirectory(prefix="insights-floor-") as folder:
        for repeat in range(repeats):
            stored = timed("read", lambda paths: [p.read_bytes() for p in paths], batch)
            timed("checksum", lambda blobs: [checksum(b) for b in blobs], stored)
            texts = timed("gunzip", lambda blobs: [decompress(b, str(p)) for b, p in zip(blobs, batch)], stored)
            lines = sum(text.count(b"\n") for text in texts)
            frame = timed("parse", _parse, texts)
            con = duckdb.connect(os.path.join(folder, f"floor_{repeat}.duckdb"))
            try:
                con.execute(DDL)
                con.execute("checkpoint")
                con.register("frame", frame)
                con.execute("begin")
                timed("insert", con.execute, sql)
                timed("commit", con.execute, "commit")
                if con.execute("select count(*) from raw.events").fetchone()[0] != frame.num_rows:
                    raise SystemExit("the insert lost rows")
            finally:
                con.close()
    best = {label: (min(c for c, _ in r), min(w for _, w in r)) for label, r in runs.items()}
    return lines, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--site", type=Path, required=True, help="a generated site (its snowplow_enriched folder)")
    parser.add_argument("--batch-bytes", type=int, default=32 * 2**20, help="gzip bytes in the batch (32 MiB)")
    parser.add_argument(
        "--skip", type=int, default=200, help="files before the batch (the site's first days are quiet)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    batch = batch_files(args.site, args.batch_bytes, args.skip)
    before = machine_cpu()
    own = time.process_time()
    lines, best = measure(batch, args.repeats)
    load = machine_load(before, machine_cpu(), time.process_time() - own)
    floor = sum(cpu for cpu, _ in best.values())
    print(f"{len(batch)} files, {lines:,} lines; best of {args.repeats}, each part alone:")
    for label, (cpu, wall) in best.items():
        print(f"  {label:9s} {cpu:6.3f} CPU-s  {wall:6.3f} s wall  {1e6 * cpu / lines:5.2f} us/line")
    ceiling = 2 * lines / floor
    print(
        f"  {'floor':9s} {floor:6.3f} CPU-s  {1e6 * floor / lines:5.2f} us/line: at most {ceiling:,.0f} lines/s "
        f"on two cores busy all the time (target {TARGET_EVENTS_PER_SECOND:,} events/s: "
        f"{1e6 * 2 / TARGET_EVENTS_PER_SECOND:.0f} us/line)"
    )
    record(
        "ingest_floor",
        {
            "benchmark": "ingest_floor",
            "site": str(args.site),
            "files": len(batch),
            "lines": lines,
            "repeats": args.repeats,
            "parts_cpu_seconds": {label: round(cpu, 3) for label, (cpu, _) in best.items()},
            "parts_wall_seconds": {label: round(wall, 3) for label, (_, wall) in best.items()},
            "floor_cpu_seconds": round(floor, 3),
            "floor_us_per_line": round(1e6 * floor / lines, 2),
            "ceiling_lines_per_second": round(ceiling),
            "target_events_per_second": TARGET_EVENTS_PER_SECOND,
            **load,
        },
    )


if __name__ == "__main__":
    main()
