"""Model versions: every training run's parameters, data window, metrics and artifacts.

Artifacts live in ``ml.model_dir/<version>/`` (vectors as ``.npz``, the catalog encoder as
a pickle, boosters as LightGBM text inside ``propensity.json``); the registry table
``ml.model_versions`` in the warehouse says which version is published. A version is
published only if its key metrics are not worse than the published one's by more than
``ml.publish_tolerance``; otherwise the previous version keeps serving and the row says why.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

if TYPE_CHECKING:  # imported where a bundle is loaded: the report and the API only read records
    from insights.config import Config
    from models_ml.als import ALSParams
    from models_ml.propensity import TrainedTarget

DDL = """
create schema if not exists ml;
create table if not exists ml.model_versions (
    model_version varchar primary key,
    trained_at timestamp,
    as_of timestamp,
    data_start timestamp,
    data_end timestamp,
    params json,
    metrics json,
    status varchar,
    reason varchar,
    path varchar
);
"""

# (metric path, description): higher is better for each.
KEY_METRICS = (
    (("als", "validation", "ndcg_at_10"), "ALS NDCG@10 on the time split"),
    (("purchase", "held_out", "roc_auc"), "purchase ROC AUC on held-out users"),
    (("churn", "held_out", "roc_auc"), "churn ROC AUC on held-out users"),
)


@dataclass
class ModelBundle:
    """Everything scoring needs from one training run."""

    version: str
    as_of: datetime
    als_params: ALSParams
    user_ids: np.ndarray
    user_factors: np.ndarray
    item_ids: np.ndarray
    item_factors: np.ndarray
    warm_items: np.ndarray
    encoder: Any
    mapping: Any
    targets: dict[str, TrainedTarget]
    metrics: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def save(self, folder: Path) -> None:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        np.savez(
            tmp / "als.npz",
            user_ids=self.user_ids.astype(str),
            user_factors=self.user_factors,
            item_ids=self.item_ids.astype(str),
            item_factors=self.item_factors,
            warm_items=self.warm_items,
        )
        with open(tmp / "content.pkl", "wb") as fh:
            pickle.dump({"encoder": self.encoder, "mapping": self.mapping}, fh)
        (tmp / "propensity.json").write_text(json.dumps({k: t.to_json() for k, t in self.targets.items()}))
        (tmp / "meta.json").write_text(
            json.dumps(
                {
                    "version": self.version,
                    "as_of": self.as_of.isoformat(),
                    "als_params": self.als_params.__dict__,
                    "params": self.params,
                    "metrics": jsonable(self.metrics),
                },
                indent=2,
                default=str,
            )
        )
        # Complete folders only: a crash mid-save leaves the .tmp, never a half version.
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)

    @classmethod
    def load(cls, folder: Path) -> ModelBundle:
        from models_ml.als import ALSParams
        from models_ml.propensity import TrainedTarget

        meta = json.loads((folder / "meta.json").read_text())
        arrays = np.load(folder / "als.npz", allow_pickle=False)
        with open(folder / "content.pkl", "rb") as fh:
            content = pickle.load(fh)  # noqa: S301 - our own artifact, written by save()
        targets = {
            k: TrainedTarget.from_json(v) for k, v in json.loads((folder / "propensity.json").read_text()).items()
        }
        return cls(
            version=meta["version"],
            as_of=datetime.fromisoformat(meta["as_of"]),
            als_params=ALSParams(**meta["als_params"]),
            user_ids=arrays["user_ids"],
            user_factors=arrays["user_factors"],
            item_ids=arrays["item_ids"],
            item_factors=arrays["item_factors"],
            warm_items=arrays["warm_items"],
            encoder=content["encoder"],
            mapping=content["mapping"],
            targets=targets,
            metrics=meta["metrics"],
            params=meta["params"],
        )


def jsonable(value: Any) -> Any:
    """Metrics as strict JSON: NaN and infinities become null, numpy scalars plain numbers."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(DDL)


def published(con: duckdb.DuckDBPyConnection) -> dict[str, Any] | None:
    """The version scoring uses: the latest published one."""
    known = con.execute(
        "select count(*) from information_schema.tables where table_schema = 'ml' and table_name = 'model_versions'"
    ).fetchone()[0]
    if not known:
        return None
    row = con.execute(
        "select model_version, path, metrics, params from ml.model_versions where status = 'published' "
        "order by trained_at desc, model_version desc limit 1"
    ).fetchone()
    if row is None:
        return None
    return {"model_version": row[0], "path": row[1], "metrics": json.loads(row[2]), "params": json.loads(row[3])}


# The settings that define what the models predict and from what: when they differ from
# the published version's, the two versions' metrics measure different things.
COMPARABLE_SETTINGS = ("transform", "windows")
# How the held-out metrics were measured (``propensity.EVALUATION``). A version recorded
# without it held out only the latest cutoff, and checked its propensities on users they had
# trained on: its metrics read higher than a version's that holds out users, and are not
# compared with them.
EVALUATION = "evaluation"


def changed_settings(new: dict[str, Any], old: dict[str, Any] | None) -> list[str]:
    """The settings (``section.key``) in which two versions' params differ; versions
    recorded before a section was kept are not held against it, except for the way they
    were measured (``EVALUATION``)."""
    changed = []
    for section in (*COMPARABLE_SETTINGS, EVALUATION):
        before, after = (old or {}).get(section), new.get(section) or {}
        if before is None and section == EVALUATION and old is not None:
            before = {}
        if before is None:
            continue
        changed += [f"{section}.{k}" for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]
    return changed


def _metric(metrics: dict[str, Any], path: tuple[str, ...]) -> float | None:
    node: Any = metrics
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    try:
        value = float(node)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(value) else value


def compare(
    new: dict[str, Any], old: dict[str, Any] | None, tolerance: float, changed: list[str] | None = None
) -> tuple[bool, str]:
    """Whether the new metrics may replace the old, and a sentence saying why. A key metric
    the old version has and the new one lacks (a rule in place of a trained model) counts as
    worse; when the settings ``changed``, the metrics measure different things and are not
    compared."""
    if old is None:
        return True, "first model version"
    if changed:
        shown = ", ".join(changed[:4]) + (f" and {len(changed) - 4} more" if len(changed) > 4 else "")
        return (
            True,
            f"published: its settings differ from the published version's ({shown}), so the metrics are not compared",
        )
    worse = []
    for path, label in KEY_METRICS:
        a, b = _metric(new, path), _metric(old, path)
        if a is not None and b is not None and a < b - tolerance:
            worse.append(f"{label} {a:.4f} < {b:.4f} - {tolerance}")
        elif a is None and b is not None:
            worse.append(f"{label} not measured (a rule, not a trained model; the published version's: {b:.4f})")
    if worse:
        return False, "not published, worse than the published version: " + "; ".join(worse)
    return True, "published: no key metric worse than the published version by more than the tolerance"


def record(
    con: duckdb.DuckDBPyConnection,
    bundle: ModelBundle,
    data_start: datetime | None,
    data_end: datetime | None,
    status: str,
    reason: str,
    path: Path,
) -> None:
    ensure(con)
    con.execute("delete from ml.model_versions where model_version = ?", [bundle.version])
    con.execute(
        "insert into ml.model_versions values (?, now()::timestamp, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            bundle.version,
            bundle.as_of,
            data_start,
            data_end,
            json.dumps(jsonable({"als": bundle.als_params.__dict__, **bundle.params})),
            json.dumps(jsonable(bundle.metrics)),
            status,
            reason,
            str(path),
        ],
    )


def forget(config: Config, ids: list[str], dry_run: bool = False) -> dict[str, int]:
    """Remove the user vectors of ``ids`` from every saved model (versions and backtests);
    returns vectors removed per model folder. The item vectors keep what these users
    contributed until the next training."""
    wanted = np.array(sorted(set(ids)), dtype=str)
    removed: dict[str, int] = {}
    root = Path(config.resolve(config.ml.model_dir))
    for path in sorted(root.rglob("als.npz")) if root.is_dir() else []:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        gone = np.isin(arrays["user_ids"], wanted)
        if not gone.any():
            continue
        removed[path.parent.relative_to(root).as_posix()] = int(gone.sum())
        if dry_run:
            continue
        arrays["user_ids"] = arrays["user_ids"][~gone]
        arrays["user_factors"] = arrays["user_factors"][~gone]
        tmp = path.with_name("als.forget.npz")
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    return removed
