"""Singer files read in bulk (DuckDB's JSON functions over every line) give exactly what
reading them line by line in Python gives: the same rows and flattened columns per
stream, the same stored records and times, the same control messages, and the same bad
lines with the same reasons. Hypothesis writes the lines: nested records with keys and
values of every kind (dots, quotes, control characters, huge and tiny numbers, NaN),
every message type, repeated keys, trailing commas and damaged text."""

from __future__ import annotations

import json
from typing import Any

import duckdb
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from insights.ingest import mapped
from tests.helpers import fuzz_settings

SETTINGS = fuzz_settings(300)

# Mostly what real records hold (so that most lines are read in bulk), sometimes what
# only Python reads as Python does (odd keys, numbers in exponent form, control characters).
text = st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=12)
odd_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
common_keys = st.sampled_from(["id", "user_id", "price", "props", "a", "b", "type", "record", "source_file", "éclair"])
plain_keys = text.filter(lambda k: k and "." not in k and '"' not in k and "\\" not in k)
odd_keys = st.one_of(st.sampled_from(["a.b", 'q"uote', "back\\slash", "", "tab\tkey", "ctl\x01"]), odd_text)


def often(common: st.SearchStrategy, rare: st.SearchStrategy, odds: int = 8) -> st.SearchStrategy:
    """``common`` ``odds`` times in ``odds + 1``, else ``rare`` (one_of would pick either half the time)."""
    return st.integers(0, odds).flatmap(lambda i: rare if i == 0 else common)


keys = often(st.one_of(common_keys, plain_keys), odd_keys)
ordinary_numbers = st.one_of(
    st.integers(-(10**15), 10**15),
    st.floats(min_value=-1e15, max_value=1e15).filter(lambda x: x == 0 or abs(x) >= 1e-4),
)
numbers = often(
    ordinary_numbers,
    st.one_of(
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([1e16, 1e-5, 0.0001, 123456789012345.67, 5.0, -0.0, 1e300, 2.5e-300]),
    ),
    odds=4,
)
scalars = often(
    st.one_of(st.none(), st.booleans(), numbers, text),
    st.sampled_from(["", " ", "x\x1fy", "\x7f\u2028", "tab\there"]),
    odds=4,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
records = st.dictionaries(keys, values, max_size=6)
times = st.one_of(
    st.none(),
    st.sampled_from(["2026-10-01T10:00:00Z", "2026-10-01T10:00:00+02:00", "2026-10-01", "", "soon", "2026-13-45"]),
    numbers,
    st.lists(st.integers(), max_size=2),
)


@st.composite
def messages(draw: st.DrawFn) -> Any:
    kind = draw(
        often(st.sampled_from(["record", "record", "record", "bare"]), st.sampled_from(["schema", "state", "other"]), 3)
    )
    if kind == "record":
        message: dict[str, Any] = {
            "type": "RECORD",
            "stream": draw(often(st.sampled_from(["events", "customers"]), st.one_of(st.none(), st.integers()))),
            "record": draw(often(records, values)),
        }
        if draw(st.booleans()):
            message["time_extracted"] = draw(often(st.just("2026-10-01T10:00:00Z"), times, 2))
        return message
    if kind == "bare":
        record = draw(records)
        if draw(st.booleans()):
            record["type"] = None
        return record
    if kind == "schema":
        return {"type": "SCHEMA", "stream": draw(st.sampled_from(["events", 5])), "schema": draw(records)}
    if kind == "state":
        return {"type": "STATE", **({"value": draw(values)} if draw(st.booleans()) else {})}
    return {"type": draw(st.one_of(st.sampled_from(["ACTIVATE_VERSION", "BATCH", "record", "NOPE"]), values))}


DEEP: dict = {"id": "deep"}
for _ in range(20):
    DEEP = {"n": DEEP, "m": 1}
SPECIAL = [
    '{"type":"RECORD","stream":"events","record":{"p":{"k":1,"k":2},"q":3}}',  # a nested key twice
    '{"type":"RECORD","stream":"events","record":{"l":[{"k":1}],"p":{"x":{"y":"z"}}}}',
    json.dumps({"type": "RECORD", "stream": "events", "record": DEEP}),  # deeper than the bulk reads
    '{"type":"RECORD","stream":"events","record":{"a":{"b":1},"a.b":2}}',  # a dotted key meets a nested one
    '{"type":"RECORD","stream":"events","record":{"n":-0,"big":123456789012345678901234}}',
    '{"type":"RECORD","stream":"events","record":{"x":NaN},"time_extracted":"2026-10-01T00:00:00Z"}',
    '{"type":"RECORD","stream":"events","record":{"s":"caf\\u00e9 \\ud83d\\ude00"}}',
    '\ufeff{"id":"bom"}',
    '{"type":"RECORD","stream":"events","record":{}}',
    '{"type":"RECORD","stream":"events","record":{"source_line":"mine"}}',
]


@st.composite
def lines(draw: st.DrawFn) -> str:
    message = draw(messages())
    line = json.dumps(
        message,
        ensure_ascii=draw(st.booleans()),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " :  ")])),
    )
    damage = draw(
        often(st.just("none"), st.sampled_from(["cut", "comma", "repeat", "junk", "crlf", "blank", "special"]), 4)
    )
    if damage == "cut":
        line = line[: draw(st.integers(0, len(line)))]
    elif damage == "comma" and line.endswith("}"):
        line = line[:-1] + ",}"
    elif damage == "repeat" and line.startswith("{") and len(line) > 2:
        # A key given twice: Python keeps the last value.
        line = '{"id": 1, "id": 2, ' + line[1:] if line != "{}" else line
    elif damage == "junk":
        line = draw(st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=40))
    elif damage == "crlf":
        line += "\r"
    elif damage == "special":
        line = draw(st.sampled_from(SPECIAL))
    elif damage == "blank":
        line = draw(st.sampled_from(["", "   ", "\t", "\x0c"]))
    return line.replace("\n", " ")


def _rows(table: pa.Table) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for row in table.to_pylist():
        where = (row.pop("source_file"), row.pop("source_line"))
        out[where] = {k: v for k, v in row.items() if v is not None}
    return out


def _same_json(a: str, b: str) -> bool:
    def load(s: str) -> Any:
        return json.loads(s, parse_constant=lambda c: {"NaN": "nan", "Infinity": "inf", "-Infinity": "-inf"}[c])

    return load(a) == load(b)


def _read(files: list[tuple[str, bytes, str]], bulk: bool) -> mapped.SingerRead:
    con = duckdb.connect()
    try:
        return mapped.read_singer(files, con, bulk=bulk)
    finally:
        con.close()


@SETTINGS
@given(st.lists(st.lists(lines(), min_size=1, max_size=12), min_size=1, max_size=3))
def test_bulk_reading_equals_python_reading(files_lines: list[list[str]]) -> None:
    files = [(f"in/events-{i}.jsonl", ("\n".join(ls) + "\n").encode(), "events") for i, ls in enumerate(files_lines)]
    bulk, python = _read(files, True), _read(files, False)
    assert bulk.lines_read == python.lines_read == sum(len(ls) for ls in files_lines)
    assert sorted(bulk.bad) == sorted(python.bad)
    assert sorted(bulk.schemas) == sorted(python.schemas)
    assert sorted(bulk.states) == sorted(python.states)
    assert bulk.records.keys() == python.records.keys()
    for stream, table in python.records.items():
        assert set(bulk.records[stream].column_names) == set(table.column_names), stream
        assert _rows(bulk.records[stream]) == _rows(table), stream
    got = sorted(bulk.raw_records.to_pylist(), key=lambda r: (r["source_file"], r["source_line"]))
    want = sorted(python.raw_records.to_pylist(), key=lambda r: (r["source_file"], r["source_line"]))
    assert [{**r, "record": None} for r in got] == [{**r, "record": None} for r in want]
    assert all(_same_json(g["record"], w["record"]) for g, w in zip(got, want))


def test_bulk_reading_takes_the_ordinary_lines_and_python_the_odd_ones() -> None:
    """The test above would pass if everything went through Python: the bulk path must read
    ordinary records itself, and leave to Python what it would read differently."""
    ordinary = [
        {"type": "RECORD", "stream": "events", "record": {"id": "e1", "props": {"price": 9.5, "tags": ["a"]}}},
        {"id": "e2", "user": "u1"},
    ]
    odd = ['{"type":"RECORD","stream":"events","record":{"id":"e3","price":1e-05}}', '{"id":"e4","a.b":1}']
    text = "\n".join([*(json.dumps(m) for m in ordinary), *odd]) + "\n"
    con = duckdb.connect()
    calls = []
    original = mapped.parse_singer_lines
    try:
        mapped.parse_singer_lines = lambda lines, *a, **k: (
            calls.append([n for n, _ in lines])
            or original(  # type: ignore[assignment]
                lines, *a, **k
            )
        )
        read = mapped.read_singer([("f.jsonl", text.encode(), "events")], con)
    finally:
        mapped.parse_singer_lines = original  # type: ignore[assignment]
    assert calls == [[3, 4]]
    rows = _rows(read.records["events"])
    assert rows[("f.jsonl", 1)]["props.price"] == "9.5"
    assert rows[("f.jsonl", 1)]["props.tags"] == '["a"]'
    assert rows[("f.jsonl", 3)]["price"] == "1e-05"  # Python's text of the number
    assert rows[("f.jsonl", 4)]["a.b"] == "1"


def test_a_record_with_a_time_extracted_that_is_no_time_is_quarantined() -> None:
    """Before, such a time failed the whole batch at the insert (or, with an offset, was
    stored without it); now the line is quarantined with the value named, and an offset
    is converted to UTC."""
    lines_ = [
        {"type": "RECORD", "stream": "events", "record": {"id": 1}, "time_extracted": "2026-10-01T12:00:00+02:00"},
        {"type": "RECORD", "stream": "events", "record": {"id": 2}, "time_extracted": "yesterday"},
        {"type": "RECORD", "stream": "events", "record": {"id": 3}, "time_extracted": 1790000000},
    ]
    text = "\n".join(json.dumps(m) for m in lines_)
    for bulk in (True, False):
        read = _read([("f.jsonl", text.encode(), "events")], bulk)
        assert [(n, reason) for _, n, _, reason in sorted(read.bad)] == [
            (2, "time_extracted: not a timestamp 'yesterday'"),
            (3, "time_extracted: not a timestamp '1790000000'"),
        ]
        (stored,) = read.raw_records.to_pylist()
        assert str(stored["time_extracted"]) == "2026-10-01 10:00:00"
