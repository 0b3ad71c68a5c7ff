"""The ingest floor benchmark (bench/ingest_floor.py) times the work it says it times."""

from __future__ import annotations

import gzip
import importlib.util
import sys
from pathlib import Path

import pytest

from insights.warehouse import EVENT_COLUMNS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def floor():  # noqa: ANN201 - the benchmark script as a module
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("bench_ingest_floor", ROOT / "bench" / "ingest_floor.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def test_the_insert_fills_every_raw_events_column_and_only_from_parsed_fields(floor) -> None:  # noqa: ANN001
    sql = floor.insert_sql()
    columns = sql.split("(", 1)[1].split(")", 1)[0].split(", ")
    assert columns == list(EVENT_COLUMNS)
    assert sql.count("try_cast(") == len(floor.DIRECT)
    assert set(floor.DIRECT) <= set(EVENT_COLUMNS)


def test_a_batch_is_whole_files_up_to_the_byte_budget(floor, tmp_path: Path) -> None:  # noqa: ANN001
    folder = tmp_path / "snowplow_enriched" / "2026" / "10"
    folder.mkdir(parents=True)
    for hour in range(5):
        (folder / f"{hour:02d}.gz").write_bytes(b"x" * 100)
    names = [p.name for p in floor.batch_files(tmp_path, 250, skip=1)]
    assert names == ["01.gz", "02.gz"]
    # One file larger than the budget is still a batch of its own, as the load takes it.
    assert [p.name for p in floor.batch_files(tmp_path, 10, skip=4)] == ["04.gz"]
    with pytest.raises(SystemExit, match="no enriched TSV files"):
        floor.batch_files(tmp_path, 250, skip=5)


def test_the_sample_site_batch_is_parsed_and_inserted_whole(floor) -> None:  # noqa: ANN001
    site = ROOT / "data_samples"
    batch = floor.batch_files(site, 2 * 2**20, skip=0)
    lines, best = floor.measure(batch, repeats=2)
    assert lines == sum(gzip.decompress(p.read_bytes()).count(b"\n") for p in batch) > 1000
    assert list(best) == ["read", "checksum", "gunzip", "parse", "insert", "commit"]
    assert all(cpu >= 0 and wall > 0 for cpu, wall in best.values())
