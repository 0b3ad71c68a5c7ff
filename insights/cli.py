"""The ``insights`` command line: one subcommand per pipeline step, plus sample data."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# implicit's ALS is many times slower with threaded OpenBLAS; must be set before numpy loads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from insights.config import Config, ConfigError, load_config  # noqa: E402


def _console():  # noqa: ANN202 - rich is imported lazily to keep --help fast
    from rich.console import Console

    console = Console(stderr=False, highlight=False)
    if not console.is_terminal:
        console.width = max(console.width, 120)
    return console


def _print_ingest(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="Ingest", show_lines=False)
    for column in (
        "source",
        "files",
        "lines read",
        "loaded",
        "duplicates",
        "quarantined",
        "control",
        "replaced",
        *(["forgotten"] if summary["totals"].get("forgotten") else []),
        "status",
    ):
        table.add_column(column, justify="right" if column not in ("source", "status") else "left")
    for load in summary["loads"]:
        table.add_row(
            load["source_name"],
            str(load["files"]),
            f"{load['lines_read']:,}",
            f"{load['loaded']:,}",
            f"{load['duplicates']:,}",
            f"{load['quarantined']:,}",
            f"{load['control_messages']:,}",
            f"{load['replaced']:,}",
            *([f"{load['forgotten']:,}"] if summary["totals"].get("forgotten") else []),
            load["status"],
        )
    console = _console()
    if summary["loads"]:
        console.print(table)
    else:
        console.print("Ingest: nothing new to load.")
    for load in summary["loads"]:
        if load["warnings"]:
            console.print(f"[yellow]validation warnings[/yellow] {load['load_id']}: {'; '.join(load['warnings'])}")
    console.print(
        f"raw.events now holds {summary['warehouse_events']:,} rows (a line with several products, such as a "
        f"Snowplow transaction, is one row each); {summary['warehouse_quarantined']:,} lines in ingest.quarantine."
    )
    expired = summary.get("expired")
    if expired and expired["removed"]:
        removed = expired["removed"]
        console.print(
            f"Expired (privacy.retention_days {expired['retention_days']}, before {expired['before']} UTC): "
            + ", ".join(f"{table} {count:,}" for table, count in removed.items())
        )


def cmd_ingest(args: argparse.Namespace, config: Config) -> None:
    from insights import steps

    _print_ingest(steps.ingest(config, args.source or None))


def _print_transform(summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"Transform (dbt build, as of {summary['as_of']})")
    for column in ("model", "rows", "seconds"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for model in summary["models"]:
        name = model["name"]
        rows = summary["rows"].get(name)
        table.add_row(name, "view" if rows is None else f"{rows:,}", f"{model['seconds']:.2f}")
    console = _console()
    console.print(table)
    tests = summary["tests"]
    console.print(f"dbt tests: {tests['passed']} of {tests['total']} passed.")


def cmd_transform(args: argparse.Namespace, config: Config) -> None:
    from insights import steps

    _print_transform(steps.transform(config, steps.parse_as_of(args.as_of), full_refresh=args.full_refresh))


def _print_train(summary: dict[str, Any]) -> None:
    console = _console()
    als = summary["als"]
    console.print(
        f"Model [bold]{summary['model_version']}[/bold] ({summary['status']}): {summary['reason']}\n"
        f"  ALS {als['params']} on {summary['users']:,} users x {summary['items']:,} items; "
        f"time-split HR@10 {als.get('hr_at_10', float('nan')):.3f}, NDCG@10 {als.get('ndcg_at_10', float('nan')):.3f}; "
        f"final fit: {als['final_fit']}"
    )
    for name, target in summary["propensities"].items():
        if name == "churn_inactive":
            continue
        numbers = ", ".join(f"{k} {v:.3f}" for k, v in target.items() if isinstance(v, float))
        console.print(f"  {name}: {target['method']} - {target['reason']}" + (f"; {numbers}" if numbers else ""))
    for warning in summary.get("warnings", []):
        console.print(f"  [yellow]warning:[/yellow] {warning}")
    console.print(f"  artifacts: {summary['path']}")
    _print_seconds(summary)


def _print_seconds(summary: dict[str, Any]) -> None:
    """Where a step's time went, when it says (train, score, export)."""
    if summary.get("seconds"):
        parts = ", ".join(f"{part} {sec:.1f}" for part, sec in summary["seconds"].items())
        _console().print(f"  seconds: {parts}")


def cmd_train(args: argparse.Namespace, config: Config) -> None:
    from insights import steps

    _print_train(steps.train(config, steps.parse_as_of(args.as_of)))


def _print_score(summary: dict[str, Any]) -> None:
    console = _console()
    reasons = ", ".join(f"{k} {v:,}" for k, v in summary["reasons"].items())
    console.print(
        f"Scored {summary['users']:,} users as of {summary['as_of']} with model {summary['model_version']} "
        f"(propensities: {summary['propensity_method']}): {summary['recommendations']:,} recommendations"
        f"{f' ({reasons})' if reasons else ''}, {summary['item_similar']:,} similar "
        f"items, {summary['trending']:,} trending rows; mean purchase probability "
        f"{summary['mean_purchase_probability']:.3f}."
    )
    console.print("  segments: " + ", ".join(f"{k} {v:,}" for k, v in summary["segments"].items()))
    console.print(
        f"  model picks: {summary['picks_computed']:,} users folded in and ranked, "
        f"{summary['picks_reused']:,} unchanged since an earlier run kept theirs (ml.reuse_picks_hours)"
    )
    _print_seconds(summary)


def cmd_score(args: argparse.Namespace, config: Config) -> None:
    from insights import steps

    _print_score(steps.score(config, steps.parse_as_of(args.as_of)))


def _print_cohorts(cohorts: list[dict[str, Any]], title: str, summary_written: bool = True) -> None:
    from rich.table import Table

    table = Table(title=title)
    for column in ("cohort", "users", "target", "holdout", "mean p(buy)", "expected buyers", "lift", "file"):
        table.add_column(column, justify="left" if column in ("cohort", "file") else "right")
    for c in cohorts:
        mean = c["mean_purchase_probability"]
        table.add_row(
            c["cohort"],
            f"{c['users']:,}",
            f"{c['target']:,}",
            f"{c['holdout']:,}",
            "-" if mean is None else f"{100 * mean:.1f}%",
            f"{c['expected_conversions']:,.1f}",
            "-" if c["lift"] is None else f"{c['lift']:.2f}x",
            os.path.basename(c.get("file", "")),
        )
    console = _console()
    console.print(table)
    if cohorts and cohorts[0].get("file"):
        folder = os.path.dirname(cohorts[0]["file"])
        if summary_written:
            console.print(f"CSV files and summary.csv in {folder}")
        else:
            console.print(f"CSV files in {folder} (summary.csv left as it was: only a run of every cohort rewrites it)")


def _print_export(summary: dict[str, Any]) -> None:
    console = _console()
    _print_cohorts(summary["cohorts"]["cohorts"], f"Cohorts as of {summary['as_of']}")
    store = summary["datastore"]
    console.print(
        f"Datastore: partition dt={store['dt']} (run {store['run_id']}) in {store['root']}: "
        + ", ".join(f"{name} {t['rows']:,}" for name, t in store["tables"].items())
    )
    seg = summary["segment"]
    if not seg.get("enabled", True):
        console.print("Segment: disabled.")
    elif seg["dry_run"]:
        console.print(
            f"Segment (dry run): would send {seg['would_send']:,} identify calls in {seg['batches']} batch(es) - "
            f"added {seg['added']:,}, changed {seg['changed']:,}, unchanged {seg['unchanged']:,}, "
            f"invalid {seg['invalid']:,}; written to {seg['path']}"
        )
    else:
        console.print(
            f"Segment: sent {seg['sent']:,}, failed {seg['failed']:,} (retried next run) - added {seg['added']:,}, "
            f"changed {seg['changed']:,}, unchanged {seg['unchanged']:,}, invalid {seg['invalid']:,}"
        )
    serving = summary["serving"]
    console.print(
        f"Recommendation table: {serving['users']:,} users (and {serving.get('aliases', 0):,} cookie ids of "
        f"identified ones), {serving['items']:,} items with similar items, "
        f"{serving['trending_scopes']:,} trending lists in {serving['path']}"
    )
    _print_seconds(summary)


def cmd_export(args: argparse.Namespace, config: Config) -> None:
    from insights import steps

    _print_export(steps.export(config, steps.parse_as_of(args.as_of) if args.as_of else None))


def cmd_report(args: argparse.Namespace, config: Config) -> None:
    from insights import steps

    result = steps.report(config, steps.parse_as_of(args.as_of) if args.as_of else None)
    _console().print(f"Run report as of {result['as_of']}: {result['path']} (and {result['datastore']})")
    if args.open:
        import webbrowser

        if not webbrowser.open(Path(result["path"]).resolve().as_uri()):
            _console().print("No browser found here: open the file above in one.")


def cmd_cohort(args: argparse.Namespace, config: Config) -> None:
    from exports.cohorts import run_cohorts
    from insights.warehouse import connect

    con = connect(config, read_only=True)
    try:
        result = run_cohorts(config, con, names=args.name or None, where=args.where, out_dir=args.out)
    finally:
        con.close()
    _print_cohorts(result["cohorts"], f"Cohorts as of {result['as_of']}", result["summary_file"] is not None)


def cmd_recs(args: argparse.Namespace, config: Config) -> None:
    import json

    from exports.serving import recs

    print(json.dumps(recs(config, args.user_id, args.limit), indent=2))


def cmd_serve(args: argparse.Namespace, config: Config) -> None:
    from exports.serving import make_server

    host = args.host or config.serving.host
    port = config.serving.port if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be from 0 to 65535, got {port}")
    try:
        server = make_server(config, host, port)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    host, port = server.server_address[:2]
    secured = "bearer token required" if os.environ.get(config.serving.token_env) else "no token configured"
    print(f"Serving recommendations from {config.resolve(config.serving.path)} on http://{host}:{port} ({secured})")
    try:
        server.table.check_rules()  # logs each merchandising rule that names nothing published
    except LookupError as exc:
        print(f"warning: {exc}", file=sys.stderr)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def cmd_evaluate(args: argparse.Namespace, config: Config) -> None:
    from insights import steps
    from models_ml.pipeline import render_report

    report = steps.evaluate(config, steps.parse_as_of(args.as_of) if args.as_of else None)
    console = _console()
    console.print(render_report(report), markup=False)
    folder = config.resolve(config.ml.report_dir)
    console.print(f"Written to {folder}/evaluation_{report['as_of'][:10]}.json and .md")


class _RunBoard:
    """The live table of ``insights run``: every step with its status, time and result."""

    def __init__(self, names: list[str]) -> None:
        self.rows = [{"step": n, "status": "waiting", "seconds": 0.0, "detail": ""} for n in names]
        self.started: float | None = None

    def __rich__(self) -> Any:
        from rich.table import Table

        table = Table(title="insights run", title_justify="left")
        for column, justify in (("step", "left"), ("status", "left"), ("time", "right"), ("result", "left")):
            table.add_column(column, justify=justify)
        styles = {"done": "green", "running": "bold yellow", "failed": "bold red", "not run": "dim", "waiting": "dim"}
        for row in self.rows:
            seconds = row["seconds"]
            if row["status"] == "running" and self.started is not None:
                seconds = time.perf_counter() - self.started
            table.add_row(
                row["step"],
                f"[{styles[row['status']]}]{row['status']}[/]",
                f"{seconds:.1f}s" if row["status"] in ("done", "running", "failed") else "",
                row["detail"],
            )
        return table


def cmd_run(args: argparse.Namespace, config: Config) -> None:
    """Every step in order under a live table (status, time, result), each step's details as
    it finishes, the run report, and where everything went. A failure names the step."""
    import uuid

    from rich.live import Live

    from insights import steps

    console = _console()
    as_of = steps.parse_as_of(args.as_of)
    run_id = f"{as_of:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    # Ingestion loads everything available; the as-of instant bounds the later steps.
    console.print(f"Run {run_id}: as of {as_of:%Y-%m-%d %H:%M:%S} UTC, config {config.source_file or 'defaults'}")
    board = _RunBoard(["ingest", "transform", "train", "score", "export", "report"])
    printers: dict[str, Callable[[dict[str, Any]], None]] = {
        "ingest": _print_ingest,
        "transform": _print_transform,
        "train": _print_train,
        "score": _print_score,
        "export": _print_export,
        "report": lambda r: console.print(f"Run report: {r['path']} (and {r['datastore']})"),
    }
    outcomes: dict[str, dict[str, Any]] = {}
    with Live(board, console=console, refresh_per_second=4, transient=False):
        for row in board.rows:
            name = row["step"]
            row["status"], board.started = "running", time.perf_counter()
            try:
                # The report shows the steps done so far and what export delivered.
                done = {"steps": [r for r in board.rows if r["status"] == "done"], **outcomes}
                outcome = steps.run_step(name, config, as_of, run_id, done if name == "report" else None)
            except Exception as exc:
                row.update(
                    status="failed", seconds=time.perf_counter() - board.started, detail=str(exc).splitlines()[0]
                )
                for later in board.rows:
                    if later["status"] == "waiting":
                        later["status"] = "not run"
                raise RuntimeError(f"step '{name}' failed: {exc}") from exc
            row.update(status="done", seconds=time.perf_counter() - board.started, detail=steps.headline(name, outcome))
            outcomes[name] = outcome
            printers[name](outcome)
    console.print("\n[bold]Outputs[/bold]")
    console.print(f"  warehouse (DuckDB): {config.resolve(config.warehouse.path)}")
    console.print("    raw.events, raw.catalog_items, ingest.loads, ingest.quarantine, ingest.validation_results")
    console.print("    fct_events, fct_page_views, fct_sessions, fct_funnel_daily, dim_users, dim_items,")
    console.print("    fct_user_affinities, fct_interactions, dim_identity_map (schema main)")
    console.print("    user_insights, recommendations, item_similar, trending, user_interests (schema main)")
    console.print("    ml.model_versions (model registry)")
    console.print(f"  model artifacts: {config.resolve(config.ml.model_dir)}")
    console.print(f"  cohort CSVs: {config.resolve(config.cohorts.out_dir)} (summary.csv and one file per cohort)")
    console.print(
        f"  datastore (Parquet): {config.datastore.uri if config.datastore.uri.startswith('s3://') else config.resolve(config.datastore.uri)}"
    )
    if config.segment.enabled:
        where = config.resolve(config.segment.dry_run_path) if config.segment.dry_run else config.segment.endpoint
        console.print(f"  Segment identify calls: {where}{' (dry run)' if config.segment.dry_run else ''}")
    console.print(
        f"  recommendation table: {config.resolve(config.serving.path)} (insights serve, insights recs USER_ID)"
    )
    console.print(f"  run report (HTML): {config.resolve(config.report.out_dir)}/run_report_{as_of:%Y-%m-%d}.html")


def cmd_sample(args: argparse.Namespace, config: Config) -> None:
    from insights.sample import generate

    out = args.out or config.sample.out
    started = time.perf_counter()
    summary = generate(
        out,
        users=config.sample.users if args.users is None else args.users,
        days=config.sample.days if args.days is None else args.days,
        seed=config.sample.seed if args.seed is None else args.seed,
    )
    elapsed = time.perf_counter() - started
    _console().print(
        f"Sample site written to {out} in {elapsed:.1f}s: {summary['web_events']:,} web events (enriched TSV), "
        f"{summary['app_events']:,} app events (Singer), {summary['items']:,} catalog items, "
        f"{summary['orders']:,} orders; dirt: {summary['duplicates']:,} duplicates, {summary['late']:,} late, "
        f"{summary['malformed']:,} malformed. Planted truth in {out}/truth/."
    )


def _count(n: int, noun: str) -> str:
    """'1 row', '2 rows'."""
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def cmd_forget(args: argparse.Namespace, config: Config) -> None:
    from insights import steps
    from insights.privacy import ForgetError, read_ids

    console = _console()
    if (args.segment_pending or args.compact) and not args.ids and not args.file:
        if args.dry_run:
            raise ForgetError("--dry-run without ids: nothing to count (--segment-pending and --compact change things)")
        segment = None
        if args.segment_pending:
            segment = steps.segment_pending(config)
            _print_segment_deletion(console, segment, config, nothing="no deletion pending")
        if args.compact:
            _print_compaction(console, steps.compact(config))
        if segment:
            _fail_if_deletion_left(segment)
        return
    summary = steps.forget(config, read_ids(args.ids, args.file), dry_run=args.dry_run, compact=args.compact)
    dry = summary["dry_run"]
    verb = "would remove" if dry else "removed"
    unknown = summary["unknown"]
    console.print(
        f"{'Dry run: ' if dry else ''}{_count(summary['given'], 'id')} given: {_count(summary['users'], 'user')} "
        f"and {_count(summary['cookies'], 'cookie id')} (with the cookies the users were seen with)"
        + (
            f"; found nowhere ({'would be recorded' if dry else 'recorded'} all the same): {', '.join(unknown[:10])}"
            + (f" and {len(unknown) - 10:,} more" if len(unknown) > 10 else "")
            if unknown
            else ""
        )
    )

    def where(counts: dict[str, int]) -> str:
        return f" ({', '.join(f'{t} {n:,}' for t, n in counts.items())})" if counts else ""

    out = summary["outputs"]
    console.print(
        f"  warehouse: {verb} {_count(sum(summary['warehouse'].values()), 'row')}{where(summary['warehouse'])}"
    )
    console.print(f"  datastore: {verb} {_count(sum(out['datastore'].values()), 'row')}{where(out['datastore'])}")
    console.print(
        f"  cohort CSVs: {verb} {_count(out['cohort_csvs']['rows'], 'row')} from "
        f"{_count(out['cohort_csvs']['files'], 'file')}; Segment dry-run file: "
        f"{_count(out['segment_dry_run_file'], 'message')}; recommendation table: "
        f"{_count(sum(out['recommendation_table'].values()), 'row')}; saved models: "
        f"{_count(sum(out['model_versions'].values()), 'user vector')}"
    )
    segment = summary["segment"]
    if dry and segment["profiles"]:
        console.print(
            f"  Segment: was sent traits of {segment['profiles']:,} of them; "
            + (
                "delete them there too"
                if not segment["delete_on_forget"]
                else "their deletion would be requested"
                if segment.get("token")
                else f"[yellow]their deletion could not be requested: no token in ${config.segment.api_token_env}"
                "[/yellow] (the real run would forget everything else, then fail saying so)"
            )
        )
    elif not dry:
        _print_segment_deletion(console, segment, config)
    if summary.get("compaction"):
        _print_compaction(console, summary["compaction"])
    _print_seconds(summary)
    if dry:
        console.print("Nothing was changed." + (" (--compact does nothing in a dry run.)" if args.compact else ""))
    else:
        console.print(
            f"Request {summary['request_id']} recorded in privacy.forgotten: ingestion will not load these ids again."
        )
    _fail_if_deletion_left(segment)


def _print_segment_deletion(
    console: Any, segment: dict[str, Any], config: Config, nothing: str = "none of them was sent there"
) -> None:
    """What Segment was asked to delete (by ``insights forget``), or why it was not."""
    if not segment["delete_on_forget"]:
        if segment.get("profiles"):
            console.print(
                f"  [yellow]Segment was sent traits of {segment['profiles']:,} of them[/yellow] "
                "(segment.delete_on_forget is false): delete them there too, in Segment's privacy settings."
            )
        return
    statuses = segment.get("statuses") or {}
    if statuses:
        # (FAILED and PARTIAL_SUCCESS ones were asked for again before these were counted.)
        failed = {k: v for k, v in statuses.items() if k in ("INVALID", "NOT_SUPPORTED")}
        console.print(
            "  Segment's deletions so far: "
            + ", ".join(f"{status} {_count(users, 'user')}" for status, users in statuses.items())
            + (f" [yellow](see Segment's privacy settings for the {', '.join(failed)} ones)[/yellow]" if failed else "")
        )
    if segment.get("reopened"):
        console.print(
            f"  Segment: the regulation of {_count(segment['reopened'], 'user')} ended FAILED or PARTIAL_SUCCESS: "
            "asked for again"
        )
    if segment.get("requested"):
        console.print(
            f"  Segment: {config.segment.regulation_type} requested for {_count(segment['requested'], 'user')} "
            f"(regulation {', '.join(segment['regulations'])}); Segment carries it out within days "
            "(its privacy settings show the progress)"
        )
    elif not segment.get("pending"):
        console.print(f"  Segment: {nothing}")


def _print_compaction(console: Any, compaction: dict[str, Any]) -> None:
    console.print(
        f"  warehouse file rewritten with only its live rows ({compaction['tables']:,} tables checked): "
        f"{compaction['bytes_before'] / 1e6:,.1f} MB -> {compaction['bytes_after'] / 1e6:,.1f} MB "
        f"in {compaction['seconds']:.1f} s"
    )


def _fail_if_deletion_left(segment: dict[str, Any]) -> None:
    from insights.privacy import deletion_left

    message = deletion_left(segment)
    if message:
        raise RuntimeError(message)


def cmd_person(args: argparse.Namespace, config: Config) -> None:
    from datetime import UTC, datetime

    from insights import steps
    from insights.privacy import read_ids

    out = args.out or f"person_{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    summary = steps.person(config, read_ids(args.ids, args.file), out)
    rows = summary["rows"]
    _console().print(
        f"{_count(sum(rows.values()), 'row')} from {_count(len(rows), 'table')} about "
        f"{_count(summary['users'], 'user')} and {_count(summary['cookies'], 'cookie id')} written to "
        f"{summary['path']}" + (f"; found nowhere: {', '.join(summary['unknown'])}" if summary["unknown"] else "")
    )
    for table, count in rows.items():
        _console().print(f"  {table}: {count:,}")
    erased = summary["erasure"]
    if erased:
        requests = sorted({(str(e["recorded_at"])[:19], e["request_id"]) for e in erased})
        regulations = sorted(
            {
                e["segment_regulation"]
                + (f" ({e['segment_regulation_status']})" if e["segment_regulation_status"] else "")
                for e in erased
                if e["segment_regulation"]
            }
        )
        pending = sum(1 for e in erased if e["segment_pending"])
        _console().print(
            f"  forgotten before: {_count(len(erased), 'id')} by request "
            + ", ".join(f"{request} ({at} UTC)" for at, request in requests)
            + (f"; Segment deletion: regulation {', '.join(regulations)}" if regulations else "")
            + (f"; [yellow]Segment deletion pending for {pending:,}[/yellow]" if pending else "")
        )


def _at_least_one(text: str) -> int:
    """A whole number of at least 1 (argparse type)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="insights", description="Per-user insights from clickstream and catalog.")
    parser.add_argument("--config", help="YAML config (default: $INSIGHTS_CONFIG or ./insights.yml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug detail")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="load new input files into the warehouse")
    p.add_argument("--source", action="append", help="only this source (repeatable)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("transform", help="dbt build of the warehouse models")
    p.add_argument("--as-of", help="ISO date or timestamp (UTC); default now")
    p.add_argument("--full-refresh", action="store_true", help="rebuild the incremental models from scratch")
    p.set_defaults(func=cmd_transform)

    p = sub.add_parser("train", help="fit, version and publish the models")
    p.add_argument("--as-of", help="ISO date or timestamp (UTC); default now")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("score", help="score every user with the published models")
    p.add_argument("--as-of", help="ISO date or timestamp (UTC); default now")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("evaluate", help="backtest every model against its baselines")
    p.add_argument("--as-of", help="ISO date or timestamp (UTC); default: the purchase window before the data's end")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("export", help="cohort CSVs, the datastore, the Segment sync and the recommendation table")
    p.add_argument("--as-of", help="must match the scored as-of instant (default: the scored one)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("report", help="the HTML run report of the scored insights")
    p.add_argument("--as-of", help="must match the scored as-of instant (default: the scored one)")
    p.add_argument("--open", action="store_true", help="open the report in the default browser")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("cohort", help="write cohort CSV reports (all defined cohorts by default)")
    p.add_argument("--name", action="append", help="only this cohort (repeatable)")
    p.add_argument("--where", help="an ad-hoc filter, e.g. \"purchase_percentile >= 90 and interest('Outdoor') > 0.3\"")
    p.add_argument("--out", help="folder for the CSVs (default: cohorts.out_dir)")
    p.set_defaults(func=cmd_cohort)

    p = sub.add_parser("recs", help="one user's recommendations from the published table")
    p.add_argument("user_id")
    p.add_argument("--limit", type=int)
    p.set_defaults(func=cmd_recs)

    p = sub.add_parser("serve", help="the real-time read API")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)

    def people(p: argparse.ArgumentParser) -> None:
        p.add_argument("ids", nargs="*", help="user ids or cookie ids")
        p.add_argument("--file", help="a file of ids, one per line")

    p = sub.add_parser("forget", help="remove people from the warehouse and every output (right to erasure)")
    people(p)
    p.add_argument("--dry-run", action="store_true", help="count what would be removed, change nothing")
    p.add_argument(
        "--segment-pending",
        action="store_true",
        help="(without ids) ask Segment again to delete the forgotten users whose deletion is pending",
    )
    p.add_argument(
        "--compact",
        action="store_true",
        help="then rewrite the warehouse file so no byte of the removed rows stays on disk (alone: only that)",
    )
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("person", help="everything the warehouse holds about people, as JSON (right of access)")
    people(p)
    p.add_argument("--out", help="the JSON file to write (default: ./person_<time>.json)")
    p.set_defaults(func=cmd_person)

    p = sub.add_parser("run", help="the whole pipeline once")
    p.add_argument("--as-of", help="ISO date or timestamp (UTC); default now")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sample", help="generate a synthetic sample site")
    p.add_argument("--users", type=_at_least_one)
    p.add_argument("--days", type=_at_least_one)
    p.add_argument("--seed", type=int)
    p.add_argument("--out")
    p.set_defaults(func=cmd_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config)
        func: Callable[[argparse.Namespace, Config], None] = args.func
        func(args, config)
    except ConfigError as exc:
        print(f"insights: config error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("insights: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the CLI's contract is a one-line reason
        from insights.ingest import IngestError

        # (insights run's step failures arrive as "step 'x' failed: ...": "run failed: step ...")
        kind = "ingest failed" if isinstance(exc, IngestError) else f"{args.command} failed"
        if args.verbose:
            logging.exception("failure")
        print(f"insights: {kind}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
