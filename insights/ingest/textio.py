"""Reading text files line by line while keeping each line's number and exact text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date, datetime, time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from insights.timing import gc_paused


def split_lines(text: str) -> list[str]:
    """Physical lines; a final newline ends the last line rather than starting a new one."""
    lines = text.split("\n")
    if text.endswith("\n"):
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def csv_rows(text: str) -> tuple[list[str], Iterator[tuple[int, str, list[str]]]]:
    """The header and, for each record, its first line number, raw text and fields.

    Quoted fields may span lines; the raw text then holds all of them.
    """
    physical = split_lines(text)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, [])

    def rows() -> Iterator[tuple[int, str, list[str]]]:
        last = reader.line_num
        for row in reader:
            start, last = last + 1, reader.line_num
            yield start, "\n".join(physical[start - 1 : last]), row

    return header, rows()


def read_table_file(data: bytes, source_file: str) -> pa.Table:
    """A Parquet file (nested columns, such as an atomic export's shredded contexts, as JSON
    text) or a CSV file (header row, exact line numbers) as text columns with each row's
    origin (:func:`parquet_text_table`, :func:`csv_table`)."""
    if data[:4] == b"PAR1":
        return parquet_text_table(data, source_file)
    return csv_table(data, source_file)


def csv_table(data: bytes, source_file: str) -> pa.Table:
    """A CSV file (header row) as text columns, empty values as none, with each record's
    origin: file, first line number, raw text, and a shape error for an empty line or a
    record whose field count differs from the header's (its values are not guessed at).
    Columns are built whole from the parsed records, not value by value. A name the header
    repeats holds the last such column, as a mapping by name would read it."""
    with gc_paused():
        return _csv_table(data, source_file)


def _csv_table(data: bytes, source_file: str) -> pa.Table:
    header, records = csv_rows(data.decode("utf-8", errors="replace"))
    width = len(header)
    good: list[list[str]] = []
    lines: list[int] = []
    raws: list[str] = []
    bad_lines: list[int] = []
    bad_raws: list[str] = []
    errors: list[str] = []
    for start, raw, row in records:
        if row and len(row) == width:
            good.append(row)
            lines.append(start)
            raws.append(raw)
        else:
            bad_lines.append(start)
            bad_raws.append(raw)
            errors.append("empty line" if not row else f"expected {width} comma-separated fields, found {len(row)}")
    n, none = len(good), pa.scalar(None, pa.string())
    columns: dict[str, pa.Array] = {}
    for name, values in zip(header, zip(*good) if good else [()] * width):
        text = pa.array(values, pa.string())
        columns[name] = pa.concat_arrays(
            [pc.if_else(pc.equal(text, ""), none, text), pa.nulls(len(bad_lines), pa.string())]
        )
    return pa.table(
        {
            **columns,
            "source_file": pa.array([source_file] * (n + len(bad_lines)), pa.string()),
            "source_line": pa.array(lines + bad_lines, pa.int64()),
            "raw_text": pa.array(raws + bad_raws, pa.string()),
            "shape_error": pa.array([None] * n + errors, pa.string()),
        }
    )


def quote_ident(name: str) -> str:
    """A SQL identifier, quoted so any column name from a file or config is data, not SQL."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A SQL string literal, quoted so any text from a file or config is data, not SQL."""
    return "'" + value.replace("'", "''") + "'"


def _json_value(value: Any) -> Any:
    """What JSON cannot hold, as Parquet's nested values bring it: times and dates in ISO
    form, decimals as their exact text, bytes as text."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def json_text(value: Any) -> str:
    """A nested value (dict, list) as compact JSON text."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_json_value)


def text_column(column: pa.ChunkedArray | pa.Array) -> pa.Array | pa.ChunkedArray:
    """A Parquet column as text: nested values (structs, lists, maps) as JSON, the rest cast."""
    if pa.types.is_nested(column.type):
        return pa.array([None if v is None else json_text(v) for v in column.to_pylist()], pa.string())
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return pa.array([None if v is None else _json_value(v) for v in column.to_pylist()], pa.string())
    return column.cast(pa.string())


def parquet_text_table(data: bytes, source_file: str) -> pa.Table:
    """A Parquet file as text columns (:func:`text_column`) with each row's origin: file,
    row number and the row as JSON text (what quarantine keeps)."""
    table = pq.read_table(io.BytesIO(data))
    table = pa.table({name: text_column(table.column(name)) for name in table.column_names})
    n = table.num_rows
    raws = [json.dumps(row, ensure_ascii=False) for row in table.to_pylist()]
    return (
        table.append_column("source_file", pa.array([source_file] * n, pa.string()))
        .append_column("source_line", pa.array(range(1, n + 1), pa.int64()))
        .append_column("raw_text", pa.array(raws, pa.string()))
        .append_column("shape_error", pa.nulls(n, pa.string()))
    )
