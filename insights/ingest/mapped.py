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
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from insights.config import CANONICAL_EVENT_TYPES, StreamMapping
from insights.ingest.textio import csv_rows, json_text, parquet_text_table, quote_ident, split_lines
from insights.ingest.textio import quote_literal as _lit
from insights.warehouse import CANONICAL_EVENT_COLUMNS

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


def read_table_file(data: bytes, source_file: str) -> pa.Table:
    """A CSV (header row) or Parquet file as text columns with row origins."""
    if data[:4] == b"PAR1":
        return parquet_text_table(data, source_file)
    rows = TextRows()
    header, records = csv_rows(data.decode("utf-8", errors="replace"))
    rows.columns = {name: [] for name in header}
    for start, raw, row in records:
        if not row:
            rows.add({}, source_file, start, raw, "empty line")
        elif len(row) != len(header):
            error = f"expected {len(header)} comma-separated fields, found {len(row)}"
            rows.add({}, source_file, start, raw, error)
        else:
            values = dict(zip(header, (v if v != "" else None for v in row)))
            rows.add(values, source_file, start, raw, None)
    return rows.to_arrow()


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
    """What one Singer file holds, split by message type; bad lines carry their reason."""

    records: dict[str, TextRows] = field(default_factory=dict)
    raw_records: list[tuple[str, str, str | None, str, int]] = field(default_factory=list)
    schemas: list[tuple[str, str, str, str, int]] = field(default_factory=list)
    states: list[tuple[str, str, int]] = field(default_factory=list)
    bad: list[tuple[str, int, str, str]] = field(default_factory=list)
    lines_read: int = 0


def parse_singer(text: str, source_file: str, stream_default: str) -> SingerFile:
    """Split Singer output into SCHEMA, RECORD and STATE messages.

    Lines without a ``type`` are taken as bare records of the stream named by the file
    (as target-jsonl writes them).
    """
    out = SingerFile()
    for number, line in enumerate(split_lines(text), start=1):
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
        kind = message.get("type")
        if kind is None:
            message = {"type": "RECORD", "stream": stream_default, "record": message}
            kind = "RECORD"
        if kind == "RECORD":
            record, stream = message.get("record"), message.get("stream")
            if not isinstance(record, dict) or not isinstance(stream, str):
                out.bad.append((source_file, number, line, "RECORD without an object 'record' and a 'stream' name"))
                continue
            out.records.setdefault(stream, TextRows()).add(flatten(record), source_file, number, line, None)
            out.raw_records.append((stream, json.dumps(record), message.get("time_extracted"), source_file, number))
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
