"""Reading text files line by line while keeping each line's number and exact text."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import date, datetime, time
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


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
