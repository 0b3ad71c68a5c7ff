"""Sources mapped onto the canonical schema by configuration: events files and Singer streams.

An events file (CSV or Parquet) or a Singer stream's records are read as text columns;
the source's ``columns:`` map (canonical name -> source column, dots reaching into nested
JSON) and ``event_types:`` map (source value -> canonical type) turn them into canonical
events. Values that do not parse as their canonical type send the row to quarantine with
the column named, never a silent null.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from insights.config import CANONICAL_EVENT_TYPES, StreamMapping
from insights.ingest.textio import json_text, quote_ident
from insights.ingest.textio import quote_literal as _lit
from insights.timing import gc_paused
from insights.warehouse import CANONICAL_EVENT_COLUMNS, query_table

META = ("source_file", "source_line", "raw_text", "shape_error")


def _to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json_text(value)
    text = str(value)
    return text if text != "" else None


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, str | None]:
    """Nested objects become dotted keys (``event_properties.price``); lists stay JSON text."""
    flat: dict[str, str | None] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat[name] = _to_text(value)
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = _to_text(value)
    return flat


@dataclass
class TextRows:
    """Rows of text columns with their origin, the common input of the mapping SQL."""

    columns: dict[str, list[str | None]] = field(default_factory=dict)
    meta: dict[str, list[Any]] = field(default_factory=lambda: {k: [] for k in META})
    n: int = 0

    def add(
        self, values: dict[str, str | None], source_file: str, line: int, raw: str | None, error: str | None
    ) -> None:
        for name in values.keys() - self.columns.keys():
            self.columns[name] = [None] * self.n
        for name, column in self.columns.items():
            column.append(values.get(name))
        for key, value in zip(META, (source_file, line, raw, error)):
            self.meta[key].append(value)
        self.n += 1

    def to_arrow(self) -> pa.Table:
        arrays = {name: pa.array(values, pa.string()) for name, values in self.columns.items()}
        arrays["source_file"] = pa.array(self.meta["source_file"], pa.string())
        arrays["source_line"] = pa.array(self.meta["source_line"], pa.int64())
        arrays["raw_text"] = pa.array(self.meta["raw_text"], pa.string())
        arrays["shape_error"] = pa.array(self.meta["shape_error"], pa.string())
        return pa.table(arrays)


_CASTS = {"TIMESTAMP": "timestamp", "DOUBLE": "double"}


def timestamp_sql(raw: str) -> str:
    """A text expression as a UTC timestamp; NULL where it is none. ISO 8601 text (with or
    without an offset), a compact date (``20261001``), or a Unix epoch number (as exports
    from GA4, Mixpanel or a warehouse have them) in seconds, milliseconds or microseconds,
    told apart by size: 9-10 digits before the point are seconds (1973-2286), 12-13
    milliseconds, 15-16 microseconds; other sizes are no time."""
    number = f"try_cast({raw} as double)"
    seconds = (
        f"case when abs({number}) >= 1e8 and abs({number}) < 1e11 then {number} "
        f"when abs({number}) >= 1e11 and abs({number}) < 1e14 then {number} / 1e3 "
        f"when abs({number}) >= 1e14 and abs({number}) < 1e17 then {number} / 1e6 end"
    )
    # Whole numbers through integer microseconds: a double would round the last digits.
    whole = f"try_cast({raw} as bigint)"
    micros = (
        f"case when abs({whole}) >= 100000000 and abs({whole}) < 100000000000 then {whole} * 1000000 "
        f"when abs({whole}) >= 100000000000 and abs({whole}) < 100000000000000 then {whole} * 1000 "
        f"when abs({whole}) >= 100000000000000 and abs({whole}) < 100000000000000000 then {whole} end"
    )
    return (
        f"coalesce(try_cast({raw} as timestamptz)::timestamp, "
        f"case when regexp_full_match({raw}, '[12][0-9]{{3}}[01][0-9][0-3][0-9]') "
        f"then try_strptime({raw}, '%Y%m%d') end, "
        f"case when regexp_full_match({raw}, '-?[0-9]+') then try(make_timestamp({micros})) "
        f"else try(to_timestamp({seconds})::timestamp) end)"
    )


def _cast_sql(raw: str, kind: str) -> str:
    """A text expression as its canonical type (NULL where it does not parse)."""
    if kind == "TIMESTAMP":
        return timestamp_sql(raw)
    if kind == "DOUBLE":
        return f"try_cast({raw} as double)"
    return raw


def _bad_value(label: str, kind: str, value: str) -> str:
    """The quarantine reason for a value that is not of its column's type, quoting it."""
    return bad_value_sql(label, "a " + _CASTS[kind], value)


def column_label(canonical: str, source_col: str) -> str:
    """How a quarantine reason names a column: ``price (variants.0.price)`` when mapped."""
    return canonical if source_col == canonical else f"{canonical} ({source_col})"


def bad_value_sql(label: str, expected: str, value: str) -> str:
    """SQL for the reason ``<label>: not <expected> '<value>'`` (the value cut at 40)."""
    return f"{_lit(label + ': not ' + expected + ' ')} || '''' || left({value}, 40) || ''''"


def mapped_sql(
    view: str,
    columns: list[str],
    mapping: StreamMapping,
    types_view: str,
    source_name: str,
    drift: str = "stop",
    warnings: list[str] | None = None,
) -> str:
    """Canonical rows from a text-column view, by the source's maps.

    Output columns as :func:`insights.ingest.snowplow.canonical_sql`. A mapped column the
    batch lacks stops the load (``drift`` "stop") or is read as empty with a warning ("load").
    """
    available = set(columns)
    exprs: dict[str, str] = {}
    raws: dict[str, str] = {}  # each mapped column's text, before its cast
    problems: list[str] = []
    explode = _explode_column(mapping, available, source_name, drift, warnings)
    for canonical, kind in CANONICAL_EVENT_COLUMNS.items():
        if canonical in ("event_type", "source"):
            continue
        source_col = mapping.columns.get(canonical, canonical)
        if explode and source_col.startswith(explode + "."):
            if canonical in _RECORD_COLUMNS:
                raise ValueError(
                    f"source '{source_name}': {canonical} is mapped into the exploded array ('{source_col}'); "
                    f"ids, times and identities are the record's: map {canonical} to a column outside '{explode}'"
                )
            label = column_label(canonical, source_col)
            exprs[canonical], problem = _element_expr("x_line.e", source_col[len(explode) + 1 :], kind, label)
            problems += [problem] if problem else []
            continue
        if mapping.explode and source_col.startswith(mapping.explode + "."):
            exprs[canonical] = f"null::{kind}"  # the array column is missing (schema_drift: load)
            continue
        nested = None if source_col in available else nested_column(source_col, available)
        if source_col not in available and nested is None:
            if canonical in mapping.columns and drift == "load":
                if warnings is not None:
                    warnings.append(
                        f"{source_name}: column '{source_col}' (mapped to {canonical}) is missing from this batch; "
                        "loaded as empty (schema_drift: load)"
                    )
            elif canonical in mapping.columns:
                raise ValueError(
                    f"source '{source_name}': column '{source_col}' (mapped to {canonical}) is not in "
                    f"the data; columns present: {', '.join(sorted(available)) or 'none'} "
                    "(set the source's schema_drift: load to load the rest)"
                )
            exprs[canonical] = f"null::{kind}"
            continue
        raw = nested_raw(*nested) if nested else f"nullif(trim({quote_ident(source_col)}), '')"
        raws[canonical] = raw
        exprs[canonical] = cast = _cast_sql(raw, kind)
        if kind in _CASTS:
            label = column_label(canonical, source_col)
            problems.append(f"case when {raw} is not null and {cast} is null then {_bad_value(label, kind, raw)} end")
    name_col = mapping.columns.get("event_name", "event_name")
    type_col = mapping.columns.get("event_type", "event_type")
    if mapping.event_type:
        event_type = _lit(mapping.event_type)
    else:
        candidates = [c for c in (type_col, name_col) if c in available]
        # Qualified: the lookup table has an `event_type` column of its own.
        value = f"coalesce({', '.join('src.' + quote_ident(c) for c in candidates)})" if candidates else "null"
        known = ", ".join(_lit(t) for t in CANONICAL_EVENT_TYPES)
        event_type = (
            f"coalesce((select t.event_type from {types_view} t where t.source_value = {value}), "
            f"case when {value} in ({known}) then {value} end, 'custom')"
        )
    if "event_name" not in exprs or exprs["event_name"] == "null::VARCHAR":
        first = next((c for c in (type_col, name_col) if c in available), None)
        exprs["event_name"] = quote_ident(first) if first else "null::varchar"
    # Element checks run over the whole array before it is exploded: a bad element sends
    # its source line (the record) to quarantine, as any other bad value does.
    array_check = (
        f"case when {quote_ident(explode)} is not null and x_elements is null "
        f"then {_lit(explode + ': not a JSON array')} end"
        if explode
        else None
    )
    derived_id = (
        "md5(concat_ws('|', "
        + _lit(source_name)
        + ", "
        + ", ".join(f"coalesce({quote_ident(c)}, '')" for c in sorted(available))
        + "))"
    )
    exprs["event_id"] = f"coalesce({exprs['event_id']}, {derived_id})" if available else exprs["event_id"]
    checks = ", ".join(
        [
            "case when occurred_at_chk is null and occurred_at_raw is null then 'occurred_at is empty' end",
            "case when user_id_chk is null and anonymous_id_chk is null then 'no user_id or anonymous_id' end",
            *([array_check] if array_check else []),
            *problems,
        ]
    )
    occurred_raw = raws.get("occurred_at", "null")
    base_id = exprs["event_id"]
    if explode:
        # The first element's event keeps the record's id, the others get '#2', '#3', ... (as
        # Snowplow's multi-product purchases do), so de-duplication stays per record.
        exprs["event_id"] = f"case when x_line.i = 1 then {base_id} else {base_id} || '#' || x_line.i end"
    select_list = ",\n        ".join(f"{expr} as {name}" for name, expr in exprs.items())
    src = _lit(source_name)
    elements, rows = "", "(select * from checked where reason is null)"
    if explode:
        column = quote_ident(explode)
        elements = (
            f", case when json_valid({column}) and json_type({column}) = 'ARRAY' "
            f"then json_extract({column}, '$[*]') end as x_elements"
        )
        # An empty array still gives the record's one event, with the element columns empty.
        rows = (
            "(select *, unnest(case when len(x_elements) > 0 "
            "then list_transform(x_elements, lambda x_e, x_i: {'i': x_i, 'e': x_e}) "
            "else [{'i': 1, 'e': null::json}] end) as x_line from checked where reason is null)"
        )
    return f"""
    with base as (
        select *, {exprs["occurred_at"]} as occurred_at_chk, {occurred_raw} as occurred_at_raw,
               {exprs["user_id"]} as user_id_chk, {exprs["anonymous_id"]} as anonymous_id_chk{elements}
        from {view}
    ),
    checked as materialized (  -- both branches read it: the checks run once
        select *, coalesce(shape_error, nullif(concat_ws('; ', {checks}), '')) as reason from base
    )
    select {select_list},
        {event_type} as event_type,
        {src} as source,
        source_file, source_line, null::varchar as raw_text, null::varchar as reason,
        {base_id} as base_event_id,
        {exprs["occurred_at"]} as dedup_ts
    from {rows} src
    union all by name
    select source_file, source_line, raw_text, reason
    from checked where reason is not null
    """


def _explode_column(
    mapping: StreamMapping, available: set[str], source_name: str, drift: str, warnings: list[str] | None
) -> str | None:
    """The column whose JSON array elements become events, if configured and present."""
    if not mapping.explode:
        return None
    if mapping.explode in available:
        return mapping.explode
    if drift == "load":
        if warnings is not None:
            warnings.append(
                f"{source_name}: column '{mapping.explode}' (explode) is missing from this batch; its element "
                "columns are loaded as empty, one event per record (schema_drift: load)"
            )
        return None
    raise ValueError(
        f"source '{source_name}': column '{mapping.explode}' (explode) is not in the data; columns present: "
        f"{', '.join(sorted(available)) or 'none'} (set the source's schema_drift: load to load the rest)"
    )


# Canonical columns that belong to the record, never to one element of an exploded array.
_RECORD_COLUMNS = ("event_id", "occurred_at", "user_id", "anonymous_id")


_SELECTOR = re.compile(r"\[([^=\]]+)=([^\]]*)\]")


def split_path(name: str) -> list[str]:
    """A dotted name's keys; ``[field=value]`` after a key is a key of its own, picking the
    element of that list whose ``field`` is ``value`` (dots inside the brackets stay):
    ``event_params[key=page_location].value.string_value`` (GA4's key-value lists)."""
    keys: list[str] = []
    for part in re.split(r"\.(?![^\[]*\])", name):
        selector = part.find("[")
        if selector > 0 and _SELECTOR.fullmatch(part[selector:]):
            keys += [part[:selector], part[selector:]]
        else:
            keys.append(part)
    return keys


def _json_path(keys: list[str], index: bool) -> str:
    steps = [
        "[*]" if k == "*" else f"[{k}]" if index and k.isdigit() else '."' + k.replace('"', '\\"') + '"' for k in keys
    ]
    return _lit("$" + "".join(steps))


def _json_text(document: str, keys: list[str]) -> str:
    """The text at ``keys`` inside the JSON ``document`` (SQL). A key of digits is a list
    index (``variants.0.price``) or, failing that, an object key; a ``[field=value]`` key
    picks the first element of the list so far whose ``field`` is ``value``."""
    plain: list[str] = []
    for depth, key in enumerate(keys):
        picked = _SELECTOR.fullmatch(key)
        if not picked:
            plain.append(key)
            continue
        items = f"json_extract(json_extract({document}, {_json_path(plain, True)}), '$[*]')"
        field, value = picked.groups()
        element = f"x_pick{depth}"
        document = (
            f"list_filter({items}, lambda {element}: json_extract_string({element}, {_json_path([field], False)}) "
            f"= {_lit(value)})[1]"
        )
        plain = []
    if "*" in plain:
        # Every element's value, as a list (see nested_raw).
        return f"json_extract_string({document}, {_json_path(plain, True)})"
    paths = (
        [_json_path(plain, True), _json_path(plain, False)]
        if any(k.isdigit() for k in plain)
        else [_json_path(plain, False)]
    )
    found = ", ".join(f"json_extract_string({document}, {p})" for p in paths)
    return f"nullif(trim({found if len(paths) == 1 else f'coalesce({found})'}), '')"


def nested_column(source_col: str, available: set[str]) -> tuple[str, list[str]] | None:
    """For a dotted name that is not a column: the longest column it starts with (a Parquet
    struct, a JSON text column) and the keys to follow inside it (see :func:`split_path`)."""
    parts = split_path(source_col)
    for k in range(len(parts) - 1, 0, -1):
        if ".".join(parts[:k]) in available:
            return ".".join(parts[:k]), parts[k:]
    return None


def nested_raw(column: str, keys: list[str], many: bool = False) -> str:
    """The text at ``keys`` inside a JSON text column (nothing where the column is not JSON).
    A key ``*`` (``variants.*.price``) takes every element of a list: the texts come as a
    list, which only a caller that says it takes ``many`` (the catalog) can reduce."""
    if "*" in keys and not many:
        raise ValueError(
            f"'{'.'.join([column, *keys])}': '*' (every element of a list) is for catalog columns; "
            "an event takes one element (a number or [field=value]), or use explode for one event each"
        )
    col = quote_ident(column)
    return _json_text(f"case when json_valid({col}) then {col} end", keys)


def _element_expr(element: str, path: str, kind: str, label: str) -> tuple[str, str | None]:
    """A canonical column read from each array element (``path``: dotted keys inside the
    element), and the check that quarantines a record with an element of the wrong type."""

    def raw(e: str) -> str:
        return _json_text(e, split_path(path))

    if kind not in _CASTS:
        return raw(element), None
    bad = f"list_filter(x_elements, lambda x_e: {raw('x_e')} is not null and {_cast_sql(raw('x_e'), kind)} is null)"
    first_bad = f"list_transform({bad}, lambda x_e: {raw('x_e')})[1]"
    problem = f"case when len({bad}) > 0 then {_bad_value(label, kind, first_bad)} end"
    return _cast_sql(raw(element), kind), problem


def event_types_table(mapping: StreamMapping) -> pa.Table:
    return pa.table(
        {
            "source_value": pa.array(list(mapping.event_types), pa.string()),
            "event_type": pa.array(list(mapping.event_types.values()), pa.string()),
        }
    )


@dataclass
class SingerFile:
    """What Singer lines hold, split by message type; bad lines carry their reason.

    ``raw_records`` are (stream, record as JSON text, time_extracted as a UTC timestamp or
    None, file, line).
    """

    records: dict[str, TextRows] = field(default_factory=dict)
    raw_records: list[tuple[str, str, datetime | None, str, int]] = field(default_factory=list)
    schemas: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    states: list[tuple[str, str, int]] = field(default_factory=list)
    bad: list[tuple[str, int, str, str]] = field(default_factory=list)
    lines_read: int = 0


def read_times(con: Any, texts: set[str]) -> dict[str, datetime]:
    """The texts that read as timestamps, by the cast the warehouse uses everywhere, with
    their time (UTC: :func:`read_singer` sets the connection's time zone)."""
    if not texts:
        return {}
    name = f"times_{uuid.uuid4().hex[:12]}"
    con.register(name, pa.table({"t": pa.array(sorted(texts), pa.string())}))
    try:
        return dict(
            con.execute(
                f"select t, try_cast(t as timestamptz)::timestamp from {name} "
                "where try_cast(t as timestamptz) is not null"
            ).fetchall()
        )
    finally:
        con.unregister(name)


def parse_singer_lines(
    lines: list[tuple[int, str]], source_file: str, stream_default: str, con: Any, out: SingerFile | None = None
) -> SingerFile:
    """Split Singer lines (number, text) into SCHEMA, RECORD and STATE messages, one by one.

    Lines without a ``type`` are taken as bare records of the stream named by the file
    (as target-jsonl writes them). A RECORD's ``time_extracted`` must be a timestamp (by
    DuckDB's cast, on ``con``): otherwise the line is quarantined, never loaded with a
    wrong time. This is the reference reading; :func:`read_singer` gives the same on the
    lines it reads in bulk and sends the others here.
    """
    with gc_paused():
        return _parse_singer_lines(lines, source_file, stream_default, con, out if out is not None else SingerFile())


def _parse_singer_lines(
    lines: list[tuple[int, str]], source_file: str, stream_default: str, con: Any, out: SingerFile
) -> SingerFile:
    messages: list[tuple[int, str, Any]] = []
    for number, line in lines:
        out.lines_read += 1
        if not line.strip():
            out.bad.append((source_file, number, line, "empty line"))
            continue
        try:
            message = json.loads(line)
        except json.JSONDecodeError as exc:
            out.bad.append((source_file, number, line, f"invalid JSON: {exc.msg} at column {exc.colno}"))
            continue
        if not isinstance(message, dict):
            out.bad.append((source_file, number, line, "expected a JSON object"))
            continue
        messages.append((number, line, message))
    times = read_times(
        con,
        {
            m["time_extracted"]
            for _, _, m in messages
            if m.get("type") == "RECORD" and isinstance(m.get("time_extracted"), str)
        },
    )
    for number, line, message in messages:
        kind = message.get("type")
        if kind is None:
            message = {"type": "RECORD", "stream": stream_default, "record": message}
            kind = "RECORD"
        if kind == "RECORD":
            record, stream = message.get("record"), message.get("stream")
            if not isinstance(record, dict) or not isinstance(stream, str):
                out.bad.append((source_file, number, line, "RECORD without an object 'record' and a 'stream' name"))
                continue
            extracted = message.get("time_extracted")
            if extracted is not None and not (isinstance(extracted, str) and extracted in times):
                shown = extracted if isinstance(extracted, str) else json_text(extracted)
                out.bad.append((source_file, number, line, f"time_extracted: not a timestamp '{shown[:40]}'"))
                continue
            out.records.setdefault(stream, TextRows()).add(flatten(record), source_file, number, line, None)
            out.raw_records.append((stream, json_text(record), times.get(extracted), source_file, number))
        elif kind == "SCHEMA":
            if not isinstance(message.get("stream"), str) or not isinstance(message.get("schema"), dict):
                out.bad.append((source_file, number, line, "SCHEMA without a 'stream' and an object 'schema'"))
                continue
            out.schemas.append(
                (
                    message["stream"],
                    json.dumps(message["schema"]),
                    json.dumps(message.get("key_properties", [])),
                    source_file,
                    number,
                )
            )
        elif kind == "STATE":
            if "value" not in message:
                out.bad.append((source_file, number, line, "STATE without a 'value'"))
                continue
            out.states.append((json.dumps(message["value"]), source_file, number))
        elif kind in ("ACTIVATE_VERSION", "BATCH"):
            out.states.append((json.dumps(message), source_file, number))
        else:
            out.bad.append((source_file, number, line, f"unknown Singer message type {kind!r}"))
    return out


# What JSON text DuckDB (yyjson) reads or writes otherwise than Python's json: numbers
# Python writes in exponent form (1e+16, 1e-05) and DuckDB in full, or any exponent at
# all; NaN and Infinity (both read them, DuckDB also nan and inf); trailing commas (DuckDB
# accepts them); escaped control characters (\u001F against \u001f). A line with any of
# these (inside a string too: a false alarm costs only speed) is read by Python.
_PYTHON_ONLY = (
    r"[:,\[]\s*[-+]?([0-9]+(\.[0-9]*)?[eE]|[0-9]{16}|0\.0000|[nN][aA][nN]|[iI][nN][fF])"
    r"|,\s*[\]}]"
    r"|\\u00[01]|\\u007[fF]|\\[bf]"
)
# A key that cannot be a flattened column as Python names it (dots join the levels) or a
# JSON path of DuckDB's; such records are read by Python.
_ODD_KEY = r'^$|[."\\\x00-\x1f]'
_META_NAMES = set(META)
# Deeper objects than this are flattened by Python (a record like that is not an event).
_MAX_DEPTH = 16


@dataclass
class SingerRead:
    """A batch of Singer files: each stream's RECORDs as text columns (as :class:`TextRows`
    would make them), the records for ``raw.singer_records`` (stream, record, time_extracted
    as a UTC timestamp, source_file, source_line), control messages and bad lines."""

    records: dict[str, pa.Table]
    raw_records: pa.Table
    schemas: list[tuple[str, str, str, str, int]]
    states: list[tuple[str, str, int]]
    bad: list[tuple[str, int, str, str]]
    lines_read: int


def _lines_table(files: list[tuple[str, bytes, str]]) -> pa.Table:
    """Every physical line of the files (as :func:`insights.ingest.textio.split_lines` makes them) with its file,
    number and the file's default stream, split by Arrow rather than Python."""
    parts = []
    for path, data, stream in files:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
        lines = pc.split_pattern(pa.array([text], pa.large_string()), "\n").flatten()
        if text.endswith("\n"):
            lines = lines.slice(0, len(lines) - 1)
        if "\r" in text:
            lines = pc.replace_substring_regex(lines, "\r$", "")
        n = len(lines)
        parts.append(
            pa.table(
                {
                    "source_file": pa.repeat(pa.scalar(path, pa.string()), n),
                    "source_line": pa.array(np.arange(1, n + 1, dtype=np.int64)),
                    "line": lines,
                    "stream_default": pa.repeat(pa.scalar(stream, pa.string()), n),
                }
            )
        )
    return pa.concat_tables(parts)


def _key_path(prefix: str, key: str) -> str:
    return f'{prefix}."{key}"'


def _flatten_columns(con: Any, table: str, stream: str) -> list[tuple[str, str]]:
    """The flattened columns (dotted name, JSON path) of one stream's bulk records in
    ``table``, level by level, as :func:`flatten` names them; a record with a repeated or
    odd key, or nested deeper than ``_MAX_DEPTH``, is handed to Python on the way."""
    columns: list[tuple[str, str]] = []
    objects = [("", "$")]
    where = f"stream = {_lit(stream)} and state = 'bulk'"
    for depth in range(_MAX_DEPTH + 1):
        paths = "[" + ", ".join(_lit(p) for _, p in objects) + "]"
        if depth == _MAX_DEPTH:
            con.execute(
                f"update {table} set state = 'python' where {where} "
                f"and list_contains(json_type(record, {paths}), 'OBJECT')"
            )
            break
        # (json_keys gives an empty list where the path is no object, null where it is absent.)
        con.execute(
            f"""update {table} set state = 'python' where {where} and list_bool_or(list_transform(
                json_keys(record, {paths}), lambda k: len(k) <> len(list_distinct(k))
                or list_bool_or(list_transform(k, lambda x: regexp_matches(x, {_lit(_ODD_KEY)})))))"""
        )
        found = con.execute(
            f"""select distinct i, unnest(k) as key from (
                    select unnest(ks) as k, unnest(generate_series(1, len(ks))) as i
                    from (select json_keys(record, {paths}) as ks from {table} where {where}))
                order by i, key"""
        ).fetchall()
        level = [(objects[i - 1][0] + key, _key_path(objects[i - 1][1], key)) for i, key in found]
        columns += level
        if not level:
            break
        child_paths = "[" + ", ".join(_lit(p) for _, p in level) + "]"
        nested = con.execute(
            "select "
            + ", ".join(f"coalesce(bool_or(t[{i}] = 'OBJECT'), false)" for i in range(1, len(level) + 1))
            + f" from (select json_type(record, {child_paths}) as t from {table} where {where})"
        ).fetchone()
        objects = [(n + ".", p) for (n, p), deeper in zip(level, nested) if deeper]
        if not objects:
            break
    return columns


def _value_sql(v: str) -> str:
    """One flattened value as :func:`_to_text` writes it: strings as they are (empty is
    none), numbers and booleans as their JSON text, objects and lists as compact JSON."""
    return (
        f"case json_type({v}) when 'NULL' then null when 'VARCHAR' then nullif(json_extract_string({v}, '$'), '') "
        f"when 'OBJECT' then {v}::varchar when 'ARRAY' then {v}::varchar else json_extract_string({v}, '$') end"
    )


def read_singer(files: list[tuple[str, bytes, str]], con: Any, bulk: bool = True) -> SingerRead:
    """Singer files (path, contents, default stream) read in bulk by DuckDB on ``con`` (a
    cursor; only its temporary tables are written), with the same result as
    :func:`parse_singer_lines` line by line: every line is classified and every RECORD
    flattened in SQL, and the lines SQL would read otherwise than Python (see
    ``_PYTHON_ONLY``), the control messages and the bad lines go through Python.
    ``bulk=False`` reads every line in Python (the reference the tests compare with)."""
    name = f"singer_{uuid.uuid4().hex[:12]}"
    con.execute("set TimeZone = 'UTC'")
    con.register(f"{name}_lines", _lines_table(files))
    check = f"json_valid(line) and not regexp_matches(line, {_lit(_PYTHON_ONLY)})" if bulk else "false"
    try:
        con.execute(
            f"""
            create temp table {name} as
            with parsed as (
                select *, case when {check} then json_type(line) end as doc from {name}_lines
            ),
            message as (
                select *,
                    case when doc = 'OBJECT' then json_keys(line) end as top,
                    case when doc = 'OBJECT' then
                        json_extract(line, ['$.type', '$.stream', '$.record', '$.time_extracted']) end as x
                from parsed
            ),
            shaped as (
                select *,
                    case when top is null or len(top) <> len(list_distinct(top)) then null
                         when x[1] is null or x[1]::varchar = 'null' then 'bare'
                         when x[1]::varchar = '"RECORD"' and json_type(x[2]) = 'VARCHAR'
                              and json_type(x[3]) = 'OBJECT' then 'record' end as shape,
                    case when x[4] is not null and x[4]::varchar <> 'null' then x[4] end as extracted
                from message
            )
            select source_file, source_line, line, stream_default,
                case shape when 'bare' then stream_default when 'record' then json_extract_string(x[2], '$') end
                    as stream,
                case shape when 'bare' then json(line) when 'record' then x[3] end as record,
                case when shape = 'record' and json_type(extracted) = 'VARCHAR' then
                    try_cast(json_extract_string(extracted, '$') as timestamptz)::timestamp end as time_extracted,
                case when shape = 'record' and extracted is not null then
                    case when json_type(extracted) = 'VARCHAR' then json_extract_string(extracted, '$')
                         else extracted::varchar end end as extracted_text,
                case when shape is null then 'python'
                     when extracted_text is not null and time_extracted is null then 'bad'
                     else 'bulk' end as state
            from shaped
            """
        )
    finally:
        con.unregister(f"{name}_lines")
    try:
        return _read_singer_table(con, name)
    finally:
        con.execute(f"drop table if exists {name}")


def _read_singer_table(con: Any, name: str) -> SingerRead:
    bad: list[tuple[str, int, str, str]] = [
        (f, n, line, f"time_extracted: not a timestamp '{text[:40]}'")
        for f, n, line, text in con.execute(
            f"select source_file, source_line, line, extracted_text from {name} where state = 'bad'"
        ).fetchall()
    ]
    records: dict[str, list[pa.Table]] = {}
    streams = [s for (s,) in con.execute(f"select distinct stream from {name} where state = 'bulk'").fetchall()]
    for stream in sorted(streams):
        columns = [(n, p) for n, p in _flatten_columns(con, name, stream) if n not in _META_NAMES]
        values = (
            ", ".join(f"{_value_sql(f'v[{i}]')} as {quote_ident(n)}" for i, (n, _) in enumerate(columns, start=1))
            + ", "
            if columns
            else ""
        )
        paths = "[" + ", ".join(_lit(p) for _, p in columns) + "]"
        table = query_table(
            con,
            f"""select {values}source_file, source_line, line as raw_text, null::varchar as shape_error
                from (select *{f", json_extract(record, {paths}) as v" if columns else ""} from {name}
                      where stream = {_lit(stream)} and state = 'bulk')""",
        )
        records[stream] = [table]
    raw = query_table(
        con,
        f"""select stream, record::varchar as record, time_extracted, source_file, source_line
            from {name} where state = 'bulk'""",
    )
    # Everything SQL left: one by one, per file, in order.
    python = SingerFile()
    left = con.execute(
        f"""select source_file, list(source_line order by source_line), list(line order by source_line),
                   any_value(stream_default)
            from {name} where state = 'python' group by source_file order by source_file"""
    ).fetchall()
    for path, numbers, lines, stream_default in left:
        parse_singer_lines(list(zip(numbers, lines)), path, stream_default, con, python)
    for stream, rows in python.records.items():
        records.setdefault(stream, []).append(rows.to_arrow())
    if python.raw_records:
        streams_, texts, extracted, paths_, numbers_ = zip(*python.raw_records)
        raw = pa.concat_tables(
            [
                raw,
                pa.table(
                    {
                        "stream": pa.array(streams_, pa.string()),
                        "record": pa.array(texts, pa.string()),
                        "time_extracted": pa.array(extracted, raw.schema.field("time_extracted").type),
                        "source_file": pa.array(paths_, pa.string()),
                        "source_line": pa.array(numbers_, pa.int64()),
                    }
                ),
            ]
        )
    lines_read = con.execute(f"select count(*) from {name}").fetchone()[0]
    return SingerRead(
        records={s: pa.concat_tables(t, promote_options="permissive") for s, t in records.items()},
        raw_records=raw,
        schemas=python.schemas,
        states=python.states,
        bad=bad + python.bad,
        lines_read=lines_read,
    )
