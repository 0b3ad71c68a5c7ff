"""Snowplow formats: the real enriched TSV event and the real atomic-table export."""

import csv
import json
import random
import shutil
from datetime import datetime
from pathlib import Path

import pytest

from insights.ingest import snowplow
from tests.helpers import ingest, query

# Expected-JSON key (Snowplow's analytics SDK) -> column of raw.events.
TSV_FIELDS = {
    "app_id": "app_id",
    "platform": "platform",
    "event_id": "event_id",
    "user_id": "user_id",
    "user_ipaddress": "user_ipaddress",
    "domain_userid": "anonymous_id",
    "network_userid": "network_userid",
    "domain_sessionid": "session_id",
    "domain_sessionidx": "session_index",
    "page_url": "page_url",
    "page_title": "page_title",
    "page_urlhost": "page_urlhost",
    "page_urlpath": "page_urlpath",
    "collector_tstamp": "collector_tstamp",
    "dvce_created_tstamp": "dvce_created_tstamp",
    "derived_tstamp": "occurred_at",
    "event_name": "event_name",
}


def _as_expected(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat(timespec="milliseconds").replace(".000", "") + "Z"
    return value


def test_real_enriched_event_matches_snowplow_sdk_parse(tmp_path: Path, fixtures_dir: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(fixtures_dir / "snowplow_enriched_tsv" / "enriched_event_sample.tsv", src / "events.tsv")
    expected = json.loads((fixtures_dir / "snowplow_enriched_tsv" / "enriched_event_sample_expected.json").read_text())

    summary = ingest(tmp_path, [{"name": "web", "kind": "snowplow_enriched", "path": str(src)}])

    assert summary["totals"] == {**summary["totals"], "lines_read": 1, "loaded": 1, "quarantined": 0}
    columns = list(TSV_FIELDS.values())
    row = dict(zip(columns, query(tmp_path, f"select {', '.join(columns)} from raw.events")[0]))
    for key, column in TSV_FIELDS.items():
        assert _as_expected(row[column]) == expected[key], key
    event_type, source = query(tmp_path, "select event_type, source from raw.events")[0]
    assert (event_type, source) == ("page_view", "web")


def test_broken_enriched_lines_are_quarantined_with_reasons(tmp_path: Path, fixtures_dir: Path) -> None:
    good = (fixtures_dir / "snowplow_enriched_tsv" / "enriched_event_sample.tsv").read_text().rstrip("\n")
    fields = good.split("\t")
    bad_ts = fields.copy()
    bad_ts[3] = "yesterday"
    other = fields.copy()
    other[6] = "11111111-2222-3333-4444-555555555555"
    bad_json = other.copy()
    bad_json[6] = "66666666-2222-3333-4444-555555555555"
    bad_json[52] = '{"schema": "iglu:x", "data": [ {'
    lines = [good, "\t".join(fields[:50]), "\t".join(bad_ts), "", "\t".join(other), "\t".join(bad_json)]
    src = tmp_path / "in"
    src.mkdir()
    (src / "batch.tsv").write_text("\n".join(lines) + "\n")

    summary = ingest(tmp_path, [{"name": "web", "kind": "snowplow_enriched", "path": str(src)}])

    totals = summary["totals"]
    assert (totals["lines_read"], totals["loaded"], totals["quarantined"]) == (6, 2, 4)
    quarantined = query(tmp_path, "select line_number, reason, raw_text from ingest.quarantine order by line_number")
    assert [q[0] for q in quarantined] == [2, 3, 4, 6]
    assert "expected 131 tab-separated fields, found 50" in quarantined[0][1]
    assert "collector_tstamp: not a timestamp 'yesterday'" in quarantined[1][1]
    assert quarantined[1][2] == "\t".join(bad_ts)
    assert quarantined[2][1] == "empty line"
    assert "contexts: invalid JSON" in quarantined[3][1]


@pytest.mark.parametrize("count_chunk", [snowplow._COUNT_CHUNK, 4000, 700])
def test_good_lines_around_broken_ones_keep_their_line_numbers(
    fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch, count_chunk: int
) -> None:
    """Files mixing good and broken lines in every arrangement (broken first, last, in
    runs, the last line without its newline): each good line is parsed once, under its own
    number, and each broken one is reported under its own. Fields are counted over runs of
    lines: with runs of a few lines and runs shorter than one line too."""
    monkeypatch.setattr(snowplow, "_COUNT_CHUNK", count_chunk)
    fields = (fixtures_dir / "snowplow_enriched_tsv" / "enriched_event_sample.tsv").read_text().rstrip("\n").split("\t")
    rng = random.Random(7)
    for _ in range(40):
        files, expected_good, expected_bad = [], [], []
        for name in ("a.tsv", "b.tsv"):
            lines = []
            for number in range(1, rng.randint(1, 12) + 1):
                line = fields.copy()
                line[6] = f"{name}-{number}"
                if rng.random() < 0.4:
                    lines.append("\t".join(line[: rng.randint(0, 130)]))
                    expected_bad.append((name, number))
                else:
                    lines.append("\t".join(line))
                    expected_good.append((name, number, f"{name}-{number}"))
            newline = lines[-1] == "" or rng.random() < 0.5
            files.append((name, ("\n".join(lines) + ("\n" if newline else "")).encode()))

        table = snowplow.read_enriched(files).table.to_pylist()

        good = [(r["source_file"], r["source_line"], r["event_id"]) for r in table if r["shape_error"] is None]
        bad = [(r["source_file"], r["source_line"]) for r in table if r["shape_error"] is not None]
        assert good == expected_good
        assert sorted(bad) == expected_bad


def _fixture_rows(fixtures_dir: Path) -> list[dict[str, str]]:
    with open(fixtures_dir / "snowplow_web" / "source" / "snowplow_web_events.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_atomic_export_loads_with_snowplow_deduplication(tmp_path: Path, fixtures_dir: Path) -> None:
    rows = _fixture_rows(fixtures_dir)
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(fixtures_dir / "snowplow_web" / "source" / "snowplow_web_events.csv", src / "events.csv")

    summary = ingest(tmp_path, [{"name": "atomic", "kind": "snowplow_atomic", "path": str(src)}])

    totals = summary["totals"]
    distinct = {r["event_id"] for r in rows}
    assert totals["lines_read"] == len(rows) == 160
    assert totals["loaded"] == len(distinct)
    assert totals["duplicates"] == len(rows) - len(distinct)
    # The earliest collector time wins among copies of one event_id.
    earliest: dict[str, str] = {}
    for r in rows:
        if r["event_id"] not in earliest or r["collector_tstamp"] < earliest[r["event_id"]]:
            earliest[r["event_id"]] = r["collector_tstamp"]
    stored = dict(
        query(tmp_path, "select event_id, strftime(collector_tstamp, '%Y-%m-%d %H:%M:%S.%g') from raw.events")
    )
    assert stored == earliest


def test_atomic_contexts_give_page_view_ids_and_bot_flags(tmp_path: Path, fixtures_dir: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(fixtures_dir / "snowplow_web" / "source" / "snowplow_web_events.csv", src / "events.csv")
    ingest(tmp_path, [{"name": "atomic", "kind": "snowplow_atomic", "path": str(src)}])

    with open(fixtures_dir / "snowplow_web" / "expected" / "snowplow_web_page_views_expected.csv", newline="") as fh:
        expected = {r["event_id"]: r["page_view_id"] for r in csv.DictReader(fh)}
    stored = dict(query(tmp_path, "select event_id, page_view_id from raw.events where event_type = 'page_view'"))
    assert expected.items() <= stored.items()
    flags = dict(query(tmp_path, "select is_flagged_bot, count(*) from raw.events group by 1"))
    assert flags.get(False, 0) > 100


def test_atomic_parquet_with_nested_contexts_and_typed_columns(tmp_path: Path, fixtures_dir: Path) -> None:
    """The atomic export as a warehouse writes it to Parquet: shredded contexts as lists of
    structs, timestamps typed. It loads as the CSV export does, event for event."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _fixture_rows(fixtures_dir)
    columns: dict[str, pa.Array] = {}
    for name in rows[0]:
        values = [r[name] or None for r in rows]
        if name.startswith(("contexts_", "unstruct_event_")):
            try:
                columns[name] = pa.array([json.loads(v) if v else None for v in values])
            except pa.ArrowInvalid:  # values of several shapes: Parquet keeps such a column as text
                columns[name] = pa.array(values, pa.string())
        elif name.endswith("_tstamp"):
            columns[name] = pa.array(values, pa.string()).cast(pa.timestamp("ms"))
        else:
            columns[name] = pa.array(values, pa.string())
    table = pa.table(columns)
    # The bot and device contexts really are nested (the fixture's page context mixes shapes).
    for nested in ("contexts_com_iab_snowplow_spiders_and_robots_1_0_0", "contexts_nl_basjes_yauaa_context_1_0_0"):
        assert pa.types.is_nested(table.schema.field(nested).type)
    (tmp_path / "pq").mkdir()
    pq.write_table(table, tmp_path / "pq" / "events.parquet")
    (tmp_path / "csv").mkdir()
    shutil.copy(fixtures_dir / "snowplow_web" / "source" / "snowplow_web_events.csv", tmp_path / "csv" / "events.csv")

    compare = (
        "select event_id, event_type, page_view_id, is_flagged_bot, item_id, "
        "strftime(collector_tstamp, '%Y-%m-%d %H:%M:%S.%g') from raw.events order by all"
    )
    from_parquet = ingest(
        tmp_path / "pq", [{"name": "atomic", "kind": "snowplow_atomic", "path": str(tmp_path / "pq")}]
    )
    from_csv = ingest(tmp_path / "csv", [{"name": "atomic", "kind": "snowplow_atomic", "path": str(tmp_path / "csv")}])
    assert from_parquet["totals"]["loaded"] == from_csv["totals"]["loaded"] > 100
    assert query(tmp_path / "pq", compare) == query(tmp_path / "csv", compare)


def test_csv_records_keep_their_origin_and_a_repeated_header_name_reads_its_last_column() -> None:
    """CSV (atomic exports and events files) is read into whole columns: quoted fields over
    two lines stay one record under its first line, empty values are none, an empty line
    and a record of the wrong width keep their raw text with the reason, and a column name
    the header repeats (which made columns of unequal length before) reads the last one."""
    from insights.ingest.textio import read_table_file

    data = b'a,b,a\n1,,3\n"x\ny",2,z\n\n4,5\n'
    rows = sorted(read_table_file(data, "f.csv").to_pylist(), key=lambda r: r["source_line"])
    assert [(r["source_line"], r["a"], r["b"], r["shape_error"]) for r in rows] == [
        (2, "3", None, None),
        (3, "z", "2", None),
        (5, None, None, "empty line"),
        (6, None, None, "expected 3 comma-separated fields, found 2"),
    ]
    assert [r["raw_text"] for r in rows] == ["1,,3", '"x\ny",2,z', "", "4,5"]
    assert {r["source_file"] for r in rows} == {"f.csv"}
