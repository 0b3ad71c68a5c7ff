"""The run report: one self-contained HTML page per run for the people who do not read
tables: the funnel, sessions and engagement over time, segment and cohort sizes, the
distribution of purchase probability, calibration and lift of each propensity against its
baseline, recommendation quality against baselines and the previous model, the top
interests, and data-quality counts. Charts are inline SVG (``exports.charts``), so the file
works offline.

``gather`` reads the numbers from the warehouse, ``render`` turns them into HTML,
``write_report`` stores the page locally (``report.out_dir``) and in the datastore
(``reports/dt=YYYY-MM-DD/``).
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from exports import charts
from insights.config import Config
from insights.storage import replace_text
from insights.warehouse import has_table, scored_as_of

SECTIONS = [
    ("summary", "At a glance"),
    ("funnel", "Funnel"),
    ("sessions", "Sessions and engagement"),
    ("segments", "Segments and cohorts"),
    ("purchase", "Purchase probability"),
    ("propensities", "Propensity models against their baselines"),
    ("recommendations", "Recommendations"),
    ("interests", "Top interests"),
    ("quality", "Data quality"),
    ("run", "This run"),
]


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> Any:
    return con.execute(sql, params or []).fetchone()[0]


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _funnel(con: duckdb.DuckDBPyConnection, config: Config, as_of: datetime, days: int) -> dict[str, Any]:
    rows = con.execute(
        "select step_number, step, sum(sessions), sum(users) from main.fct_funnel_daily "
        "where day >= ? and day < ? group by all order by step_number",
        [(as_of - timedelta(days=days)).date(), as_of.date() + timedelta(days=1)],
    ).fetchall()
    return {
        "days": days,
        "steps": [r[1] for r in rows] or list(config.transform.funnel_steps),
        "sessions": [int(r[2] or 0) for r in rows],
        "user_days": [int(r[3] or 0) for r in rows],
    }


def _sessions(con: duckdb.DuckDBPyConnection, as_of: datetime, days: int) -> dict[str, Any]:
    rows = con.execute(
        """
        select started_at::date as day, count(*), count(*) filter (where is_engaged),
            count(*) filter (where converted), median(engaged_seconds)::double, sum(revenue)
        from main.fct_sessions
        where started_at >= ? and started_at < ?
        group by 1 order by 1
        """,
        [as_of - timedelta(days=days), as_of],
    ).fetchall()
    return {
        "days": [str(r[0]) for r in rows],
        "sessions": [int(r[1]) for r in rows],
        "engaged": [int(r[2]) for r in rows],
        "converted": [int(r[3]) for r in rows],
        "median_engaged_seconds": [float(r[4] or 0) for r in rows],
        "revenue": [float(r[5] or 0) for r in rows],
    }


def _propensities(published: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not published:
        return out
    for name in ("purchase", "churn", "value"):
        target = published["metrics"].get(name)
        if not target:
            continue
        entry = {"method": target.get("method"), "reason": target.get("reason")}
        for key in ("held_out", "held_out_baseline", "calibrator"):
            if key in target:
                entry[key] = target[key]
        out[name] = entry
    return out


def _recommendations(
    con: duckdb.DuckDBPyConnection, config: Config, published: dict[str, Any] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {"current": None, "previous": None, "backtest": None}
    if not published:
        return out
    validation = published["metrics"].get("als", {}).get("validation", {})
    out["current"] = {"version": published["model_version"], **validation}
    row = con.execute(
        "select model_version, metrics from ml.model_versions where status = 'published' and trained_at < "
        "(select max(trained_at) from ml.model_versions where model_version = ?) order by trained_at desc limit 1",
        [published["model_version"]],
    ).fetchone()
    if row:
        out["previous"] = {"version": row[0], **json.loads(row[1]).get("als", {}).get("validation", {})}
    reports = sorted(glob.glob(os.path.join(config.resolve(config.ml.report_dir), "evaluation_*.json")))
    if reports:
        with open(reports[-1], encoding="utf-8") as fh:
            backtest = json.load(fh)
        out["backtest"] = {"as_of": backtest.get("as_of"), "recommendations": backtest.get("recommendations")}
    return out


def _quality(con: duckdb.DuckDBPyConnection, config: Config) -> dict[str, Any]:
    loads = con.execute(
        "select coalesce(sum(lines_read), 0), coalesce(sum(loaded), 0), coalesce(sum(duplicates), 0), "
        "coalesce(sum(quarantined), 0), count(*), count(*) filter (where status <> 'ok'), "
        "coalesce(sum(control_messages), 0) from ingest.loads"
    ).fetchone()
    reasons = con.execute(
        r"""
        select regexp_replace(regexp_replace(reason, '''[^'']*''', '''…''', 'g'), 'found [0-9]+', 'found another number'),
            count(*)
        from ingest.quarantine group by 1 order by 2 desc, 1 limit 8
        """
    ).fetchall()
    raw_events = _one(con, "select count(*) from raw.events")
    # The pattern runs once per distinct user agent, not once per event.
    bots = _one(
        con,
        "select coalesce(sum(n), 0) from (select useragent, coalesce(is_flagged_bot, false) as flagged, count(*) as n "
        "from raw.events group by all) where flagged or regexp_matches(coalesce(useragent, ''), ?)",
        [config.transform.bot_useragent_pattern],
    )
    clean = _one(con, "select count(*) from main.fct_events") if has_table(con, "main", "fct_events") else 0
    failed_checks = con.execute(
        "select source_name, expectation, column_name, unexpected_count from ingest.validation_results "
        "where not success order by validated_at desc limit 8"
    ).fetchall()
    return {
        "lines_read": int(loads[0]),
        "loaded": int(loads[1]),
        "duplicates": int(loads[2]),
        "quarantined": int(loads[3]),
        "loads": int(loads[4]),
        "loads_not_ok": int(loads[5]),
        "control_messages": int(loads[6]),
        "quarantine_reasons": [[r[0], int(r[1])] for r in reasons],
        "raw_events": int(raw_events),
        "bot_agent_events": int(bots),
        "clean_events": int(clean),
        "removed_by_models": int(raw_events - clean),
        "failed_checks": [list(r) for r in failed_checks],
    }


def _freshness(con: duckdb.DuckDBPyConnection, config: Config, as_of: datetime) -> dict[str, Any]:
    """How old the newest scored event is, and who was left without recommendations."""
    from models_ml.data import data_lag_warning, recommendation_warning

    newest, users, without = con.execute(
        "select max(last_seen_at), count(*), count(*) filter (where coalesce(len(recommended_items), 0) = 0) "
        "from main.user_insights"
    ).fetchone()
    items, in_stock = con.execute("select count(*), count(*) filter (where in_stock) from main.dim_items").fetchone()
    lag = data_lag_warning(config, as_of, newest)
    empty = recommendation_warning(config, users, without, items, in_stock)
    return {
        "newest_event_at": f"{newest:%Y-%m-%d %H:%M:%S}" if newest is not None else None,
        "data_lag_hours": round((as_of - newest).total_seconds() / 3600, 1) if newest is not None else None,
        "data_lag_warning": lag[1] if lag else None,
        "users_without_recommendations": int(without),
        "recommendation_warning": empty[1] if empty else None,
    }


def gather(
    config: Config,
    con: duckdb.DuckDBPyConnection,
    as_of: datetime | None = None,
    run_id: str | None = None,
    steps_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every number the report shows, read from the warehouse (and the step summaries of the
    run when given). JSON-serialisable, so a test or a notebook can check it."""
    from models_ml import registry

    as_of, _ = scored_as_of(con, as_of, "report")
    published = registry.published(con)
    users = con.execute(
        "select count(*), count(*) filter (where is_identified), avg(purchase_probability), "
        "sum(predicted_revenue) from main.user_insights"
    ).fetchone()
    probabilities = np.array(
        [r[0] for r in con.execute("select purchase_probability from main.user_insights").fetchall()], dtype=float
    )
    probabilities = probabilities[np.isfinite(probabilities)]
    counts, edges = np.histogram(probabilities, bins=20, range=(0.0, 1.0))
    segments = con.execute("select segment, count(*) from main.user_insights group by 1 order by 2 desc").fetchall()
    cohorts: list[dict[str, Any]]
    exported = (steps_summary or {}).get("export") or {}
    if exported.get("cohorts", {}).get("cohorts"):
        cohorts = [
            {"cohort": c["cohort"], "users": c["users"], "lift": c.get("lift")} for c in exported["cohorts"]["cohorts"]
        ]
    else:
        cohorts = [
            {"cohort": r[0], "users": int(r[1]), "lift": None}
            for r in con.execute(
                "select c, count(*) from (select unnest(cohorts) as c from main.user_insights) group by 1 order by 2 desc"
            ).fetchall()
        ]
    interests = con.execute(
        "select dimension, value, count(*) as users, avg(strength) as mean_strength from main.user_interests "
        "group by 1, 2 qualify row_number() over (partition by dimension order by users desc, mean_strength desc, value) "
        "<= 10 order by case dimension when 'category' then 0 when 'subcategory' then 1 else 2 end, 1, 3 desc, 4 desc, 2"
    ).fetchall()
    sessions_30 = con.execute(
        "select count(*), count(*) filter (where converted), coalesce(sum(revenue), 0) from main.fct_sessions "
        "where started_at >= ? and started_at < ?",
        [as_of - timedelta(days=30), as_of],
    ).fetchone()
    return {
        "as_of": str(as_of),
        "run_id": run_id,
        "generated_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "model_version": published["model_version"] if published else None,
        "summary": {
            "users": int(users[0]),
            "identified_users": int(users[1] or 0),
            "mean_purchase_probability": _finite(users[2]),
            "expected_buyers": _finite((users[2] or 0) * users[0]),
            "predicted_revenue": _finite(users[3]),
            "sessions_30d": int(sessions_30[0]),
            "converting_sessions_30d": int(sessions_30[1]),
            "revenue_30d": float(sessions_30[2]),
            "purchase_window_days": config.windows.purchase_days,
        },
        "funnel": _funnel(con, config, as_of, 30),
        "sessions": _sessions(con, as_of, 90),
        "segments": [[r[0], int(r[1])] for r in segments],
        "cohorts": cohorts,
        "purchase_histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
        "propensities": _propensities(published),
        "recommendations": _recommendations(con, config, published),
        "interests": [[r[0], r[1], int(r[2]), float(r[3])] for r in interests],
        "quality": _quality(con, config) | _freshness(con, config, as_of),
        "steps": _steps(steps_summary or {}),
    }


def _steps(steps_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's steps with status, time and what each did: as recorded by ``insights run``,
    or derived from the step summaries an Airflow DAG run passes along."""
    from insights.steps import headline

    if steps_summary.get("steps"):
        return steps_summary["steps"]
    rows = []
    for name in ("ingest", "transform", "train", "score", "export"):
        summary = steps_summary.get(name)
        if summary:
            rows.append(
                {
                    "step": name,
                    "status": "ok",
                    "seconds": summary.get("elapsed_seconds") or 0.0,
                    "detail": headline(name, summary),
                }
            )
    return rows


# ---------------------------------------------------------------------------- rendering

CSS = """
body{margin:0;background:#f3f4f6;color:#111827;font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif}
header{background:#111827;color:#f9fafb;padding:24px 32px}
header h1{margin:0 0 4px;font-size:24px} header p{margin:0;color:#d1d5db}
nav{padding:8px 32px;background:#1f2937} nav a{color:#93c5fd;margin-right:16px;font-size:13px;text-decoration:none}
main{max-width:1120px;margin:0 auto;padding:16px 24px 48px}
section{background:#fff;border-radius:10px;padding:18px 24px;margin:18px 0;box-shadow:0 1px 2px rgba(0,0,0,.06)}
h2{font-size:19px;margin:0 0 4px} .lead{color:#4b5563;margin:0 0 14px;font-size:14px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:18px}
.wide{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:18px}
.kpis{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px}
.kpi{background:#f9fafb;border-radius:8px;padding:12px 14px} .kpi b{display:block;font-size:24px}
.kpi span{color:#6b7280;font-size:12px}
table{border-collapse:collapse;font-size:13px;margin:8px 0;width:100%}
th,td{padding:5px 8px;border-bottom:1px solid #e5e7eb;text-align:right} th:first-child,td:first-child{text-align:left}
th{color:#374151;background:#f9fafb} td.t{text-align:left} .note{color:#6b7280;font-size:12px} .warn{color:#b45309}
"""


def _kpi(value: str, label: str) -> str:
    return f'<div class="kpi"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def _cell(value: Any) -> str:
    """Numbers align right, text left."""
    text = str(value)
    numeric = bool(re.fullmatch(r"[-+]?[\d.,]+(%|x|s)?|-", text))
    return f"<td>{escape(text)}</td>" if numeric else f'<td class="t">{escape(text)}</td>'


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(key: str, title: str, lead: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2><p class="lead">{escape(lead)}</p>{body}</section>'


def _freshness_html(q: dict[str, Any]) -> str:
    if q.get("newest_event_at") is None:
        return ""
    hours = q["data_lag_hours"]
    lag = f"{hours / 24:,.1f} days" if hours >= 48 else f"{hours:,.1f} hours"
    html = (
        f"<p class='note'>Newest event of a scored user: {escape(q['newest_event_at'])} UTC, "
        f"{lag} before the as-of instant.</p>"
    )
    if q.get("data_lag_warning"):
        html += f"<p class='warn'>Warning: {escape(q['data_lag_warning'])}</p>"
    if q.get("recommendation_warning"):
        html += f"<p class='warn'>Warning: {escape(q['recommendation_warning'])}</p>"
    return html


def _metric(value: Any, percent: bool = False) -> str:
    return charts.fmt(_finite(value), percent) if value is not None else "-"


def _calibrator_note(choice: dict[str, Any] | None) -> str:
    """Which probabilities the curve shows: isotonic-calibrated or the booster's own."""
    if not choice:
        return ""
    losses = (
        f" (cross-fitted log loss {choice['isotonic_log_loss']:.3f} calibrated, {choice['raw_log_loss']:.3f} raw)"
        if "raw_log_loss" in choice
        else ""
    )
    if choice.get("method") == "isotonic":
        return f"Probabilities: isotonic calibration, shrunk towards the base rate{losses}."
    why = choice.get("reason") or "a calibration did not help"
    return f"Probabilities: the booster's own scores; {why}{losses}."


def _probability_kind(entry: dict[str, Any] | None) -> str:
    """What the purchase histogram shows, in the words of its lead."""
    if not entry or "held_out" not in entry:
        return "rule-based scores, no model yet"
    if "held_out_lightgbm" in entry:
        return "RFM-cell rates (they did better than the model)"
    method = (entry.get("calibrator") or {}).get("method")
    if method == "isotonic":
        return "calibrated probabilities"
    return "the model's own probabilities" if method else "the model's probabilities"


def _propensity_block(name: str, entry: dict[str, Any], window: str) -> str:
    title = {"purchase": "Purchase", "churn": "Churn", "value": "Value (revenue)"}[name]
    if "held_out" not in entry:
        return (
            f"<div><h3>{title} {window}</h3><p class='note'>Rule-based ({escape(entry.get('method') or '?')}): "
            f"{escape(entry.get('reason') or '')}. No held-out curves until a model is trained.</p></div>"
        )
    model, base = entry["held_out"], entry.get("held_out_baseline", {})
    ours, rules = "model", "RFM rules"
    if "held_out_lightgbm" in entry:
        # The rules did better on the users that stopped the boosting: they score, and the
        # booster is shown beside them.
        model, ours, rules = entry["held_out_lightgbm"], "LightGBM (not used)", "RFM rules (used)"
    if "calibration" not in model:
        rows = [[label, _metric(m.get("mae")), _metric(m.get("rmse"))] for label, m in ((ours, model), (rules, base))]
        bars = charts.columns(
            ["mean absolute error"],
            {ours: [_finite(model.get("mae"))], rules: [_finite(base.get("mae"))]},
            f"{title}: error against the rules",
            width=320,
        )
        return f"<div><h3>{title} {window}</h3>{bars}{_table(['', 'MAE', 'RMSE'], rows)}</div>"
    curves = {ours: [(c["predicted"], c["observed"]) for c in model["calibration"]]}
    if base.get("calibration"):
        curves[rules] = [(c["predicted"], c["observed"]) for c in base["calibration"]]
    rate = model.get("base_rate") or 0
    lift = {
        ours: [c["observed"] / rate if rate else None for c in reversed(model["calibration"])],
        rules: [c["observed"] / rate if rate else None for c in reversed(base.get("calibration", []))],
    }
    deciles = [f"{10 * (i + 1)}%" for i in range(len(model["calibration"]))]
    if len(lift[rules]) != len(deciles):
        lift.pop(rules)
    table = _table(
        ["", "ROC AUC", "PR AUC", "Brier", "top-10% lift"],
        [
            [
                label,
                _metric(m.get("roc_auc")),
                _metric(m.get("pr_auc")),
                _metric(m.get("brier")),
                _metric(m.get("lift_top_decile")),
            ]
            for label, m in ((ours, model), (rules, base))
            if m
        ],
    )
    return (
        f"<div><h3>{title} {window}</h3><p class='note'>{escape(entry.get('reason') or '')}; "
        f"held-out users: {model.get('examples', 0):,}, base rate {charts.fmt(rate, True)}. "
        f"{escape(_calibrator_note(entry.get('calibrator')))}</p>"
        f'<div class="grid">{charts.calibration(curves, f"{title}: calibration")}'
        f"{charts.columns(deciles, lift, f'{title}: lift by score decile', width=420, reference=1.0, reference_label='average user')}"
        f"</div>{table}</div>"
    )


def render(data: dict[str, Any], config: Config) -> str:
    """The report as one HTML document."""
    s = data["summary"]
    parts: dict[str, str] = {}
    window = f"within {s['purchase_window_days']} days"

    parts["summary"] = _section(
        "summary",
        "At a glance",
        f"What the site and the models look like as of {data['as_of']} UTC.",
        '<div class="kpis">'
        + _kpi(f"{s['users']:,}", "users scored")
        + _kpi(f"{s['identified_users']:,}", "with a user id (synced to Segment)")
        + _kpi(f"{s['sessions_30d']:,}", "sessions in the last 30 days")
        + _kpi(
            charts.fmt(s["converting_sessions_30d"] / s["sessions_30d"], True) if s["sessions_30d"] else "-",
            "of those sessions converted",
        )
        + _kpi(f"{s['revenue_30d']:,.0f}", "revenue in the last 30 days")
        + _kpi(charts.fmt(s["mean_purchase_probability"] or 0, True), f"mean chance to buy {window}")
        + _kpi(f"{s['expected_buyers'] or 0:,.0f}", f"expected buyers {window}")
        + "</div>",
    )

    f = data["funnel"]
    parts["funnel"] = _section(
        "funnel",
        "Funnel",
        f"Sessions that reached each step in the last {f['days']} days, and how many dropped off before the next.",
        charts.funnel(f["steps"][: len(f["sessions"])], f["sessions"], "Funnel"),
    )

    sess = data["sessions"]
    short_days = [d[5:] for d in sess["days"]]
    parts["sessions"] = _section(
        "sessions",
        "Sessions and engagement",
        "Daily sessions over the last 90 days: all, engaged (Snowplow's definition) and converting; and the "
        "median engaged time per session.",
        '<div class="grid">'
        + charts.line(
            short_days,
            {"sessions": sess["sessions"], "engaged": sess["engaged"], "converting": sess["converted"]},
            "Sessions per day",
        )
        + charts.line(short_days, {"median engaged seconds": sess["median_engaged_seconds"]}, "Engaged time")
        + "</div>",
    )

    cohort_rows = [
        [c["cohort"], f"{c['users']:,}", "-" if c.get("lift") is None else f"{c['lift']:.2f}x"] for c in data["cohorts"]
    ]
    parts["segments"] = _section(
        "segments",
        "Segments and cohorts",
        "RFM segments of every user, and the size of each cohort (lift: its mean chance to buy over the average "
        "user's).",
        '<div class="grid">'
        + charts.hbar([r[0] for r in data["segments"]], [r[1] for r in data["segments"]], "Users per segment")
        + charts.hbar(
            [c["cohort"] for c in data["cohorts"]],
            [c["users"] for c in data["cohorts"]],
            "Users per cohort",
            notes=[r[2] if r[2] != "-" else "" for r in cohort_rows],
            color=charts.PALETTE[3],
        )
        + "</div>"
        + _table(["cohort", "users", "lift"], cohort_rows),
    )

    hist = data["purchase_histogram"]
    edges = hist["edges"]
    labels = [f"{100 * edges[i]:.0f}-{100 * edges[i + 1]:.0f}%" for i in range(len(hist["counts"]))]
    parts["purchase"] = _section(
        "purchase",
        "Purchase probability",
        f"How many users have each chance of buying {window} "
        f"({_probability_kind(data['propensities'].get('purchase'))}, in steps of 5 points).",
        charts.columns(
            labels,
            {"users": hist["counts"]},
            "Distribution of purchase probability",
            width=900,
        )
        + f"<p class='note'>Mean {charts.fmt(s['mean_purchase_probability'] or 0, True)}; "
        f"{s['expected_buyers'] or 0:,.0f} buyers expected among {s['users']:,} users.</p>",
    )

    blocks = [
        _propensity_block(name, entry, {"purchase": window, "churn": "", "value": ""}[name])
        for name, entry in data["propensities"].items()
    ]
    parts["propensities"] = _section(
        "propensities",
        "Propensity models against their baselines",
        "On users held out from training: calibration (observed against predicted; the diagonal is perfect) and "
        "lift by score decile (how much more often the top-scored users convert), beside the RFM rules every model "
        "must beat.",
        "".join(blocks) or "<p class='note'>No published model yet.</p>",
    )

    rec = data["recommendations"]
    rec_body = "<p class='note'>No published model yet.</p>"
    if rec["current"]:
        cur = rec["current"]
        keys = [
            ("hr_at_10", "HR@10"),
            ("ndcg_at_10", "NDCG@10"),
            ("recall_at_20", "recall@20"),
            ("coverage", "coverage"),
        ]
        series = {f"this model ({cur['version']})": [_finite(cur.get(k)) for k, _ in keys]}
        if cur.get("popularity_baseline"):
            series["most popular items"] = [_finite(cur["popularity_baseline"].get(k)) for k, _ in keys]
        if rec["previous"]:
            series[f"previous model ({rec['previous']['version']})"] = [
                _finite(rec["previous"].get(k)) for k, _ in keys
            ]
        rows = [[name, *[_metric(v) for v in values]] for name, values in series.items()]
        rec_body = charts.columns([label for _, label in keys], series, "Recommendation quality", width=760) + _table(
            ["", *[label for _, label in keys]], rows
        )
        rec_body += (
            f"<p class='note'>Time split: fitted on what was known up to the split, scored on the items "
            f"{cur.get('users', 0):,} users interacted with afterwards.</p>"
        )
        backtest = rec.get("backtest") or {}
        if backtest.get("recommendations"):
            bt = backtest["recommendations"]
            rows = [
                [name.replace("_", " "), *[_metric(m.get(k)) for k, _ in keys]]
                for name, m in bt.items()
                if isinstance(m, dict) and "hr_at_10" in m
            ]
            rec_body += f"<h3>Latest backtest (as of {escape(str(backtest.get('as_of')))})</h3>" + _table(
                ["", *[label for _, label in keys]], rows
            )
    parts["recommendations"] = _section(
        "recommendations",
        "Recommendations",
        "Hit rate, ranking quality and catalog coverage of the recommendations, against recommending the most "
        "popular items and against the model published before this one.",
        rec_body,
    )

    interests = data["interests"]
    by_dimension: dict[str, list[list[Any]]] = {}
    for dimension, value, users, strength in interests:
        by_dimension.setdefault(dimension, []).append([value, users, strength])
    charts_html = "".join(
        charts.hbar(
            [r[0] for r in rows[:10]],
            [r[1] for r in rows[:10]],
            f"Users interested, by {dimension}",
            notes=[f"strength {r[2]:.2f}" for r in rows[:10]],
            color=charts.PALETTE[2 + i % 3],
            width=520,
        )
        for i, (dimension, rows) in enumerate(by_dimension.items())
    )
    parts["interests"] = _section(
        "interests",
        "Top interests",
        "The categories and brands that appear most often among users' top interests (strength in [0, 1], decayed "
        "over time).",
        f'<div class="wide">{charts_html}</div>' if charts_html else "<p class='note'>No interests yet.</p>",
    )

    q = data["quality"]
    reasons = _table(["quarantine reason", "lines"], [[r, f"{n:,}"] for r, n in q["quarantine_reasons"]])
    checks = (
        _table(["source", "failed expectation", "column", "rows"], q["failed_checks"])
        if q["failed_checks"]
        else "<p class='note'>Every Great Expectations check passed.</p>"
    )
    parts["quality"] = _section(
        "quality",
        "Data quality",
        "What ingestion read, loaded, de-duplicated and quarantined, and what the warehouse models removed "
        "(bots, late arrivals, events outside a page view).",
        '<div class="grid">'
        + charts.hbar(
            ["lines read", "loaded", "duplicates", "quarantined", "Singer control messages"],
            [q["lines_read"], q["loaded"], q["duplicates"], q["quarantined"], q["control_messages"]],
            "Ingestion",
            color=charts.PALETTE[5],
        )
        + charts.hbar(
            ["events in the warehouse", "bot user agents", "removed by models", "clean events"],
            [q["raw_events"], q["bot_agent_events"], q["removed_by_models"], q["clean_events"]],
            "Warehouse",
            color=charts.PALETTE[6],
        )
        + "</div>"
        + _freshness_html(q)
        + (
            f"<p class='warn'>{q['loads_not_ok']} of {q['loads']} loads did not finish ok.</p>"
            if q["loads_not_ok"]
            else ""
        )
        + reasons
        + checks,
    )

    steps = data.get("steps") or []
    run_rows = [
        [st["step"], st.get("status", "ok"), f"{st.get('seconds', 0):.1f}s", st.get("detail", "")] for st in steps
    ]
    parts["run"] = _section(
        "run",
        "This run",
        f"Run {data.get('run_id') or '-'}, model {data.get('model_version') or '-'}, generated {data['generated_at']}.",
        _table(["step", "status", "time", "what it did"], run_rows)
        if run_rows
        else "<p class='note'>Step timings are recorded by insights run and the Airflow DAGs.</p>",
    )

    nav = "".join(f'<a href="#{key}">{escape(title)}</a>' for key, title in SECTIONS)
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>User insights as of {escape(data['as_of'])}</title><style>{CSS}</style></head><body>"
        f"<header><h1>User insights</h1><p>As of {escape(data['as_of'])} UTC · model "
        f"{escape(str(data.get('model_version') or '-'))} · run {escape(str(data.get('run_id') or '-'))}</p></header>"
        f"<nav>{nav}</nav><main>" + "".join(parts[key] for key, _ in SECTIONS) + "</main></body></html>"
    )


def write_report(
    config: Config,
    con: duckdb.DuckDBPyConnection,
    as_of: datetime | None = None,
    run_id: str | None = None,
    steps_summary: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Render the report and store it locally and in the datastore; returns where."""
    from exports.datastore import open_store, partitions

    data = gather(config, con, as_of, run_id, steps_summary)
    html = render(data, config)
    dt = data["as_of"][:10]
    folder = Path(config.resolve(config.report.out_dir))
    folder.mkdir(parents=True, exist_ok=True)
    local = folder / f"run_report_{dt}.html"
    replace_text(local, html)
    store = open_store(config)
    key = f"reports/dt={dt}/run_report.html"
    store.put_bytes(key, html.encode("utf-8"))
    store.put_bytes(f"reports/dt={dt}/run_report.json", json.dumps(data, indent=1, default=str).encode("utf-8"))
    reports = partitions(store, "reports")
    stale = sorted(reports)[: -config.datastore.retention]
    if stale:
        store.delete([key for dt in stale for key in reports[dt]])
    return {"path": str(local), "datastore": store.location(key), "as_of": data["as_of"], "bytes": len(html)}
