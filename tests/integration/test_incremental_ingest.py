"""Incremental, idempotent ingestion of a generated site, locally and from S3."""

import gzip
import os
import re
import shutil
import time
from pathlib import Path

import boto3
import pytest

from insights.ingest import IngestError
from insights.sample import generate
from tests.helpers import ingest, query


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    generate(out, users=120, days=10, seed=3)
    return out


def _sources(root: Path) -> list[dict]:
    from insights.config import SAMPLE_APP_STREAM

    return [
        {"name": "web", "kind": "snowplow_enriched", "path": str(root / "snowplow_enriched")},
        {"name": "app", "kind": "singer_jsonl", "path": str(root / "singer"), "streams": {"events": SAMPLE_APP_STREAM}},
        {"name": "catalog", "kind": "catalog", "path": str(root / "catalog")},
    ]


def _copy_site(site: Path, dest: Path) -> Path:
    shutil.copytree(site, dest)
    return dest


def test_counts_reconcile_and_a_second_run_loads_nothing(tmp_path: Path, site: Path) -> None:
    root = _copy_site(site, tmp_path / "site")
    first = ingest(tmp_path, _sources(root))
    for load in first["loads"]:
        assert (
            load["lines_read"] == load["loaded"] + load["duplicates"] + load["quarantined"] + load["control_messages"]
        )
    assert first["totals"]["duplicates"] > 0 and first["totals"]["quarantined"] > 0
    events = query(tmp_path, "select count(*), count(distinct event_id) from raw.events")[0]
    assert events[0] == events[1]
    app_types = dict(query(tmp_path, "select event_type, count(*) from raw.events where source = 'app' group by 1"))
    assert app_types.get("product_view", 0) > 0 and "custom" not in app_types

    second = ingest(tmp_path, _sources(root))
    assert second["loads"] == []
    assert query(tmp_path, "select count(*) from raw.events")[0][0] == events[0]
    # Touching a file without changing it is not a reason to load it again.
    some = next((root / "snowplow_enriched").rglob("*.tsv.gz"))
    os.utime(some, (time.time() + 60, time.time() + 60))
    assert ingest(tmp_path, _sources(root))["loads"] == []


def test_new_file_is_picked_up_and_changed_file_reloads_without_duplicates(tmp_path: Path, site: Path) -> None:
    root = _copy_site(site, tmp_path / "site")
    ingest(tmp_path, _sources(root))
    before = query(tmp_path, "select count(*) from raw.events")[0][0]

    first = sorted((root / "snowplow_enriched").rglob("*.tsv.gz"))[0]
    lines = gzip.decompress(first.read_bytes()).decode().splitlines()
    fields = lines[0].split("\t")
    fields[6] = "00000000-0000-4000-a000-000000000001"
    new_dir = root / "snowplow_enriched" / "2099" / "01" / "01" / "00"
    new_dir.mkdir(parents=True)
    (new_dir / "late.tsv").write_text("\t".join(fields) + "\n" + lines[1] + "\n")
    result = ingest(tmp_path, _sources(root))
    [load] = result["loads"]
    assert (load["lines_read"], load["loaded"], load["duplicates"]) == (2, 1, 1)
    assert query(tmp_path, "select count(*) from raw.events")[0][0] == before + 1

    # The first file changes: one line dropped. Its old rows are replaced, nothing doubles.
    first.write_bytes(gzip.compress(("\n".join(lines[1:]) + "\n").encode()))
    result = ingest(tmp_path, _sources(root))
    [load] = result["loads"]
    assert load["replaced"] > 0
    rows, distinct = query(tmp_path, "select count(*), count(distinct event_id) from raw.events")[0]
    assert rows == distinct
    gone = lines[0].split("\t")[6]
    assert query(tmp_path, "select count(*) from raw.events where event_id = ?", [gone])[0][0] == 0


def test_duplicates_are_found_through_event_keys_written_by_any_version(tmp_path: Path, site: Path) -> None:
    """A batch is de-duplicated against the warehouse through the stored ``event_key``
    (a hash of ``event_id``). Events stored before the column existed, and keys a DuckDB
    that hashes differently wrote, are keyed again before the next load: an event already
    in the warehouse is still found and counted as a duplicate."""
    import duckdb

    web = {"name": "web", "kind": "snowplow_enriched", "path": str(tmp_path / "web")}
    (tmp_path / "web").mkdir()
    first = sorted((site / "snowplow_enriched").rglob("*.tsv.gz"))[0]
    shutil.copy(first, tmp_path / "web" / "a.tsv.gz")
    ingest(tmp_path, [web])
    lines = gzip.decompress(first.read_bytes()).decode().splitlines()
    loaded = query(tmp_path, "select count(*) from raw.events")[0][0]
    assert query(tmp_path, "select count(*) from raw.events where event_key is distinct from hash(event_id)") == [(0,)]

    def again(number: int, old_line: str) -> dict:
        fields = old_line.split("\t")
        fields[6] = f"00000000-0000-4000-a000-{number:012d}"
        (tmp_path / "web" / f"{number}.tsv").write_text(old_line + "\n" + "\t".join(fields) + "\n")
        [load] = ingest(tmp_path, [web])["loads"]
        return load

    # A warehouse from before the column: it comes back empty and is filled.
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("alter table raw.events drop column event_key; delete from ingest.settings")
    con.close()
    load = again(1, lines[0])
    assert (load["lines_read"], load["loaded"], load["duplicates"]) == (2, 1, 1)

    # Keys that another hash function wrote: all are computed again.
    con = duckdb.connect(str(tmp_path / "wh.duckdb"))
    con.execute("update raw.events set event_key = event_key + 1; update ingest.settings set value = 'other'")
    con.close()
    load = again(2, lines[1])
    assert (load["lines_read"], load["loaded"], load["duplicates"]) == (2, 1, 1)
    assert query(tmp_path, "select count(*), count(distinct event_id) from raw.events")[0] == (loaded + 2, loaded + 2)
    assert query(tmp_path, "select count(*) from raw.events where event_key is distinct from hash(event_id)") == [(0,)]


def test_an_earlier_collected_copy_replaces_the_stored_event_and_a_later_one_is_a_duplicate(
    tmp_path: Path, site: Path
) -> None:
    """Snowplow's rule, across loads and within one: of the copies of an event_id, the
    earliest collected wins. A new copy collected earlier than the stored event replaces
    it; one collected later is a duplicate and the stored event stays; of two copies in one
    batch, the earlier loads."""
    from datetime import datetime, timedelta

    from insights.ingest.snowplow import ENRICHED_FIELDS

    collected, title, event_id = (ENRICHED_FIELDS.index(f) for f in ("collector_tstamp", "page_title", "event_id"))
    web = {"name": "web", "kind": "snowplow_enriched", "path": str(tmp_path / "web")}
    (tmp_path / "web").mkdir()
    first = sorted((site / "snowplow_enriched").rglob("*.tsv.gz"))[0]
    views = [
        line.split("\t")
        for line in gzip.decompress(first.read_bytes()).decode().splitlines()
        if line.split("\t")[ENRICHED_FIELDS.index("event")] == "page_view"
    ]
    a, b = views[0], views[1]
    (tmp_path / "web" / "1.tsv").write_text("\t".join(a) + "\n" + "\t".join(b) + "\n")
    ingest(tmp_path, [web])

    def copy(fields: list[str], hours: int, page_title: str, new_id: str | None = None) -> str:
        out = list(fields)
        when = datetime.strptime(out[collected], "%Y-%m-%d %H:%M:%S.%f") + timedelta(hours=hours)
        out[collected] = when.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
        out[title] = page_title
        out[event_id] = new_id or out[event_id]
        return "\t".join(out)

    c = "00000000-0000-4000-a000-00000000000c"
    (tmp_path / "web" / "2.tsv").write_text(
        "\n".join(
            [
                copy(a, -1, "a collected earlier"),
                copy(b, 1, "b collected later"),
                copy(a, 2, "c second", c),
                copy(a, 1, "c first", c),
            ]
        )
        + "\n"
    )
    [load] = ingest(tmp_path, [web])["loads"]
    assert (load["lines_read"], load["loaded"], load["duplicates"], load["quarantined"]) == (4, 2, 2, 0)
    stored = query(tmp_path, "select event_id, page_title from raw.events order by all")
    assert stored == sorted([(a[event_id], "a collected earlier"), (b[event_id], b[title] or None), (c, "c first")])


def test_gzip_members_and_a_corrupt_file(tmp_path: Path, site: Path) -> None:
    """Concatenated gzip members (as the S3 loader writes) load whole; a corrupt file fails
    its batch with the file named while earlier batches stay loaded; fixed, it loads."""
    files = sorted((site / "snowplow_enriched").rglob("*.tsv.gz"))[:3]
    texts = [gzip.decompress(f.read_bytes()) for f in files]
    src = tmp_path / "web"
    src.mkdir()
    (src / "a.tsv.gz").write_bytes(gzip.compress(texts[0]))
    half = texts[1].index(b"\n", len(texts[1]) // 2) + 1
    (src / "b.tsv.gz").write_bytes(gzip.compress(texts[1][:half]) + gzip.compress(texts[1][half:]))
    good_c = gzip.compress(texts[2])
    (src / "c.tsv.gz").write_bytes(good_c[: len(good_c) // 2])
    source = {"name": "web", "kind": "snowplow_enriched", "path": str(src)}
    # One file per batch: c's batch is parsed while b's loads.
    with pytest.raises(IngestError, match=r"c\.tsv\.gz.*corrupt gzip data"):
        ingest(tmp_path, [source], ingest={"batch_bytes": 1024})
    loaded = dict(query(tmp_path, "select path, rows_loaded from ingest.load_manifest"))
    assert {Path(p).name for p in loaded} == {"a.tsv.gz", "b.tsv.gz"}
    lines_b = query(tmp_path, "select lines_read from ingest.loads where status = 'ok' order by started_at")[1][0]
    assert lines_b == texts[1].count(b"\n")
    assert query(tmp_path, "select count(*) from ingest.loads where status = 'failed'")[0][0] == 1

    (src / "c.tsv.gz").write_bytes(good_c)
    [load] = ingest(tmp_path, [source], ingest={"batch_bytes": 1024})["loads"]
    assert load["lines_read"] == texts[2].count(b"\n")


def test_failed_validation_loads_nothing_and_says_why(tmp_path: Path) -> None:
    src = tmp_path / "files"
    src.mkdir()
    (src / "e.csv").write_text(
        "event_id,event_type,occurred_at,user_id,price\n"
        "a,purchase,2026-10-01 10:00:00,u1,-5\n"
        "b,purchase,2026-10-01 10:00:00,u1,5\n"
    )
    source = {"name": "files", "kind": "events_file", "path": str(src)}
    with pytest.raises(IngestError, match="price_non_negative on price: 1 of 2 rows"):
        ingest(tmp_path, [source])
    assert query(tmp_path, "select count(*) from raw.events")[0][0] == 0
    assert query(tmp_path, "select count(*) from ingest.load_manifest")[0][0] == 0
    status = query(tmp_path, "select status from ingest.loads")
    assert status == [("failed",)]
    stored = query(tmp_path, "select expectation, success from ingest.validation_results where not success")
    assert stored == [("price_non_negative", False)]
    # Demoted to a warning, the same batch loads and the warning is kept.
    summary = ingest(tmp_path, [source], validation={"warn_only": ["price_non_negative"]})
    assert summary["totals"]["loaded"] == 2
    assert "price_non_negative" in summary["loads"][0]["warnings"][0]


def test_s3_prefix_is_ingested_incrementally(
    tmp_path: Path, site: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="clickstream")
    files = sorted((site / "snowplow_enriched").rglob("*.tsv.gz"))[:5]
    for f in files:
        s3.upload_file(str(f), "clickstream", f"enriched/{f.relative_to(site / 'snowplow_enriched')}")
    source = {"name": "web", "kind": "snowplow_enriched", "path": "s3://clickstream/enriched"}
    summary = ingest(tmp_path, [source], s3={"endpoint_url": s3_endpoint})
    assert summary["totals"]["files"] == 5 and summary["totals"]["loaded"] > 0
    paths = [r[0] for r in query(tmp_path, "select path from ingest.load_manifest order by 1")]
    assert all(p.startswith("s3://clickstream/enriched/") for p in paths)
    assert ingest(tmp_path, [source], s3={"endpoint_url": s3_endpoint})["loads"] == []


def test_a_wrong_s3_path_is_named_with_its_cause(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A missing bucket, a prefix with nothing under it (S3's missing folder), an unreachable
    endpoint, refused credentials: each stops the load naming the source, the URI and the
    cause (a missing bucket surfaced as a bare botocore error, and an empty
    prefix, a typo most often, loaded nothing without a word)."""
    from botocore.exceptions import ClientError

    from insights.config import load_config
    from insights.storage import s3_errors

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket="empty-prefix")
    cases = {
        "s3://no-such-bucket-here/enriched": "source 'web': input path not found: bucket 'no-such-bucket-here' does not exist",
        "s3://empty-prefix/enriched": "source 'web': input path not found: nothing is stored under s3://empty-prefix/enriched",
    }  # fmt: skip
    for path, message in cases.items():
        with pytest.raises(IngestError, match=re.escape(message)):
            ingest(
                tmp_path, [{"name": "web", "kind": "snowplow_enriched", "path": path}], s3={"endpoint_url": s3_endpoint}
            )
    with pytest.raises(
        IngestError, match=r"source 'web': s3://empty-prefix/x: cannot reach the S3 endpoint http://127\.0\.0\.1:9 "
    ):
        ingest(
            tmp_path,
            [{"name": "web", "kind": "snowplow_enriched", "path": "s3://empty-prefix/x"}],
            s3={"endpoint_url": "http://127.0.0.1:9"},
        )
    config = load_config(tmp_path / "insights.yml", environ={})
    refused = ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "ListObjectsV2")
    with pytest.raises(PermissionError, match=r"s3://b/p: access refused \(AccessDenied\): check the AWS credentials"):
        with s3_errors("s3://b/p", config):
            raise refused


def test_batches_prepared_ahead_change_nothing_and_are_freed(tmp_path: Path, site: Path) -> None:
    """Batches are read, parsed and staged on helper threads ahead of the one loading
    (``ingest.batches_ahead``); they still load in order, so the warehouse is the same
    however many are prepared at once, and no staged batch outlives its load, even when a
    later batch fails."""
    from insights.config import load_config
    from insights.ingest.loader import SCRATCH, run_ingest
    from insights.warehouse import connect
    from tests.conftest import write_config

    source = {"name": "web", "kind": "snowplow_enriched", "path": str(site / "snowplow_enriched")}
    every_row = (
        "select count(*), sum(hash(columns(lambda c: c not in ('load_id', 'loaded_at')))) from raw.events",
        "select count(*), sum(hash(source_file, line_number, raw_text, reason)) from ingest.quarantine",
    )
    contents = []
    for ahead in (1, 3):
        folder = tmp_path / f"ahead_{ahead}"
        folder.mkdir()
        config = load_config(
            write_config(folder, [source], ingest={"batch_bytes": 64 * 1024, "batches_ahead": ahead}), environ={}
        )
        con = connect(config, create=True)
        try:
            loads = run_ingest(con, config)
            assert len(loads) > 5
            staged = f"select count(*) from duckdb_tables() where database_name = '{SCRATCH}'"
            assert con.execute(staged).fetchone()[0] == 0
            contents.append([con.execute(sql).fetchone() for sql in every_row])
        finally:
            con.close()
    assert contents[0] == contents[1]
    assert contents[0][0][0] > 0 and contents[0][1][0] > 0

    # A corrupt file in the middle: the load stops there, and neither the failed batch nor
    # those prepared after it leave a staged table behind.
    files = sorted((site / "snowplow_enriched").rglob("*.tsv.gz"))[:12]
    broken = tmp_path / "broken"
    broken.mkdir()
    for i, f in enumerate(files):
        data = f.read_bytes()
        (broken / f"{i:02d}.tsv.gz").write_bytes(data[: len(data) // 2] if i == 4 else data)
    folder = tmp_path / "failing"
    folder.mkdir()
    config = load_config(
        write_config(
            folder,
            [{"name": "web", "kind": "snowplow_enriched", "path": str(broken)}],
            ingest={"batch_bytes": 1024, "batches_ahead": 3},
        ),
        environ={},
    )
    con = connect(config, create=True)
    try:
        with pytest.raises(IngestError, match=r"04\.tsv\.gz.*corrupt gzip data"):
            run_ingest(con, config)
        assert con.execute(staged).fetchone()[0] == 0
        loaded = {Path(p).name for (p,) in con.execute("select path from ingest.load_manifest").fetchall()}
        assert loaded == {f"{i:02d}.tsv.gz" for i in range(4)}
    finally:
        con.close()
