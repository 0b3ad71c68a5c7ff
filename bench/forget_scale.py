"""``insights forget`` on a site of ``pipeline_scale.py``: its warehouse and outputs copied to
a scratch folder, then one user (with the cookies they were seen with) and then ``--users``
more forgotten, each by the CLI in a child process (wall time, peak memory by ``wait4``,
the command's own seconds per part), then the warehouse file rewritten without the removed
rows (``insights forget --compact``).

    python bench/forget_scale.py --site /tmp/scale/events_10000000 --users 1000
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _record import record, run_child  # noqa: E402

INSIGHTS = str(Path(sys.executable).with_name("insights"))


def forget(config: Path, ids_file: Path) -> dict:
    code, out, err, usage, wall = run_child([INSIGHTS, "--config", str(config), "forget", "--file", str(ids_file)])
    if code:
        raise SystemExit(f"insights forget failed: {err.strip()}")
    text = " ".join(out.split())
    seconds = dict(re.findall(r"(\w+) (\d+\.\d+)", text.split("seconds:", 1)[1].split("Request")[0]))
    rows = re.search(r"warehouse: removed ([\d,]+) row", text)
    return {
        "wall_s": round(wall, 2),
        "peak_mb": round(usage.ru_maxrss / 1024),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "warehouse_rows": int(rows.group(1).replace(",", "")) if rows else 0,
        "seconds": {k: float(v) for k, v in seconds.items()},
    }


def compact(config: Path) -> dict:
    code, out, err, usage, wall = run_child([INSIGHTS, "--config", str(config), "forget", "--compact"])
    if code:
        raise SystemExit(f"insights forget --compact failed: {err.strip()}")
    sizes = re.search(r"([\d,.]+) MB -> ([\d,.]+) MB", " ".join(out.split()))
    return {
        "wall_s": round(wall, 2),
        "peak_mb": round(usage.ru_maxrss / 1024),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "mb_before": float(sizes.group(1).replace(",", "")),
        "mb_after": float(sizes.group(2).replace(",", "")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", required=True, help="a pipeline_scale.py workdir (events_N)")
    parser.add_argument("--users", type=int, default=1000)
    args = parser.parse_args()
    import duckdb

    site = Path(args.site)
    work = Path(tempfile.mkdtemp(prefix="forget-bench-"))
    try:
        for name in ("insights.yml", "warehouse", "datastore", "out"):
            (shutil.copytree if (site / name).is_dir() else shutil.copy)(site / name, work / name)
        con = duckdb.connect(str(work / "warehouse" / "insights.duckdb"), read_only=True)
        (one,) = con.execute(
            "select user_id from main.dim_identity_map group by 1 having count(*) >= 2 order by user_id limit 1"
        ).fetchone()
        many = [
            r[0]
            for r in con.execute(
                "select user_id from main.user_insights where is_identified and user_id <> ? "
                "order by hash(user_id) limit ?",
                [one, args.users],
            ).fetchall()
        ]
        events = con.execute("select count(*) from raw.events").fetchone()[0]
        con.close()
        (work / "one.txt").write_text(one + "\n")
        (work / "many.txt").write_text("\n".join(many) + "\n")
        result = {"site": str(site), "events": events, "users_forgotten": len(many)}
        result["one_user"] = forget(work / "insights.yml", work / "one.txt")
        result["many_users"] = forget(work / "insights.yml", work / "many.txt")
        result["compact"] = compact(work / "insights.yml")
        record("forget_scale", result)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
