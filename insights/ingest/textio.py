"""Reading text files line by line while keeping each line's number and exact text."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator


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
