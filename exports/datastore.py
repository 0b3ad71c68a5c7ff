"""The datastore: Hive-partitioned Parquet in a local folder or on S3, published atomically.

Layout (CONTRACT section 4)::

    <root>/<table>/dt=YYYY-MM-DD/part-<run_id>.parquet
    <root>/<table>/dt=YYYY-MM-DD/_manifest.json     written after the data
    <root>/<table>/_latest                          written after the manifest

Publication goes in phases over all tables: every data file, then every manifest, then
every ``_latest`` pointer, then clean-up (files of the partition that its manifest does not
list, and partitions beyond the retention). A crash or an upload failure anywhere before a
table's pointer moves leaves that table's previous complete partition as ``_latest``;
re-running the same date writes new files under a new run id and replaces the manifest in
one put, so a reader that follows ``_latest`` and the manifest never sees a mix. Names
starting with ``_`` are skipped by Spark, Athena and Hive, and ``*.parquet`` globs skip
them too.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import duckdb
import pandas as pd

from insights import faults
from insights.config import Config
from insights.storage import s3_client, split_s3

log = logging.getLogger(__name__)

MANIFEST = "_manifest.json"
LATEST = "_latest"


class DatastoreError(RuntimeError):
    """Publication failed; the previous partition stays the latest."""


class Store(Protocol):
    """Where the datastore lives; keys are relative to its root, with '/' separators."""

    def put_file(self, local: Path, key: str) -> None: ...
    def put_bytes(self, key: str, data: bytes) -> None: ...
    def get_bytes(self, key: str) -> bytes | None: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete(self, keys: Iterable[str]) -> None: ...
    def location(self, key: str) -> str: ...


class LocalStore:
    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in path.parents and path != self.root.resolve():
            raise DatastoreError(f"key escapes the datastore root: {key}")
        return path

    def put_file(self, local: Path, key: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(local, tmp)
        os.replace(tmp, target)

    def put_bytes(self, key: str, data: bytes) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)

    def get_bytes(self, key: str) -> bytes | None:
        path = self._path(key)
        return path.read_bytes() if path.is_file() else None

    def list(self, prefix: str) -> list[str]:
        base = self._path(prefix) if prefix else self.root
        if not base.exists():
            return []
        return sorted(
            p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")
        )

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._path(key).unlink(missing_ok=True)
        for folder in sorted({self._path(k).parent for k in keys}, reverse=True):
            if folder.exists() and folder != self.root and not any(folder.iterdir()):
                folder.rmdir()

    def location(self, key: str) -> str:
        return str(self.root / key)


class S3Store:
    def __init__(self, config: Config, uri: str, client: Any = None) -> None:
        from boto3.s3.transfer import TransferConfig

        self.bucket, prefix = split_s3(uri)
        self.prefix = prefix.strip("/")
        self.client = client or s3_client(config)
        threshold = config.datastore.multipart_threshold_mb * 1024 * 1024
        self.transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=threshold)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put_file(self, local: Path, key: str) -> None:
        self.client.upload_file(str(local), self.bucket, self._key(key), Config=self.transfer)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix)
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            keys += [obj["Key"] for obj in page.get("Contents", [])]
        cut = len(self.prefix) + 1 if self.prefix else 0
        return sorted(k[cut:] for k in keys)

    def delete(self, keys: Iterable[str]) -> None:
        keys = [self._key(k) for k in keys]
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    def location(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._key(key)}"


def open_store(config: Config, client: Any = None) -> Store:
    uri = config.datastore.uri
    if uri.startswith("s3://"):
        return S3Store(config, uri, client)
    return LocalStore(config.resolve(uri))


@dataclass
class TableData:
    """A table to publish: a SQL query over the warehouse or a frame."""

    name: str
    sql: str | None = None
    frame: pd.DataFrame | None = None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def partitions(store: Store, table: str) -> dict[str, list[str]]:
    """The keys below ``<table>/dt=<date>/`` by date."""
    found: dict[str, list[str]] = {}
    for key in store.list(f"{table}/"):
        parts = key.split("/")
        if len(parts) == 3 and parts[1].startswith("dt="):
            found.setdefault(parts[1][3:], []).append(key)
    return found


def latest(store: Store, table: str) -> dict[str, Any] | None:
    """The table's ``_latest`` pointer (dt, run id, manifest key), or None."""
    data = store.get_bytes(f"{table}/{LATEST}")
    return json.loads(data) if data else None


def read_manifest(store: Store, table: str, dt: str) -> dict[str, Any] | None:
    data = store.get_bytes(f"{table}/dt={dt}/{MANIFEST}")
    return json.loads(data) if data else None


def publish(
    config: Config,
    con: duckdb.DuckDBPyConnection,
    tables: list[TableData],
    as_of: datetime,
    run_id: str,
    model_versions: dict[str, str],
    store: Store | None = None,
) -> dict[str, Any]:
    """Publish every table as partition ``dt=<as_of date>``; returns per-table manifests."""
    store = store or open_store(config)
    dt = as_of.date().isoformat()
    staging = Path(tempfile.mkdtemp(prefix="insights-publish-"))
    manifests: dict[str, dict[str, Any]] = {}
    try:
        # Phase 1: data files.
        for table in tables:
            local = staging / f"{table.name}.parquet"
            if table.frame is not None:
                con.register("_publish_frame", table.frame)
                query = "select * from _publish_frame"
            else:
                query = table.sql or f"select * from main.{table.name}"
            # COPY answers with the number of rows it wrote.
            rows = con.execute(
                f"copy ({query}) to '{local.as_posix()}' (format parquet, compression zstd, row_group_size 100000)"
            ).fetchone()[0]
            if table.frame is not None:
                con.unregister("_publish_frame")
            schema = [
                {"name": r[0], "type": r[1]}
                for r in con.execute(f"describe select * from read_parquet('{local.as_posix()}')").fetchall()
            ]
            key = f"{table.name}/dt={dt}/part-{run_id}.parquet"
            store.put_file(local, key)
            manifests[table.name] = {
                "table": table.name,
                "dt": dt,
                "as_of": as_of.isoformat(),
                "run_id": run_id,
                "rows": rows,
                "schema": schema,
                "files": [{"key": key, "bytes": local.stat().st_size, "sha256": _sha256(local)}],
                "model_versions": model_versions,
                "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
            }
            local.unlink()
        faults.reached("publish.data")
        # Phase 2: manifests (a partition is complete from here on).
        for name, manifest in manifests.items():
            store.put_bytes(f"{name}/dt={dt}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
        faults.reached("publish.manifests")
        # Phase 3: pointers.
        for name in manifests:
            pointer = {"dt": dt, "run_id": run_id, "manifest": f"dt={dt}/{MANIFEST}"}
            store.put_bytes(f"{name}/{LATEST}", json.dumps(pointer).encode())
    except Exception as exc:
        raise DatastoreError(
            f"publishing to {store.location('')} failed ({type(exc).__name__}: {exc}); "
            "the previous partitions stay the latest, the next run completes this one"
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    removed = {name: _clean(store, name, config.datastore.retention) for name in manifests}
    return {
        "dt": dt,
        "run_id": run_id,
        "root": store.location(""),
        "tables": {
            n: {"rows": m["rows"], "files": [store.location(f["key"]) for f in m["files"]]}
            for n, m in manifests.items()
        },
        "removed": removed,
    }


def _clean(store: Store, table: str, retention: int) -> int:
    """Drop files no manifest lists, then complete partitions beyond the retention (never
    the one ``_latest`` points to). Returns how many files were removed."""
    pointer = latest(store, table) or {}
    found = partitions(store, table)
    complete = sorted(dt for dt, keys in found.items() if any(k.endswith(MANIFEST) for k in keys))
    keep = set(complete[-retention:]) | ({pointer["dt"]} if pointer.get("dt") else set())
    oldest_kept = min(keep) if keep else None
    doomed: list[str] = []
    for dt, keys in found.items():
        if dt in keep:
            manifest = read_manifest(store, table, dt) or {}
            listed = {f["key"] for f in manifest.get("files", [])} | {f"{table}/dt={dt}/{MANIFEST}"}
            doomed += [k for k in keys if k not in listed]
        elif dt in complete or (oldest_kept and dt < oldest_kept):
            # Manifest first: from that moment the partition is incomplete for every reader.
            manifest_key = f"{table}/dt={dt}/{MANIFEST}"
            if manifest_key in keys:
                store.delete([manifest_key])
            doomed += [k for k in keys if k != manifest_key]
    if doomed:
        store.delete(doomed)
    return len(doomed)


def read_latest(config: Config, table: str, store: Store | None = None) -> pd.DataFrame:
    """The rows of a table's latest complete partition, found through ``_latest`` and its
    manifest (what every reader should do)."""
    store = store or open_store(config)
    pointer = latest(store, table)
    if pointer is None:
        raise DatastoreError(f"{store.location(table)}: no published partition yet")
    manifest = read_manifest(store, table, pointer["dt"])
    if manifest is None:
        raise DatastoreError(f"{store.location(table)}/dt={pointer['dt']}: manifest missing")
    frames = []
    for entry in manifest["files"]:
        data = store.get_bytes(entry["key"])
        if data is None or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise DatastoreError(f"{store.location(entry['key'])}: missing or not the file the manifest lists")
        frames.append(pd.read_parquet(io.BytesIO(data)))
    return pd.concat(frames, ignore_index=True)


def forget(config: Config, ids: list[str], dry_run: bool = False, store: Store | None = None) -> dict[str, int]:
    """Rewrite every retained partition that holds rows of the people ``ids`` names (see
    :mod:`insights.privacy`) without them; returns the rows removed per table. As a re-run
    of a date: the new file, then the partition's manifest in one put, then the old file
    deleted, so a reader that follows the manifest never sees a mix."""
    from insights.privacy import register_ids, row_condition

    store = store or open_store(config)
    # Every partition's keys, from one listing; a partition with a manifest is complete.
    found: dict[tuple[str, str], list[str]] = {}
    for key in store.list(""):
        parts = key.split("/")
        if len(parts) == 3 and parts[1].startswith("dt="):
            found.setdefault((parts[0], parts[1][3:]), []).append(key)
    removed: dict[str, int] = {}
    stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{os.urandom(4).hex()}"
    staging = Path(tempfile.mkdtemp(prefix="insights-forget-"))
    con = duckdb.connect()
    register_ids(con, ids)
    try:
        for (table, dt), keys in sorted(found.items()):
            manifest_key = f"{table}/dt={dt}/{MANIFEST}"
            manifest = read_manifest(store, table, dt) if manifest_key in keys else None
            condition = row_condition({c["name"] for c in manifest["schema"]}) if manifest else None
            if not condition:
                continue
            # Files the manifest no longer lists (a forget or a publish killed before its
            # clean-up) may still hold the people's rows: they go first.
            listed = {f["key"] for f in manifest["files"]} | {manifest_key}
            unlisted = [k for k in keys if k not in listed]
            if unlisted and not dry_run:
                store.delete(unlisted)
            kept, dropped = [], 0
            for entry in manifest["files"]:
                data = store.get_bytes(entry["key"])
                if data is None:
                    raise DatastoreError(f"{store.location(entry['key'])}: listed in its manifest but missing")
                local = staging / "part.parquet"
                local.write_bytes(data)
                source = f"read_parquet('{local.as_posix()}')"
                count = con.execute(f"select count(*) from {source} where {condition}").fetchone()[0]
                dropped += count
                if not count or dry_run:
                    kept.append(entry)
                    continue
                out = staging / "kept.parquet"
                con.execute(
                    f"copy (select * from {source} where not coalesce({condition}, false)) to "
                    f"'{out.as_posix()}' (format parquet, compression zstd, row_group_size 100000)"
                )
                name = Path(entry["key"]).name.removesuffix(".parquet").split("-forget-")[0]
                key = f"{table}/dt={dt}/{name}-forget-{stamp}.parquet"
                store.put_file(out, key)
                kept.append({"key": key, "bytes": out.stat().st_size, "sha256": _sha256(out)})
            if not dropped:
                continue
            removed[table] = removed.get(table, 0) + dropped
            if dry_run:
                continue
            old = [e["key"] for e in manifest["files"] if e not in kept]
            manifest.update(files=kept, rows=manifest["rows"] - dropped)
            manifest["forgotten_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            store.put_bytes(manifest_key, json.dumps(manifest, indent=2).encode())
            store.delete(old)
    finally:
        con.close()
        shutil.rmtree(staging, ignore_errors=True)
    return removed
