"""``privacy.retention_days`` on a site of ``pipeline_scale.py``: its warehouse copied to a
scratch folder, then the expiry every ingest runs, in a child process (wall time, peak memory
by ``wait4``), twice: at an instant when nothing is old enough (what an hourly ingest pays),
then at one that expires the first ``--expire-days`` of the site's history.

    python bench/retention_scale.py --site /tmp/scale/events_10000000 --expire-days 30

The instants are chosen from the site's events (a bench site's history is older than the
shortest retention training allows, so the wall clock would expire nothing or everything).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _record import record, run_child  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def expire_child(config_path: str, now: str) -> None:
    """Child mode: the expiry as of ``now``, its result as JSON on stdout."""
    sys.path.insert(0, str(ROOT))
    from datetime import datetime

    from insights.config import load_config
    from insights.privacy import expire
    from insights.warehouse import connect

    config = load_config(config_path)
    con = connect(config)
    try:
        result = expire(config, con, datetime.fromisoformat(now))
    finally:
        con.close()
    print("EXPIRED" + json.dumps(result))


def measure(config: Path, now: str) -> dict:
    code, out, err, usage, wall = run_child([sys.executable, __file__, "--child", str(config), now])
    if code:
        raise SystemExit(f"expiry failed: {err.strip()[-2000:]}")
    line = next(x for x in out.splitlines() if x.startswith("EXPIRED"))
    return {
        "now": now,
        "wall_s": round(wall, 2),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_mb": round(usage.ru_maxrss / 1024),
        "removed": json.loads(line[len("EXPIRED") :])["removed"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", help="a pipeline_scale.py workdir (events_N)")
    parser.add_argument("--expire-days", type=int, default=30)
    parser.add_argument("--retention-days", type=int, default=154)
    args = parser.parse_args()
    if not args.site:
        parser.error("--site is required")
    import duckdb
    import yaml

    site = Path(args.site)
    work = Path(tempfile.mkdtemp(prefix="retention-bench-"))
    try:
        shutil.copytree(site / "warehouse", work / "warehouse")
        settings = yaml.safe_load((site / "insights.yml").read_text())
        config = work / "insights.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "warehouse": {
                        "path": str(work / "warehouse" / "insights.duckdb"),
                        **{k: v for k, v in (settings.get("warehouse") or {}).items() if k != "path"},
                    },
                    "privacy": {"retention_days": args.retention_days},
                }
            )
        )
        con = duckdb.connect(str(work / "warehouse" / "insights.duckdb"), read_only=True)
        first, events = con.execute("select min(occurred_at), count(*) from raw.events").fetchone()
        con.close()
        keep = timedelta(days=args.retention_days)
        result = {"site": str(site), "events": events, "retention_days": args.retention_days}
        result["nothing_old"] = measure(config, (first + keep - timedelta(days=1)).isoformat())
        result["expire"] = measure(config, (first + keep + timedelta(days=args.expire_days)).isoformat())
        result["expire_days"] = args.expire_days
        record("retention_scale", result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:  # the measured child: config file, instant
        expire_child(*sys.argv[2:4])
    else:
        main()
