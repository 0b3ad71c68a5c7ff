"""The learning step's cost: train (cold and warm), score and evaluate on a generated site.

    python bench/learning.py --users 1500 --days 75

A site is generated and ingested and the warehouse is built as of its last day (not timed).
Then `insights train` is timed twice: cold (every past-cutoff feature snapshot is built by
dbt) and warm (snapshots reused, as on a daily schedule with unchanged history), then
`insights score` and `insights evaluate`. The model figures of each run are recorded next
to its timings. Peak RSS is this process's (model fitting, scoring) and dbt's children's.
Results go to bench/results/learning.jsonl.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _record import record  # noqa: E402  (bench/ is the script's folder)


def _timed(fn, *args):  # noqa: ANN001, ANN202
    started = time.perf_counter()
    result = fn(*args)
    return result, round(time.perf_counter() - started, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1500)
    parser.add_argument("--days", type=int, default=75)
    parser.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    args = parser.parse_args()

    from insights import steps
    from insights.config import load_config
    from insights.sample import generate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="insights-learning-bench-"))
    site = work / "site"
    if not (site / "truth").exists():
        generate(site, users=args.users, days=args.days, seed=5)
    (work / "insights.yml").write_text(
        f"warehouse: {{path: {work / 'bench.duckdb'}}}\n"
        f"sample: {{out: {site}}}\n"
        f"ml: {{model_dir: {work / 'models'}, report_dir: {work / 'evaluation'}}}\n"
    )
    config = load_config(work / "insights.yml", environ={})
    ingested = steps.ingest(config)
    import duckdb

    con = duckdb.connect(config.resolve(config.warehouse.path), read_only=True)
    end = con.execute("select max(occurred_at) from raw.events").fetchone()[0]
    con.close()
    as_of = steps.parse_as_of(end.date().isoformat())
    steps.transform(config, as_of)

    trained, train_cold_s = _timed(steps.train, config, as_of)
    _, train_warm_s = _timed(steps.train, config, as_of)
    scored, score_s = _timed(steps.score, config, as_of)
    report, evaluate_s = _timed(steps.evaluate, config, None)
    recs = report["recommendations"]
    record(
        "learning",
        {
            "users": scored["users"],
            "events": ingested["warehouse_events"],
            "items": trained["items"],
            "as_of": as_of.isoformat(),
            "train_cold_s": train_cold_s,
            "train_warm_s": train_warm_s,
            "score_s": score_s,
            "evaluate_s": evaluate_s,
            "als_params": trained["als"]["params"],
            "als_ndcg_at_10": round(trained["als"].get("ndcg_at_10", float("nan")), 4),
            "purchase_auc": round(trained["propensities"]["purchase"].get("roc_auc", float("nan")), 4),
            # Each propensity measured on held-out users (the method kept: LightGBM, or the
            # RFM-cell rate where that did better), with its RFM-cell baseline.
            "propensities": {
                name: {"method": p["method"]} | {k: round(v, 4) for k, v in p.items() if isinstance(v, float)}
                for name, p in trained["propensities"].items()
                if "roc_auc" in p or "mae" in p
            },
            "backtest_hr_at_10": {k: round(v["hr_at_10"], 4) for k, v in recs.items() if "hr_at_10" in v},
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_child_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
        },
    )


if __name__ == "__main__":
    main()
