"""Train, score and evaluate: the learning step end to end.

``train`` fits every model as of an instant from what was known before it, versions it and
publishes it if it is not worse than the published one. ``score`` applies the published
version to the features of an instant and writes ``user_insights``, ``recommendations``,
``item_similar`` and ``trending`` (plus ``user_interests``) into the warehouse. ``evaluate``
trains and scores at a past instant and measures everything against what happened after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy import sparse

from insights.config import Config, cutoff_steps
from insights.timing import timed, timed_call
from insights.transform import (
    FEATURE_MODELS,
    INTERACTION_MODELS,
    SNAPSHOT_MODELS,
    build_snapshots,
    snapshot_schema_name,
)
from insights.warehouse import connect, query_frame, require_table, transaction
from models_ml import als, data, interests, picks, propensity, registry, segments
from models_ml.content import CatalogEncoder, cold_vectors, fit_mapping
from models_ml.metrics import classification_metrics, ranking_metrics, regression_metrics
from models_ml.recommend import cap_per_group, similar_items, top_k

log = logging.getLogger(__name__)

# Training cutoffs need some history behind them to have features worth learning from.
MIN_HISTORY_DAYS = 7
# Candidates per user before the category cap: enough that a cap of 3 still fills the list.
CANDIDATE_FACTOR = 5


class MLError(RuntimeError):
    """The learning step cannot run: the message says what is missing."""


@dataclass
class Plan:
    """The instants a training run reads features at."""

    as_of: datetime
    anchor: datetime  # labels reach at most here: the as-of instant or the last event before it
    als_split: datetime
    cutoffs: dict[str, list[datetime]]  # per target, latest first


def make_plan(config: Config, as_of: datetime, first_event: datetime, last_event: datetime) -> Plan:
    """Cutoffs on one grid, every ``cutoff_step_days`` back from the anchor's day, so the
    targets share feature snapshots; per target the latest ``training_cutoffs`` whose label
    window is complete before the anchor, none without a week of history behind it."""
    ml = config.ml
    anchor = min(as_of, last_event + timedelta(seconds=1))
    day = datetime(anchor.year, anchor.month, anchor.day)
    earliest = first_event + timedelta(days=MIN_HISTORY_DAYS)
    cutoffs: dict[str, list[datetime]] = {}
    for target, window in window_days(config).items():
        grid = (day - timedelta(days=ml.cutoff_step_days * j) for j in cutoff_steps(window, ml))
        cutoffs[target] = [c for c in grid if c >= earliest]
    return Plan(as_of=as_of, anchor=anchor, als_split=day - timedelta(days=ml.validation_days), cutoffs=cutoffs)


def window_days(config: Config) -> dict[str, int]:
    """Each propensity's outcome window in days."""
    w = config.windows
    return {"purchase": w.purchase_days, "churn": w.churn_days, "value": w.value_days}


def _indexed(values: list[str] | np.ndarray) -> dict[str, int]:
    return {v: i for i, v in enumerate(values)}


_SNAPSHOTS_DDL = """
create schema if not exists ml;
create table if not exists ml.snapshots (
    schema_name varchar primary key, as_of timestamp, vars_hash varchar,
    events_loaded_at timestamp, catalog_loaded_at timestamp, built_at timestamp
);
-- The models a snapshot holds (comma-separated); null: all of SNAPSHOT_MODELS.
alter table ml.snapshots add column if not exists models varchar;
"""


ALL_MODELS = frozenset(SNAPSHOT_MODELS)


def _needs(plan: Plan) -> dict[datetime, frozenset[str]]:
    """The models training reads at each instant: everything now, the interactions at the
    ALS split, the user features at each propensity cutoff."""
    needs: dict[datetime, frozenset[str]] = {plan.as_of: ALL_MODELS}
    parts = [(plan.als_split, INTERACTION_MODELS)] + [(c, FEATURE_MODELS) for cs in plan.cutoffs.values() for c in cs]
    for instant, models in parts:
        needs[instant] = needs.get(instant, frozenset()) | models
    return needs


def _vars_hash(config: Config) -> str:
    return hashlib.sha256(json.dumps(config.transform.dbt_vars(), sort_keys=True).encode()).hexdigest()[:16]


def _feature_schemas(config: Config, needs: dict[datetime, frozenset[str]]) -> dict[datetime, str]:
    """A schema with the as-of-dependent models each instant needs: main when it matches,
    else a point-in-time snapshot, reused from an earlier run while it is still exact (same
    transform settings, same catalog, no event loaded since that happened before it) and
    holds the models wanted."""
    wanted = sorted(needs)
    con = connect(config)
    try:
        con.execute(_SNAPSHOTS_DDL)
        main_as_of = _main_as_of(con)
        vars_hash = _vars_hash(config)
        events_loaded, catalog_loaded = con.execute(
            "select (select max(loaded_at) from main.fct_events), (select max(loaded_at) from raw.catalog_items)"
        ).fetchone()
        existing = {r[0] for r in con.execute("select schema_name from information_schema.schemata").fetchall()}
        schemas: dict[datetime, str] = {}
        for instant in wanted:
            name = snapshot_schema_name(instant)
            if instant == main_as_of:
                schemas[instant] = "main"
                continue
            row = con.execute(
                "select events_loaded_at, models from ml.snapshots where schema_name = ? and vars_hash = ? "
                "and catalog_loaded_at is not distinct from ?",
                [name, vars_hash, catalog_loaded],
            ).fetchone()
            held = ALL_MODELS if row is None or row[1] is None else frozenset(row[1].split(","))
            if row and name in existing and needs[instant] <= held:
                late = con.execute(
                    "select count(*) from main.fct_events where loaded_at > ? and occurred_at < ?", [row[0], instant]
                ).fetchone()[0]
                if late == 0:
                    schemas[instant] = name
    finally:
        con.close()
    built = [instant for instant in wanted if instant not in schemas]
    if built:
        schemas.update(build_snapshots(config, {instant: needs[instant] for instant in built}))
        con = connect(config)
        try:
            for instant in built:
                con.execute(
                    "insert or replace into ml.snapshots "
                    "(schema_name, as_of, vars_hash, events_loaded_at, catalog_loaded_at, built_at, models) "
                    "values (?, ?, ?, ?, ?, now()::timestamp, ?)",
                    [
                        schemas[instant],
                        instant,
                        vars_hash,
                        events_loaded,
                        catalog_loaded,
                        ",".join(m for m in SNAPSHOT_MODELS if m in needs[instant]),
                    ],
                )
        finally:
            con.close()
    log.info("feature snapshots: %d reused, %d built", len(wanted) - len(built), len(built))
    return schemas


def _prune_snapshots(con: duckdb.DuckDBPyConnection, keep: dict[datetime, str]) -> None:
    """Drop the snapshots this run does not use; the ones it used serve the next run."""
    con.execute(_SNAPSHOTS_DDL)
    for (name,) in con.execute(
        "select schema_name from information_schema.schemata where schema_name like 'pit_%'"
    ).fetchall():
        if name not in keep.values():
            con.execute(f"drop schema if exists {name} cascade")
            con.execute("delete from ml.snapshots where schema_name = ?", [name])


def _examples(
    con: duckdb.DuckDBPyConnection,
    config: Config,
    schemas: dict[datetime, str],
    cutoffs: list[datetime],
    target: str,
    cache: dict[tuple[Any, ...], pd.DataFrame] | None = None,
) -> list[pd.DataFrame]:
    """Features at each cutoff with the label from the window after it, one frame per
    cutoff (in the order of ``cutoffs``). ``cache`` keeps the features of a cutoff and the
    outcomes of a window for the next target that needs them."""
    window = window_days(config)[target.removesuffix("_inactive")]
    cache = {} if cache is None else cache
    frames = []
    for cutoff in cutoffs:
        if ("features", cutoff) not in cache:
            cache["features", cutoff] = data.features(con, schemas[cutoff])
        end = cutoff + timedelta(days=window)
        if ("outcomes", cutoff, end) not in cache:
            labels = data.labels(con, cutoff, end, config.transform.conversion_event)
            cache["outcomes", cutoff, end] = _outcomes(cache["features", cutoff], labels)
        outcome = cache["outcomes", cutoff, end]
        label = {"purchase": "converted", "value": "revenue"}.get(target, "inactive")
        frame = cache["features", cutoff].assign(label=outcome[label], cutoff=cutoff)
        if target == "churn":
            frame = frame[frame["recency_days"] <= config.windows.churn_days]
        frames.append(frame)
    return frames


def _outcomes(feats: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Each feature row's outcome as a label, in the rows' order: ``converted`` and
    ``inactive`` (1.0 or 0.0) and ``revenue``; a user without a row in ``labels`` did
    nothing. The labels are looked up by position through Arrow, not merged: a merge
    copied every feature column at every cutoff for every target (2.4 s of a training
    run at 10M events)."""
    at = (
        pc.index_in(
            pa.array(feats["user_id"], type=pa.string(), from_pandas=True),
            value_set=pa.array(labels["user_id"], type=pa.string(), from_pandas=True),
        )
        .fill_null(-1)
        .to_numpy(zero_copy_only=False)
    )
    found = at >= 0
    rows = labels.iloc[np.where(found, at, 0)] if len(labels) else None

    def column(name: str, missing: Any) -> pd.Series:
        if rows is None:
            return pd.Series(missing, index=feats.index)
        return rows[name].set_axis(feats.index).where(found, missing).fillna(missing)

    return pd.DataFrame(
        {
            "converted": column("converted", False).astype(float),
            "revenue": column("revenue", 0.0).astype(float),
            "inactive": (~column("active", False).astype(bool)).astype(float),
        },
        index=feats.index,
    )


def _train_propensities(
    con: duckdb.DuckDBPyConnection, config: Config, schemas: dict[datetime, str], plan: Plan
) -> dict[str, propensity.TrainedTarget]:
    targets: dict[str, propensity.TrainedTarget] = {}
    cache: dict[tuple[Any, ...], pd.DataFrame] = {}
    for name, kind in (("purchase", "binary"), ("churn", "binary"), ("value", "regression")):
        cutoffs = plan.cutoffs[name]
        # The latest cutoff's examples stop and check, the earlier ones train (kept apart
        # from the start: filtering one joined frame twice copied every example, 1.1 s).
        # Numbered as in one frame, the latest cutoff's rows first.
        frames = _examples(con, config, schemas, cutoffs, name, cache)
        empty = pd.DataFrame(columns=["user_id", "cutoff", "label"])
        valid = frames[0].set_axis(pd.RangeIndex(len(frames[0]))) if frames else empty
        train = pd.concat(frames[1:], ignore_index=True) if len(frames) > 1 else valid.iloc[0:0]
        train = train.set_axis(pd.RangeIndex(len(valid), len(valid) + len(train)))
        if len(cutoffs) < 2:
            log.warning("%s: %d training cutoff(s) with a complete label window", name, len(cutoffs))
        rule = {"purchase": "recent_order", "churn": "recency", "value": "run_rate"}[name]
        targets[name] = propensity.train_target(
            name,
            kind,
            train,
            valid,
            config.ml.min_class_examples,
            config.ml.seed,
            rule=rule,
            window_days=window_days(config)[name],
        )
    # Users already inactive for a whole churn window are outside the churn model's
    # population; their churn probability is the observed rate of their RFM cell.
    inactive_frames = _examples(con, config, schemas, plan.cutoffs["churn"], "churn_inactive", cache)
    everyone = pd.concat(inactive_frames, ignore_index=True) if inactive_frames else pd.DataFrame()
    inactive = (
        propensity.Heuristic.fit(everyone, everyone["label"].to_numpy())
        if len(everyone)
        else propensity.Heuristic(rule="recency", window_days=config.windows.churn_days)
    )
    targets["churn_inactive"] = propensity.TrainedTarget(
        name="churn_inactive",
        kind="binary",
        method="heuristic",
        reason="users inactive longer than the churn window: observed RFM-cell rate",
        heuristic=inactive,
    )
    return targets


def sample_users(relevant: dict[int, set[int]], limit: int, seed: int) -> dict[int, set[int]]:
    """At most ``limit`` users of ``relevant``, a fixed random sample. Scoring every ALS
    candidate for every active user costs more than fitting it at 10M events; a sample of
    20k ranks the candidates the same (NDCG@10's standard error there is about 0.002)."""
    if len(relevant) <= limit:
        return relevant
    keep = np.random.default_rng(seed).choice(sorted(relevant), limit, replace=False)
    return {int(u): relevant[int(u)] for u in sorted(keep)}


def _relevant_after(
    later: pd.DataFrame, user_index: dict[str, int], item_index: dict[str, int], exclude: sparse.csr_matrix
) -> dict[int, set[int]]:
    """The items each user of the time split (matrix row) turned to after it (``later``'s
    user and item ids), less the excluded ones; users left with none are not in it. Looked
    up in arrays: a dict lookup per pair and a sparse row per user took 1.48 s at 10M events,
    this 0.17 s."""
    rows = als.positions(user_index, later["user_id"])
    cols = als.positions(item_index, later["item_id"])
    known = (rows >= 0) & (cols >= 0)
    rows, cols = rows[known], cols[known]
    if len(rows):
        kept = np.asarray(exclude[rows, cols]).ravel() == 0
        rows, cols = rows[kept], cols[kept]
    relevant: dict[int, set[int]] = {}
    for row, col in zip(rows.tolist(), cols.tolist()):
        relevant.setdefault(row, set()).add(col)
    return relevant


def _train_als(
    con: duckdb.DuckDBPyConnection,
    config: Config,
    schemas: dict[datetime, str],
    plan: Plan,
    timings: dict[str, float],
    catalog: pd.DataFrame | None = None,
) -> tuple[als.ALSParams, dict[str, Any], pd.DataFrame, pd.DataFrame, list[str], list[str], Any]:
    """Choose the ALS parameters on the time split and start the final fit (see
    :func:`als.fit_aside`). ``catalog``: the items as of the plan's instant, when the caller
    has read them already."""
    ml = config.ml
    now_schema = schemas[plan.as_of]
    if catalog is None:
        catalog = data.items(con, now_schema)
    now = data.interactions(con, now_schema)
    item_ids = als.sorted_unique(catalog["item_id"], now["item_id"])
    item_index = _indexed(item_ids)
    grid = als.grid(ml.als_factors, ml.als_regularization, ml.als_alpha, ml.als_iterations)

    # Choose the parameters on a time split: fit on what was known at the split, score on
    # what the users did between the split and the anchor.
    before = data.interactions(con, schemas[plan.als_split])
    split_users = als.sorted_unique(before["user_id"])
    split_index = _indexed(split_users)
    train_matrix = als.interaction_matrix(
        split_index, item_index, before["user_id"], before["item_id"], before["weight"].to_numpy()
    )
    bought = before[before["purchases"] > 0] if ml.exclude_purchased else before.iloc[0:0]
    exclude = als.interaction_matrix(
        split_index, item_index, bought["user_id"], bought["item_id"], np.ones(len(bought))
    )
    relevant = sample_users(
        _relevant_after(data.relevant_items(con, plan.als_split, plan.anchor), split_index, item_index, exclude),
        ml.validation_max_users,
        ml.seed,
    )
    if relevant and train_matrix.nnz:
        with timed(timings, "als_tuning"):
            best, trials, chosen_model = als.tune(
                train_matrix,
                relevant,
                exclude,
                grid,
                ml.history_weights,
                ml.seed,
                screen_iterations=ml.als_screen_iterations
                if train_matrix.nnz >= ml.als_screen_min_interactions
                else None,
                finalists=ml.als_finalists,
                processes=als.worker_processes(ml.als_processes, train_matrix),
                grow_factors=ml.als_grow_factors,
            )
        chosen = next(t for t in trials if t["params"] == best.__dict__ and t["stage"] == "final")
        validation = {k: v for k, v in chosen.items() if k != "params"}
        validation["popularity_baseline"] = als.popularity_baseline(train_matrix, relevant, exclude)
        start = chosen_model.item_factors if ml.als_warm_iterations else None
    else:
        best, trials, validation = grid[len(grid) // 2], [], {"note": "no interactions after the split"}
        start = None
    report = {
        "params": best.__dict__,
        "validation": validation,
        "trials": trials,
        "split_at": plan.als_split,
        "final_fit": f"{ml.als_warm_iterations} iterations from the chosen candidate's item vectors"
        if start is not None
        else f"{best.iterations} iterations from scratch",
    }

    user_ids = als.sorted_unique(now["user_id"])
    matrix = als.interaction_matrix(
        _indexed(user_ids), item_index, now["user_id"], now["item_id"], now["weight"].to_numpy()
    )
    # The final fit runs beside the catalog encoder and the propensities (see als.fit_aside),
    # from the chosen candidate's item vectors (see als.fit_warm): the items are the same
    # columns on the split and now.
    aside = als.worker_processes(ml.als_processes, matrix) > 1
    final_fit = als.fit_aside(matrix, best, ml.seed, aside, start, ml.als_warm_iterations)
    return best, report, catalog, now, user_ids, item_ids, final_fit


def _version(as_of: datetime, params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{as_of:%Y%m%dT%H%M%S}-{digest}"


def model_dir(config: Config) -> Path:
    return Path(config.resolve(config.ml.model_dir))


def _encode_catalog(config: Config, catalog: pd.DataFrame) -> tuple[CatalogEncoder, np.ndarray]:
    """The catalog encoder fitted on ``catalog`` and the text vectors of its items in item
    id order (the order of the model's item ids)."""
    encoder = CatalogEncoder(config.ml.text_dimensions, config.ml.seed).fit(catalog)
    ordered = catalog.set_index("item_id").loc[als.sorted_unique(catalog["item_id"])].reset_index()
    return encoder, encoder.transform(ordered)


def _encode_aside(
    config: Config, catalog: pd.DataFrame, timings: dict[str, float]
) -> Future[tuple[CatalogEncoder, np.ndarray]]:
    """:func:`_encode_catalog` on a thread of its own (sklearn's text features hold the GIL,
    which the snapshots' build, a child process, leaves free), timed as ``catalog_encoder``."""
    helper = ThreadPoolExecutor(1, thread_name_prefix="catalog-encoder")
    try:
        return helper.submit(timed_call, timings, "catalog_encoder", _encode_catalog, config, catalog)
    finally:
        helper.shutdown(wait=False)  # the thread ends when the encoder is done


def _main_as_of(con: duckdb.DuckDBPyConnection) -> datetime | None:
    """The instant the warehouse's own (main) user models are as of; none before a transform."""
    try:
        return data.feature_as_of(con, "main")
    except duckdb.Error:
        return None


def train(config: Config, as_of: datetime, backtest: bool = False) -> dict[str, Any]:
    """Fit ALS, the catalog encoder and the propensities as of ``as_of``; version them and
    publish them unless they are worse than the published version (backtests never publish)."""
    con = connect(config, read_only=True)
    try:
        require_table(con, "main.fct_events", "run insights transform first")
        first_event, last_event = data.data_span(con, as_of)
        if last_event is None:
            raise MLError(f"no events before {as_of:%Y-%m-%d %H:%M:%S}: run `insights ingest` and `insights transform`")
        data_print = data.fingerprint(con, as_of)
        warnings = [w for w in [data.conversion_warning(con, config, as_of)] if w]
        # Trained right after a transform, the warehouse's own models are as of this
        # instant: the catalog the encoder learns is known before the snapshots are built.
        early_catalog = data.items(con, "main") if _main_as_of(con) == as_of else None
    finally:
        con.close()
    for _, message in warnings:
        log.warning("%s", message)
    plan = make_plan(config, as_of, first_event, last_event)
    timings: dict[str, float] = {}
    # The encoder is fitted beside the snapshots' dbt child, which keeps one core busy for
    # its first seconds (its start and parse), instead of beside the final ALS fit and the
    # propensities, which keep both busy.
    early = _encode_aside(config, early_catalog, timings) if early_catalog is not None else None
    with timed(timings, "feature_snapshots"):
        schemas = _feature_schemas(config, _needs(plan))
    con = connect(config)
    try:
        best, als_report, catalog, now, user_ids, item_ids, final_fit = _train_als(
            con, config, schemas, plan, timings, early_catalog
        )
        users_per_item = now.groupby("item_id")["user_id"].nunique()
        warm = np.array([users_per_item.get(i, 0) >= config.ml.min_item_users for i in item_ids], dtype=bool)
        in_catalog = catalog.set_index("item_id")
        catalog_rows = np.array([i in in_catalog.index for i in item_ids], dtype=bool)
        if early is not None:
            # Fitted beside the snapshots on this very catalog (main is as of this instant,
            # so the snapshots took main for it: see _feature_schemas).
            with timed(timings, "catalog_encoder_wait"):
                encoder, text = early.result()
        else:
            encoder, text = timed_call(timings, "catalog_encoder", _encode_catalog, config, catalog)
        with timed(timings, "propensities"):
            targets = _train_propensities(con, config, schemas, plan)
        with timed(timings, "als_fit_wait"):
            model, timings["als_fit"] = final_fit.result()
        with timed(timings, "catalog_encoder"):
            mapping = fit_mapping(text, model.item_factors[catalog_rows], warm[catalog_rows])
        metrics: dict[str, Any] = {"als": als_report}
        for name, target in targets.items():
            metrics[name] = {"method": target.method, "reason": target.reason, **target.metrics}
        # Everything that shapes the model names its version: the same data and settings give
        # the same version (a re-run changes nothing); other data or transform settings (a new
        # conversion event, say) give a new one, which must pass the publish gate.
        params = {
            "data": data_print,
            "transform": config.transform.model_settings(),
            "windows": config.windows.model_dump(),
            "evaluation": propensity.EVALUATION,
            "ml": config.ml.model_dump(exclude={"model_dir", "report_dir"}),
            "cutoffs": {k: [c.isoformat() for c in v] for k, v in plan.cutoffs.items()},
            "users": len(user_ids),
            "items": len(item_ids),
            "interactions": len(now),
        }
        version = _version(as_of, {"params": params, "als": best.__dict__})
        bundle = registry.ModelBundle(
            version=version,
            as_of=as_of,
            als_params=best,
            user_ids=np.array(user_ids, dtype=str),
            user_factors=model.user_factors,
            item_ids=np.array(item_ids, dtype=str),
            item_factors=model.item_factors,
            warm_items=warm,
            encoder=encoder,
            mapping=mapping,
            targets=targets,
            metrics=metrics,
            params=params,
        )
        folder = model_dir(config) / ("backtests" if backtest else "versions") / version
        bundle.save(folder)
        current = registry.published(con)
        if backtest:
            status, reason = "backtest", "trained for a backtest; never published"
        else:
            if current is not None and current["model_version"] == version:
                # The same data and parameters give the same version: keep its record as it
                # was, so that a re-run (after a crash, or a retry) changes nothing.
                ok = True
                reason = con.execute(
                    "select reason from ml.model_versions where model_version = ?", [version]
                ).fetchone()[0]
            else:
                ok, reason = registry.compare(
                    metrics,
                    (current or {}).get("metrics"),
                    config.ml.publish_tolerance,
                    registry.changed_settings(params, (current or {}).get("params")),
                )
            status = "published" if ok else "rejected"
        with transaction(con):
            registry.record(con, bundle, first_event, last_event, status, reason, folder)
            if not backtest:
                _prune_snapshots(con, schemas)
    finally:
        con.close()
    log.info("model %s %s: %s (seconds: %s)", version, status, reason, timings)
    return {
        "model_version": version,
        "status": status,
        "reason": reason,
        "path": str(folder),
        "als": {"params": best.__dict__, **als_report["validation"], "final_fit": als_report["final_fit"]},
        "propensities": {
            name: {"method": t.method, "reason": t.reason, **_headline(t.metrics)} for name, t in targets.items()
        },
        "users": len(user_ids),
        "items": len(item_ids),
        "warnings": [message for _, message in warnings],
        "warning_headlines": [headline for headline, _ in warnings],
        "seconds": timings,
    }


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    held = metrics.get("held_out") or {}
    base = metrics.get("held_out_baseline") or {}
    keys = ("roc_auc", "pr_auc", "brier", "mae")
    return {
        **{k: held[k] for k in keys if k in held},
        **{f"baseline_{k}": base[k] for k in keys if k in base},
    }


def load_published(config: Config) -> registry.ModelBundle:
    con = connect(config, read_only=True)
    try:
        try:
            current = registry.published(con)
        except duckdb.Error:
            current = None
    finally:
        con.close()
    if current is None:
        raise MLError("no published model: run `insights train` first")
    return registry.ModelBundle.load(Path(current["path"]))


@dataclass
class Scores:
    """Everything ``score`` produces, as frames (written to the warehouse unless a backtest)."""

    as_of: datetime
    model_version: str
    users: pd.DataFrame
    recommendations: pd.DataFrame
    item_similar: pd.DataFrame
    trending: pd.DataFrame
    interests: pd.DataFrame
    seconds: dict[str, float] = field(default_factory=dict)  # where the time went, by part
    picks_reused: int = 0  # warm users whose model picks came from the previous run (models_ml.picks)
    picks_computed: int = 0  # warm users folded in and ranked by this run
    similar_key: str | None = None  # what item_similar was computed from (_similar_key)
    similar_reused: bool = False  # item_similar read back: model, items and stock unchanged
    newest_event_at: datetime | None = None  # the latest event of any scored user
    # (headline, message): a stalled source, users left without a list
    warnings: list[tuple[str, str]] = field(default_factory=list)


def _item_vectors(bundle: registry.ModelBundle, catalog: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """A vector per catalog item: ALS for warm items, text mapped into ALS space for the rest.
    Returns the vectors and a reason per item (``collaborative`` or ``content``)."""
    # Looked up through numpy object arrays: iterating the Arrow-backed columns, or a
    # Series' .get per item, made a Python scalar each way (1.8 s of an hourly score at 10M).
    index = _indexed(bundle.item_ids)
    item_ids = catalog["item_id"].to_numpy(dtype=object)
    positions = np.array([index.get(i, -1) for i in item_ids], dtype=np.int64)
    warm_items = np.asarray(bundle.warm_items, dtype=bool)
    warm = (positions >= 0) & (warm_items[np.maximum(positions, 0)] if len(warm_items) else False)
    vectors = np.zeros((len(catalog), bundle.item_factors.shape[1]), dtype=np.float32)
    vectors[warm] = bundle.item_factors[positions[warm]]
    if (~warm).any() and bundle.mapping is not None:
        warm_positions = np.flatnonzero(bundle.warm_items)
        known_groups = dict(zip(item_ids, catalog["category"].to_numpy(dtype=object)))
        warm_groups = np.array([known_groups.get(i, "") for i in bundle.item_ids[warm_positions]], dtype=object)
        text = bundle.encoder.transform(catalog[~warm].reset_index(drop=True))
        vectors[~warm] = cold_vectors(
            bundle.mapping,
            text,
            catalog["category"].to_numpy()[~warm],
            bundle.item_factors[warm_positions],
            warm_groups,
        )
    return vectors, np.where(warm, "collaborative", "content")


def _trending(catalog: pd.DataFrame, limit: int) -> pd.DataFrame:
    """The in-stock items whose recent activity rose most, globally and per top category.
    Where fewer than ``limit`` items trend (a quiet spell, a small site: nothing viewed in
    the recent days), a list goes on with the most popular of the other in-stock items
    (decayed popularity over the baseline window), scored below every trending item, so
    that cold users and unknown visitors still get a full list while there was any
    activity in the baseline window."""
    stock = catalog[catalog["in_stock"].fillna(False)]
    trend_score = stock["trending_score"].fillna(0)
    popularity = stock["popularity"].fillna(0)
    trending, quiet = stock[trend_score > 0], stock[(trend_score <= 0) & (popularity > 0)]
    if len(quiet):
        floor = float(trending["trending_score"].min()) if len(trending) else 1.0
        quiet = quiet.assign(trending_score=0.5 * floor * quiet["popularity"] / quiet["popularity"].max())
    parts = [f for f in (trending, quiet) if len(f)]
    live = pd.concat(parts) if parts else trending
    live = live.sort_values(["trending_score", "item_id"], ascending=[False, True])
    overall = live.head(limit).assign(scope="global")
    per_category = live.groupby("category_l1", group_keys=False).head(limit).assign(scope=lambda f: f["category_l1"])
    frame = pd.concat([overall, per_category], ignore_index=True)
    frame["rank"] = frame.groupby("scope").cumcount() + 1
    return frame.rename(columns={"trending_score": "score"})[["scope", "rank", "item_id", "score"]]


def _similar_key(vectors: np.ndarray, catalog: pd.DataFrame, k: int) -> str:
    """Everything the similar items depend on: the items, which are in stock, their vectors
    (model and catalog text) and the list length. The same key gives the same table."""
    in_stock = catalog["in_stock"].fillna(False).to_numpy(dtype=bool)
    return picks.run_key(["item_similar", k], [catalog["item_id"].to_numpy(dtype=object), in_stock, vectors])


def _stored_similar(con: duckdb.DuckDBPyConnection, key: str) -> pd.DataFrame | None:
    """The stored item_similar table when it was computed from ``key``: an hourly run whose
    model, catalog and stock did not change reads it back instead of computing it again."""
    con.execute(_SIMILAR_KEY_DDL)
    stored = con.execute("select key from ml.item_similar_key").fetchone()
    exists = con.execute(
        "select count(*) from information_schema.tables where table_schema = 'main' and table_name = 'item_similar'"
    ).fetchone()[0]
    if stored is None or stored[0] != key or not exists:
        return None
    return query_frame(con, "select * from main.item_similar order by item_id, rank")


_SIMILAR_KEY_DDL = "create schema if not exists ml; create table if not exists ml.item_similar_key (key varchar);"


def _similar(vectors: np.ndarray, catalog: pd.DataFrame, k: int) -> pd.DataFrame:
    targets = np.flatnonzero(catalog["in_stock"].fillna(False).to_numpy(dtype=bool))
    idx, val = similar_items(vectors, k, candidates=targets)
    ok = np.isfinite(val)
    query = np.repeat(np.arange(len(catalog)), idx.shape[1])[ok.ravel()]
    ids = catalog["item_id"].to_numpy()
    return pd.DataFrame(
        {
            "item_id": ids[query],
            "rank": np.tile(np.arange(1, idx.shape[1] + 1), len(catalog))[ok.ravel()],
            "similar_item_id": ids[targets[idx[ok]]],
            "score": np.round(val[ok].astype(float), 6),
        }
    )


def _model_recommendations(
    config: Config,
    bundle: registry.ModelBundle,
    interactions: pd.DataFrame,
    catalog: pd.DataFrame,
    vectors: np.ndarray,
    reasons: np.ndarray,
    reuse: tuple[duckdb.DuckDBPyConnection, datetime] | None = None,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, picks.PickCache | None]:
    """Top K from the embeddings for users with enough history, and those users' vectors.

    With ``reuse`` (the warehouse and the as-of instant), users whose stored picks are still
    valid (``models_ml.picks``) keep them and only the others are folded in and ranked; the
    last value returned is then the cache to store for the next run."""
    ml = config.ml
    factors = bundle.item_factors.shape[1]
    distinct = interactions.groupby("user_id")["item_id"].nunique()
    warm_users = np.array(sorted(distinct[distinct >= ml.min_user_items].index), dtype=object)
    allowed = np.flatnonzero(catalog["in_stock"].fillna(False).to_numpy(dtype=bool))
    allowed_ids = catalog["item_id"].to_numpy()[allowed]
    groups = pd.factorize(catalog["category"].fillna("").to_numpy()[allowed])[0]

    cache = None
    where = np.full(len(warm_users), -1, dtype=np.int64)
    if reuse is not None:
        con, as_of = reuse
        key = picks.run_key(
            [bundle.version, ml.recommendations, ml.max_per_category, ml.exclude_purchased, CANDIDATE_FACTOR],
            [allowed_ids.astype(str), vectors[allowed], groups, reasons[allowed].astype(str)],
        )
        cache = picks.load(con, key, factors)
        prints = picks.fingerprints(interactions, warm_users)
        where = cache.reusable(warm_users, prints, as_of, ml.reuse_picks_hours)
    todo = warm_users[where < 0]

    fresh = pd.DataFrame(columns=picks.PICK_COLUMNS)
    fresh_vectors = np.zeros((0, factors), dtype=np.float32)
    if len(todo):
        user_index = _indexed(list(todo))
        mine = interactions[als.positions(user_index, interactions["user_id"]) >= 0]
        fresh_vectors = als.fold_in(
            bundle.item_factors,
            bundle.als_params,
            als.interaction_matrix(
                user_index,
                _indexed(bundle.item_ids),
                mine["user_id"],
                mine["item_id"],
                mine["weight"].to_numpy(),
            ),
        )
    if len(todo) and len(allowed):  # (no in-stock catalog item: nothing to pick from)
        allowed_index = _indexed(list(allowed_ids))
        bought = mine[mine["purchases"] > 0] if ml.exclude_purchased else mine.iloc[0:0]
        exclude = als.interaction_matrix(
            user_index,
            allowed_index,
            bought["user_id"],
            bought["item_id"],
            np.ones(len(bought)),
        )
        seen = als.interaction_matrix(
            user_index,
            allowed_index,
            mine["user_id"],
            mine["item_id"],
            mine["weight"].to_numpy(),
        )
        k = ml.recommendations
        idx, val = top_k(
            fresh_vectors,
            vectors[allowed],
            k * CANDIDATE_FACTOR,
            exclude=exclude,
            history=als.history_matrix(seen),
            history_weight=bundle.als_params.history_weight,
        )
        idx, val = cap_per_group(idx, val, groups, ml.max_per_category, k)
        ok = (idx >= 0) & np.isfinite(val)
        chosen = allowed[idx[ok]]
        fresh = pd.DataFrame(
            {
                "user_id": np.repeat(todo, idx.shape[1])[ok.ravel()],
                "item_id": catalog["item_id"].to_numpy()[chosen],
                "score": np.round(val[ok].astype(float), 6),
                "reason": reasons[chosen],
                "position": np.tile(np.arange(idx.shape[1]), len(todo))[ok.ravel()],
            }
        )
    if cache is None:
        return fresh, warm_users, fresh_vectors, None
    stored = cache.next_run(warm_users, prints, where, reuse[1], fresh_vectors, fresh)
    return stored.picks, warm_users, stored.vectors, stored


# The windows below sort millions of candidate rows at 10M events: they partition and order by integer codes
# (given in id order, so the lists are the same as with the ids) instead of the strings.
_FILL_SQL = """
with user_codes as (
    select user_id, row_number() over (order by user_id) as u from users
),
item_codes as (
    -- Codes in id order, so ordering by code is ordering by id.
    select item_id, row_number() over (order by item_id) as i, dense_rank() over (order by category) as c
    from catalog
),
trending_coded as (
    select t.scope, t.rank, t.score, ic.i, ic.c from trending as t join item_codes as ic using (item_id)
),
-- A model list already k long is the whole list (its picks are distinct, unbought and
-- capped per category, and rank before any trending item): only shorter ones are filled,
-- and only their rows go through the windows below (the others are ranked as they are,
-- less what the windows would drop: 4.2 -> 3.4 s at 10M events, the same lists).
full_users as (
    select user_id from model_recs group by user_id having count(*) >= $k
),
short_users as (
    select uc.user_id, uc.u
    from user_codes as uc
    anti join full_users using (user_id)
),
-- A short user without model picks or purchases gets the list of anyone with the same top
-- categories (their list is trending items of those categories, then global ones): it is
-- made once per set of categories, for its first user, and copied to the others ($share;
-- false makes every list itself, as tests compare). At 10M events 62k of the 72k cold users
-- share 7 sets: 4.3M candidate rows fewer in the windows, fill 5.1-5.7 -> 3.8-3.9 s.
plain_profiles as (
    select su.u, list(a.rank::varchar || chr(31) || a.value order by a.rank, a.value) as profile
    from short_users as su
    left join user_categories as a using (user_id)
    where $share
        and su.user_id not in (select user_id from model_recs)
        and su.user_id not in (select user_id from bought)
    group by su.u
),
shared as (
    select u, min(u) over (partition by profile) as first_u from plain_profiles
),
made as (
    select su.user_id, su.u from short_users as su anti join plain_profiles using (u)
    union all
    select uc.user_id, uc.u from user_codes as uc semi join (select first_u as u from shared) using (u)
),
bought_coded as (
    select su.u, ic.i
    from bought
    join made as su using (user_id)
    join item_codes as ic using (item_id)
),
candidates as (
    select su.u, ic.i, ic.c, m.score, m.reason, 0 as priority, m.position
    from model_recs as m
    join made as su using (user_id)
    join item_codes as ic using (item_id)
    union all
    select su.u, t.i, t.c, t.score, 'trending', 1, a.rank * 1000 + t.rank
    from user_categories as a
    join made as su using (user_id)
    join trending_coded as t on t.scope = a.value
    union all
    select su.u, t.i, t.c, t.score, 'trending', 2, t.rank
    from made as su cross join trending_coded as t
    where t.scope = 'global'
),
allowed as (
    select * from candidates
    anti join bought_coded using (u, i)
    qualify row_number() over (partition by u, i order by priority, position) = 1
),
capped as (
    select * from allowed
    qualify row_number() over (partition by u, c order by priority, position) <= $cap
),
lists as (
    select u, row_number() over (partition by u order by priority, position, i) as rank, i, score, reason
    from capped
    qualify rank <= $k
),
filled as (
    select uc.user_id, l.rank, ic.item_id, l.score, l.reason
    from lists as l
    join user_codes as uc using (u)
    join item_codes as ic using (i)
    union all
    select uc.user_id, l.rank, ic.item_id, l.score, l.reason
    from shared as s
    join lists as l on l.u = s.first_u
    join user_codes as uc on uc.u = s.u
    join item_codes as ic using (i)
    where s.u <> s.first_u
),
whole as (
    select m.user_id, row_number() over (partition by m.user_id order by m.position, m.item_id) as rank,
        m.item_id, m.score, m.reason
    from model_recs as m
    semi join full_users using (user_id)
    semi join catalog using (item_id)
    anti join bought using (user_id, item_id)
    qualify rank <= $k
)
select user_id, rank, item_id, score, reason from (select * from filled union all select * from whole)
order by user_id, rank
"""


def score(config: Config, as_of: datetime, bundle: registry.ModelBundle | None = None, write: bool = True) -> Scores:
    """Apply a model version (the published one by default) to the features as of ``as_of``."""
    seconds: dict[str, float] = {}
    bundle = bundle or load_published(config)
    with timed(seconds, "features"):
        schemas = _feature_schemas(config, {as_of: ALL_MODELS})
    schema = schemas[as_of]
    con = connect(config, read_only=not write)
    try:
        with timed(seconds, "read"):
            feats = data.features(con, schema)
            interactions = data.interactions(con, schema)
            catalog = data.items(con, schema)
            affinities = data.affinities(con, schema)
        ml = config.ml

        # A helper thread takes the propensities (they need only the features) while the
        # lists are ranked, then the interests while the lists are filled: each pair is
        # mostly numpy or LightGBM beside DuckDB or numpy, which release the GIL (score at
        # 10M events, back to back: 26.1-26.7 -> 22.5-25.0 s, the same tables).
        with ThreadPoolExecutor(1) as helper:
            users_made = helper.submit(timed_call, seconds, "propensities", _propensities, config, bundle, feats)
            with timed(seconds, "recommendations"):
                vectors, reasons = _item_vectors(bundle, catalog)
                model_recs, warm_users, user_vectors, pick_cache = _model_recommendations(
                    config, bundle, interactions, catalog, vectors, reasons, reuse=(con, as_of) if write else None
                )
            interests_made = helper.submit(
                timed_call,
                seconds,
                "interests",
                _interests,
                config,
                catalog,
                affinities,
                vectors,
                reasons,
                warm_users,
                user_vectors,
            )
            with timed(seconds, "similar_trending"):
                trending = _trending(catalog, ml.trending_items)
                similar_key = _similar_key(vectors, catalog, ml.similar_items)
                similar = _stored_similar(con, similar_key) if write else None
                similar_reused = similar is not None
                if similar is None:
                    similar = _similar(vectors, catalog, ml.similar_items)

            # Everyone gets a full list: model picks first, then trending items of the user's
            # strongest categories, then global trending; purchases and out-of-stock excluded.
            with timed(seconds, "fill"):
                bought = (
                    interactions[interactions["purchases"] > 0][["user_id", "item_id"]]
                    if ml.exclude_purchased
                    else interactions.iloc[0:0][["user_id", "item_id"]]
                )
                top_l1 = affinities[(affinities["dimension"] == "category_l1") & (affinities["rank"] <= 2)]
                local = duckdb.connect()
                try:
                    local.register("model_recs", model_recs)
                    local.register("trending", trending)
                    local.register("users", feats[["user_id"]])
                    local.register("user_categories", top_l1[["user_id", "value", "rank"]])
                    local.register("catalog", catalog[catalog["in_stock"].fillna(False)][["item_id", "category"]])
                    local.register("bought", bought)
                    recs = query_frame(
                        local, _FILL_SQL, {"cap": ml.max_per_category, "k": ml.recommendations, "share": True}
                    )
                finally:
                    local.close()
        users, user_interests = users_made.result(), interests_made.result()
        result = Scores(
            as_of=as_of,
            model_version=bundle.version,
            users=users,
            recommendations=recs,
            item_similar=similar,
            similar_key=similar_key,
            similar_reused=similar_reused,
            trending=trending,
            interests=user_interests,
            picks_reused=0 if pick_cache is None else pick_cache.reused,
            picks_computed=len(warm_users) - (0 if pick_cache is None else pick_cache.reused),
        )
        result.newest_event_at, result.warnings = _score_warnings(config, as_of, users, recs, catalog)
        for _, warning in result.warnings:
            log.warning("%s", warning)
        if write:
            with timed(seconds, "write"), transaction(con):
                _write(con, result)
                if pick_cache is not None:
                    picks.save(con, pick_cache)
    finally:
        con.close()
    # In the step's order: the helper's parts may finish before the ones they ran beside.
    parts = ("features", "read", "recommendations", "similar_trending", "fill", "propensities", "interests", "write")
    result.seconds = {part: seconds[part] for part in parts if part in seconds}
    log.info("scored %d users as of %s (seconds: %s)", len(result.users), as_of, result.seconds)
    return result


def _interests(
    config: Config,
    catalog: pd.DataFrame,
    affinities: pd.DataFrame,
    vectors: np.ndarray,
    reasons: np.ndarray,
    warm_users: np.ndarray,
    user_vectors: np.ndarray,
) -> pd.DataFrame:
    """Each user's top interests: behaviour's affinities with the embedding's strengths."""
    warm_item = np.array([r == "collaborative" for r in reasons], dtype=bool)
    embedded = interests.embedding_strengths(
        warm_users,
        user_vectors,
        vectors[warm_item],
        catalog["category"].fillna("").to_numpy()[warm_item],
        limit=config.ml.interests,
        behaviour=affinities,
    )
    return interests.top_interests(affinities, embedded, config.ml.interests)


def _score_warnings(
    config: Config, as_of: datetime, users: pd.DataFrame, recs: pd.DataFrame, catalog: pd.DataFrame
) -> tuple[datetime | None, list[tuple[str, str]]]:
    """The newest event of the scored users and what a reader of the run should know."""
    seen = users["last_seen_at"].dropna()
    newest = pd.Timestamp(seen.max()).to_pydatetime() if len(seen) else None
    without = len(users) - recs["user_id"].nunique()
    in_stock = int(catalog["in_stock"].fillna(False).sum())
    warnings = [
        w
        for w in [
            data.data_lag_warning(config, as_of, newest),
            data.recommendation_warning(config, len(users), without, len(catalog), in_stock),
        ]
        if w
    ]
    return newest, warnings


def _propensities(config: Config, bundle: registry.ModelBundle, feats: pd.DataFrame) -> pd.DataFrame:
    """Each user's features with purchase, churn and value predictions, segment and cohorts."""
    users = feats.copy()
    for name in ("purchase", "value"):
        users[f"_{name}"] = bundle.targets[name].predict(users)
    in_population = users["recency_days"] <= config.windows.churn_days
    churn = np.array(bundle.targets["churn_inactive"].predict(users), dtype=float)
    if in_population.any():
        churn[in_population.to_numpy()] = bundle.targets["churn"].predict(users[in_population])
    users["purchase_probability"] = np.round(np.clip(users.pop("_purchase"), 0, 1), 6)
    users["purchase_percentile"] = np.round(users["purchase_probability"].rank(pct=True, method="average") * 100, 2)
    users["churn_probability"] = np.round(np.clip(churn, 0, 1), 6)
    users["predicted_revenue"] = np.round(np.clip(users.pop("_value"), 0, None), 2)
    for name in ("purchase", "churn", "value"):
        users[f"{name}_method"] = bundle.targets[name].method
    users["segment"] = segments.rfm_segments(users, config.windows.churn_days)
    users["cohorts"] = segments.predictive_cohorts(users, config.windows.churn_days)
    return users


# The two list columns come from interest_lists and recommended_lists (see _lists_by_user).
_USER_INSIGHTS_SQL = """
create or replace table main.user_insights as
select
    s.user_id,
    s.as_of,
    s.first_seen_at,
    s.last_seen_at,
    s.recency_days,
    s.sessions_90d,
    s.orders_90d,
    s.revenue_90d,
    s.avg_order_value,
    coalesce(i.top_interests, []::struct(dimension varchar, value varchar, strength double)[]) as top_interests,
    coalesce(r.recommended_items, []::struct(item_id varchar, score double)[]) as recommended_items,
    s.purchase_probability,
    s.purchase_percentile,
    s.churn_probability,
    s.predicted_revenue,
    s.segment,
    s.cohorts,
    s.purchase_method,
    s.churn_method,
    s.value_method,
    s.orders_lifetime,
    s.revenue_lifetime,
    s.sessions_30d,
    s.days_since_last_order,
    s.top_category,
    s.top_brand,
    s.price_band,
    s.favourite_device,
    coalesce(s.has_logged_in, false) as is_identified,
    $version as model_version
from scored as s
left join interest_lists as i using (user_id)
left join recommended_lists as r using (user_id)
order by s.user_id
"""


def _lists_by_user(table: pa.Table, fields: list[str], name: str) -> pa.Table:
    """One row per user with the ``fields`` of their rows as a list in ``rank`` order.

    Built in Arrow: DuckDB's ``list(... order by rank)`` per user took 0.95 s for the
    2.6M recommendations and 1.1M interests at 10M events. The rows come sorted by user
    and rank (the queries that make them end so), which is checked; unsorted rows are
    sorted first."""
    users, ranks = table.column("user_id").combine_chunks(), table.column("rank").combine_chunks()
    if len(table) > 1:
        same = pc.equal(users[1:], users[:-1])
        ordered = pc.all(pc.or_(pc.less(users[:-1], users[1:]), pc.and_(same, pc.less(ranks[:-1], ranks[1:])))).as_py()
        if not ordered:
            table = table.sort_by([("user_id", "ascending"), ("rank", "ascending")])
            users = table.column("user_id").combine_chunks()
            same = pc.equal(users[1:], users[:-1])
        first = np.concatenate(([True], ~same.to_numpy(zero_copy_only=False)))
    else:
        first = np.ones(len(table), dtype=bool)
    starts = np.flatnonzero(first)
    values = pa.StructArray.from_arrays([table.column(f).combine_chunks() for f in fields], names=fields)
    lists = pa.ListArray.from_arrays(pa.array(np.append(starts, len(table)), pa.int32()), values)
    return pa.table({"user_id": users.take(pa.array(starts)), name: lists})


def _write(con: duckdb.DuckDBPyConnection, scores: Scores) -> None:
    # Arrow tables, not the frames: DuckDB scans pandas' string columns value by value (a
    # second for the 2.6M recommendations at 10M events, 0.4 s from Arrow).
    # Similar items read back from the warehouse (_stored_similar) are already there.
    frames = {
        "scored": scores.users,
        "recs_frame": scores.recommendations,
        "trending_frame": scores.trending,
        "interests_frame": scores.interests,
    }
    if not scores.similar_reused:
        frames["similar_frame"] = scores.item_similar
    tables = {name: pa.Table.from_pandas(frame, preserve_index=False) for name, frame in frames.items()}
    tables["interest_lists"] = _lists_by_user(
        tables["interests_frame"], ["dimension", "value", "strength"], "top_interests"
    )
    tables["recommended_lists"] = _lists_by_user(tables["recs_frame"], ["item_id", "score"], "recommended_items")
    for name, table in tables.items():
        con.register(name, table)
    try:
        con.execute("create or replace table main.recommendations as select * from recs_frame")
        if not scores.similar_reused:
            con.execute("create or replace table main.item_similar as select * from similar_frame")
            con.execute(_SIMILAR_KEY_DDL)
            con.execute("delete from ml.item_similar_key")
            con.execute("insert into ml.item_similar_key values ($key)", {"key": scores.similar_key})
        con.execute("create or replace table main.trending as select * from trending_frame")
        con.execute("create or replace table main.user_interests as select * from interests_frame")
        con.execute(_USER_INSIGHTS_SQL, {"version": scores.model_version})
    finally:
        for name in tables:
            con.unregister(name)


def score_summary(scores: Scores) -> dict[str, Any]:
    users = scores.users
    return {
        "as_of": scores.as_of.isoformat(sep=" "),
        "model_version": scores.model_version,
        "users": len(users),
        "recommendations": len(scores.recommendations),
        "reasons": scores.recommendations["reason"].value_counts().to_dict(),
        "item_similar": len(scores.item_similar),
        "trending": len(scores.trending),
        "segments": users["segment"].value_counts().to_dict(),
        "mean_purchase_probability": float(users["purchase_probability"].mean()) if len(users) else 0.0,
        "propensity_method": ", ".join(
            f"{n} {users[f'{n}_method'].iloc[0]}" for n in ("purchase", "churn", "value") if len(users)
        ),
        "picks_reused": scores.picks_reused,
        "picks_computed": scores.picks_computed,
        "similar_reused": scores.similar_reused,
        "newest_event_at": scores.newest_event_at.isoformat(sep=" ") if scores.newest_event_at else None,
        "warnings": [message for _, message in scores.warnings],
        "warning_headlines": [headline for headline, _ in scores.warnings],
        "seconds": scores.seconds,
    }


def _day_after(moment: datetime) -> datetime:
    return datetime(moment.year, moment.month, moment.day) + timedelta(days=1)


def default_backtest_as_of(config: Config) -> datetime:
    """The latest whole day whose purchase and recommendation windows are complete in the
    warehouse; churn and value are measured there too when their longer windows fit."""
    con = connect(config, read_only=True)
    try:
        require_table(con, "main.fct_events", "run insights transform first")
        last = con.execute("select max(occurred_at) from main.fct_events").fetchone()[0]
    finally:
        con.close()
    if last is None:
        raise MLError("no events in the warehouse: run `insights ingest` and `insights transform`")
    return _day_after(last) - timedelta(days=max(config.windows.purchase_days, config.ml.validation_days))


def _window_past_the_data(days: int, last_event: datetime | None) -> str:
    """Why an outcome was not measured, and the latest as-of at which it could be."""
    if last_event is None:
        return "there are no events"
    latest = _day_after(last_event) - timedelta(days=days)
    return (
        f"the {days}-day outcome window runs past the end of the data (the latest as-of it can be measured at is "
        f"{latest:%Y-%m-%d}: insights evaluate --as-of {latest:%Y-%m-%d})"
    )


def _baseline_lists(
    interactions: pd.DataFrame,
    catalog: pd.DataFrame,
    users: list[str],
    k: int,
    bought: dict[str, set[str]],
    exclude_purchased: bool,
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """The popularity baseline and the "your past items" baseline for ``users``."""
    live = catalog[catalog["in_stock"].fillna(False)].sort_values(["popularity", "item_id"], ascending=[False, True])
    popular = live["item_id"].tolist()
    in_stock = set(popular)
    own = (
        interactions[interactions["item_id"].isin(in_stock)]
        .sort_values(["user_id", "weight", "item_id"], ascending=[True, False, True])
        .groupby("user_id")["item_id"]
        .agg(list)
        .to_dict()
    )
    by_popularity, by_history = {}, {}
    for user in users:
        skip = bought.get(user, set()) if exclude_purchased else set()
        by_popularity[user] = [i for i in popular if i not in skip][:k]
        mine = [i for i in own.get(user, []) if i not in skip]
        by_history[user] = (mine + [i for i in by_popularity[user] if i not in set(mine)])[:k]
    return by_popularity, by_history


def evaluate(config: Config, as_of: datetime | None = None) -> dict[str, Any]:
    """Backtest at a past instant: train and score with what was known then, then measure on
    what happened after it, against simple baselines. Never publishes a model."""
    as_of = as_of or default_backtest_as_of(config)
    trained = train(config, as_of, backtest=True)
    bundle = registry.ModelBundle.load(Path(trained["path"]))
    # Twenty items a user, so that recall@20 is measured on twenty.
    longer = config.model_copy(deep=True)
    longer.ml.recommendations = max(20, config.ml.recommendations)
    scores = score(longer, as_of, bundle=bundle, write=False)
    schema = _feature_schemas(config, {as_of: ALL_MODELS})[as_of]
    con = connect(config, read_only=True)
    try:
        last_event = con.execute("select max(occurred_at) from main.fct_events").fetchone()[0]
        interactions = data.interactions(con, schema)
        catalog = data.items(con, schema)
        windows = {**window_days(config), "recommendations": config.ml.validation_days}
        outcomes = {
            name: data.labels(con, as_of, as_of + timedelta(days=days), config.transform.conversion_event)
            for name, days in windows.items()
            if name != "recommendations"
        }
        relevant_frame = data.relevant_items(con, as_of, as_of + timedelta(days=windows["recommendations"]))
    finally:
        con.close()
    report: dict[str, Any] = {
        "as_of": as_of.isoformat(sep=" "),
        "model_version": bundle.version,
        "data_end": last_event.isoformat(sep=" ") if last_event else None,
        "windows_days": windows,
        "complete": {n: as_of + timedelta(days=d) <= _day_after(last_event) for n, d in windows.items()}
        if last_event
        else {},
        "training": trained,
    }

    # Recommendations against popularity and the user's own past items.
    relevant = relevant_frame.groupby("user_id")["item_id"].agg(set).to_dict()
    known = set(scores.users["user_id"])
    relevant = {u: items for u, items in relevant.items() if u in known}
    bought = interactions[interactions["purchases"] > 0].groupby("user_id")["item_id"].agg(set).to_dict()
    if config.ml.exclude_purchased:
        # Items bought before the as-of instant are never recommended (ml.exclude_purchased),
        # so coming back to them is no hit a recommendation could have made.
        relevant = {u: items - bought.get(u, set()) for u, items in relevant.items()}
        relevant = {u: items for u, items in relevant.items() if items}
    model_lists = scores.recommendations.sort_values(["user_id", "rank"]).groupby("user_id")["item_id"].agg(list)
    # Twenty per user for recall@20: the model's list is re-ranked from its own scores.
    k20 = max(20, config.ml.recommendations)
    popular, history = _baseline_lists(
        interactions, catalog, sorted(relevant), k20, bought, config.ml.exclude_purchased
    )
    size = int(catalog["in_stock"].fillna(False).sum())
    report["recommendations"] = {
        "model": ranking_metrics(model_lists.to_dict(), relevant, size),
        "popularity_baseline": ranking_metrics(popular, relevant, size),
        "past_items_baseline": ranking_metrics(history, relevant, size),
    }

    users = scores.users
    complete = report["complete"]
    for name in ("purchase", "churn"):
        if not complete.get(name):
            report[name] = {"skipped": _window_past_the_data(windows[name], last_event)}
            continue
        outcome = users[["user_id", "recency_days"]].merge(outcomes[name], on="user_id", how="left")
        if name == "purchase":
            y = outcome["converted"].fillna(False).to_numpy(dtype=float)
            p_model = users["purchase_probability"].to_numpy()
            population = np.ones(len(users), dtype=bool)
        else:
            y = (~outcome["active"].fillna(False).astype(bool)).to_numpy(dtype=float)
            p_model = users["churn_probability"].to_numpy()
            population = (users["recency_days"] <= config.windows.churn_days).to_numpy()
        baseline = bundle.targets[name].heuristic.predict(users)
        report[name] = {
            "method": bundle.targets[name].method,
            "model": classification_metrics(y[population], p_model[population]),
            "rfm_baseline": classification_metrics(y[population], baseline[population]),
        }
    if not complete.get("value"):
        report["value"] = {"skipped": _window_past_the_data(windows["value"], last_event)}
        report = registry.jsonable(report)
        _save_report(config, report)
        return report
    outcome = users[["user_id"]].merge(outcomes["value"], on="user_id", how="left")
    y_value = outcome["revenue"].fillna(0.0).to_numpy(dtype=float)
    naive = users["revenue_30d"].to_numpy(dtype=float) * config.windows.value_days / 30.0
    report["value"] = {
        "method": bundle.targets["value"].method,
        "model": regression_metrics(y_value, users["predicted_revenue"].to_numpy()),
        "rfm_baseline": regression_metrics(y_value, bundle.targets["value"].heuristic.predict(users)),
        "last_30_days_baseline": regression_metrics(y_value, naive),
    }
    report = registry.jsonable(report)
    _save_report(config, report)
    return report


def _save_report(config: Config, report: dict[str, Any]) -> None:
    folder = Path(config.resolve(config.ml.report_dir))
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"evaluation_{report['as_of'][:10]}"
    (folder / f"{stem}.json").write_text(json.dumps(report, indent=2))
    (folder / f"{stem}.md").write_text(render_report(report))
    con = connect(config)
    try:
        con.execute(
            "create table if not exists ml.evaluations (evaluated_at timestamp, as_of timestamp, "
            "model_version varchar, report json)"
        )
        con.execute("delete from ml.evaluations where as_of = ?", [report["as_of"]])
        con.execute(
            "insert into ml.evaluations values (now()::timestamp, ?, ?, ?)",
            [report["as_of"], report["model_version"], json.dumps(report)],
        )
    finally:
        con.close()


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def render_report(report: dict[str, Any]) -> str:
    """The backtest as Markdown: every model beside its baselines."""
    lines = [
        f"# Backtest as of {report['as_of']}",
        "",
        f"Model version `{report['model_version']}`, trained on data before the as-of instant and "
        f"scored on what happened after it (data ends {report['data_end']}).",
        "",
        "## Recommendations",
        "",
        "| | users | HR@10 | NDCG@10 | recall@20 | coverage |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in report["recommendations"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {row['users']} | {_fmt(row['hr_at_10'])} | {_fmt(row['ndcg_at_10'])} "
            f"| {_fmt(row['recall_at_20'])} | {_fmt(row['coverage'])} |"
        )
    for name in ("purchase", "churn"):
        block = report[name]
        if "skipped" in block:
            lines += ["", f"## {name.title()} propensity", "", f"Not measured: {block['skipped']}."]
            continue
        lines += [
            "",
            f"## {name.title()} propensity ({block['method']})",
            "",
            "| | examples | positives | ROC AUC | PR AUC | log loss | Brier | lift top 10% |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for label in ("model", "rfm_baseline"):
            m = block[label]
            lines.append(
                f"| {label.replace('_', ' ')} | {m['examples']} | {m['positives']} | {_fmt(m['roc_auc'])} "
                f"| {_fmt(m['pr_auc'])} | {_fmt(m['log_loss'])} | {_fmt(m['brier'])} | {_fmt(m['lift_top_decile'])} |"
            )
        lines += ["", "Calibration (model): predicted vs observed per decile of the prediction", ""]
        lines += ["| bin | count | predicted | observed |", "|---:|---:|---:|---:|"]
        for i, row in enumerate(block["model"]["calibration"], 1):
            lines.append(f"| {i} | {row['count']} | {_fmt(row['predicted'])} | {_fmt(row['observed'])} |")
    value = report["value"]
    if "skipped" in value:
        return "\n".join([*lines, "", "## Predicted revenue", "", f"Not measured: {value['skipped']}."]) + "\n"
    lines += [
        "",
        f"## Predicted revenue ({value['method']})",
        "",
        "| | MAE | RMSE | actual total | predicted total |",
        "|---|---:|---:|---:|---:|",
    ]
    for label in ("model", "rfm_baseline", "last_30_days_baseline"):
        m = value[label]
        lines.append(
            f"| {label.replace('_', ' ')} | {_fmt(m['mae'])} | {_fmt(m['rmse'])} | {_fmt(m['actual_total'])} "
            f"| {_fmt(m['predicted_total'])} |"
        )
    return "\n".join(lines) + "\n"
