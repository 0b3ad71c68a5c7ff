"""Read-API latency at scale: p50/p99 at a fixed request rate, with a table swap under load.

    python bench/serving_latency.py --users 1000000 --rate 500 --requests 15000

A warehouse with N users (ten recommendations each), 50k items, similar items and trending
lists is made in DuckDB (not timed), the recommendation table is published (timed), and
`insights serve` runs in its own process. A load generator in this process sends requests
at a fixed rate (open loop: latency is measured from each request's scheduled time, so a
stall shows up instead of slowing the generator) over keep-alive connections: 80% known
users (a third of whom bought their first pick, which the API leaves out), 10% by the
cookie id of a known user, 10% unknown (trending). Halfway through, a new table is published from another
process. Any non-200 answer or short list is an error. Targets: p99 <= 5 ms at 500
requests/s, no errors during the swap.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _record import record  # noqa: E402  (bench/ is the script's folder)


def build(work: Path, users: int, items: int) -> None:
    import duckdb

    con = duckdb.connect(str(work / "bench.duckdb"))
    con.execute(
        f"""
        create or replace table main.dim_items as
        select printf('i%06d', i) as item_id, 'Item ' || i as title, 'Cat' || (i % 50) || ' > Sub' || (i % 7) as category,
            'Brand' || (i % 200) as brand, i % 97 != 0 as in_stock from range({items}) t(i);
        create or replace table main.user_insights as
        select printf('u%08d', u) as user_id, timestamp '2026-11-01' as as_of, 'bench' as model_version
        from range({users}) t(u);
        create or replace table main.recommendations as
        select printf('u%08d', u) as user_id, r as rank, printf('i%06d', (u * 31 + r * 977) % {items}) as item_id,
            1.0 - r / 20.0 as score, 'collaborative' as reason
        from range({users}) t(u), range(1, 11) s(r);
        create or replace table main.item_similar as
        select printf('i%06d', i) as item_id, r as rank, printf('i%06d', (i + r) % {items}) as similar_item_id,
            1.0 - r / 20.0 as score from range({items}) t(i), range(1, 11) s(r);
        create or replace table main.trending as
        select 'global' as scope, r as rank, printf('i%06d', r * 13) as item_id, 100.0 - r as score
        from range(1, 51) t(r);
        -- A third of the users bought their first pick (the API leaves it out and fills from trending).
        create or replace table main.fct_interactions as
        select printf('u%08d', u) as user_id, printf('i%06d', (u * 31 + 977) % {items}) as item_id,
            1::bigint as purchases
        from range(0, {users}, 3) t(u);
        -- Half the users have a cookie id an app can ask by.
        create or replace table main.dim_identity_map as
        select printf('c%08d', u) as anonymous_id, printf('u%08d', u) as user_id from range(0, {users}, 2) t(u);
        """
    )
    con.close()


PUBLISH = """
import sys, time
sys.path.insert(0, {root!r})
from insights.config import load_config
from insights.warehouse import connect
from exports.serving import publish_table
config = load_config({config!r}, environ={{}})
con = connect(config, read_only=True)
started = time.perf_counter()
summary = publish_table(config, con, sys.argv[1])
print(time.perf_counter() - started)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--rate", type=float, default=500.0, help="requests per second")
    parser.add_argument("--requests", type=int, default=15_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--publish-nice", type=int, default=0, help="run the mid-load publish at this niceness")
    parser.add_argument("--workdir")
    args = parser.parse_args()

    work = Path(args.workdir or tempfile.mkdtemp(prefix="insights-serving-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    config = work / "insights.yml"
    config.write_text(
        f"warehouse: {{path: {work / 'bench.duckdb'}}}\nserving: {{path: {work / 'recs.sqlite'}, port: 0}}\n"
    )
    build(work, args.users, args.items)
    script = PUBLISH.format(root=str(ROOT), config=str(config))
    done = subprocess.run([sys.executable, "-c", script, "first"], check=True, capture_output=True, text=True)
    publish_s = float(done.stdout.split()[-1])  # after any DuckDB progress bar

    env = {**os.environ, "INSIGHTS_API_TOKEN": "bench-token"}
    from insights.cli import build_parser  # noqa: F401  (the CLI must import)

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "insights.cli", "--config", str(config), "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
    )
    try:
        _wait(port)
        result = _load(args, port, script)
    finally:
        server.terminate()
        server.wait(timeout=10)
    record(
        "serving",
        {"users": args.users, "items": args.items, "publish_s": round(publish_s, 1), **result},
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(port: int) -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("server did not start")


def _load(args: argparse.Namespace, port: int, publish_script: str) -> dict:
    rng = random.Random(1)

    def path(i: int) -> str:
        draw = rng.random()
        if draw < 0.8:
            return f"/v1/users/u{rng.randrange(args.users):08d}/recommendations?limit=10"
        if draw < 0.9:  # a logged-out visitor asked for by cookie id
            return f"/v1/users/c{2 * rng.randrange(args.users // 2):08d}/recommendations?limit=10"
        return f"/v1/users/unknown-{i}/recommendations?limit=10"

    paths = [path(i) for i in range(args.requests)]
    jobs: queue.Queue = queue.Queue()
    latencies: list[float] = []
    timeline: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()
    headers = {"Authorization": "Bearer bench-token"}

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        while True:
            job = jobs.get()
            if job is None:
                return
            scheduled, path = job
            try:
                conn.request("GET", path, headers=headers)
                response = conn.getresponse()
                body = response.read()
                ok = response.status == 200 and len(json.loads(body)["items"]) == 10
                problem = None if ok else f"{response.status} {body[:100]!r}"
            except (OSError, http.client.HTTPException) as exc:
                problem = f"{type(exc).__name__}: {exc}"
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            elapsed = time.perf_counter() - scheduled
            with lock:
                latencies.append(elapsed)
                timeline.append((scheduled, elapsed))
                if problem:
                    errors.append(problem)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(args.connections)]
    for t in threads:
        t.start()
    swap: dict = {}

    def publish_midway() -> None:
        started = time.perf_counter()
        nice = (lambda: os.nice(args.publish_nice)) if args.publish_nice else None
        subprocess.run([sys.executable, "-c", publish_script, "swap"], check=True, capture_output=True, preexec_fn=nice)
        swap["window"] = (started, time.perf_counter())
        swap["seconds"] = time.perf_counter() - started

    interval = 1.0 / args.rate
    start = time.perf_counter()
    swapper = None
    for i, path in enumerate(paths):
        scheduled = start + i * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        jobs.put((scheduled, path))
        if i == len(paths) // 4:
            swapper = threading.Thread(target=publish_midway)
            swapper.start()
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if swapper:
        swapper.join()
    latencies.sort()
    begin, end = swap.get("window", (0.0, 0.0))
    during = sorted(e for t, e in timeline if begin <= t <= end)
    outside = sorted(e for t, e in timeline if not begin <= t <= end)

    def pct(p: float, values: list[float] = latencies) -> float:
        return round(1000 * values[min(len(values) - 1, int(p * len(values)))], 2) if values else float("nan")

    return {
        "rate": args.rate,
        "publish_nice": args.publish_nice,
        "requests": len(latencies),
        "achieved_rps": round(len(latencies) / wall, 1),
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": round(1000 * latencies[-1], 2),
        "p50_ms_steady": pct(0.50, outside),
        "p99_ms_steady": pct(0.99, outside),
        "requests_during_swap": len(during),
        "p50_ms_during_swap": pct(0.50, during),
        "p99_ms_during_swap": pct(0.99, during),
        "errors": len(errors),
        "first_errors": errors[:3],
        "swap_publish_s": round(swap.get("seconds", float("nan")), 1),
    }


if __name__ == "__main__":
    main()
