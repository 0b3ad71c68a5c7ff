"""The list columns of user_insights, built in Arrow from rows of (user, rank, ...)."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pytest

from models_ml.pipeline import _lists_by_user

ROWS = [
    ("u2", 1, "b", 0.9),
    ("u2", 2, "a", 0.5),
    ("u10", 1, "c", 0.7),
    ("u1", 1, "a", 0.8),
    ("u1", 2, "c", 0.6),
    ("u1", 3, "b", 0.1),
]


def _expected(rows: list[tuple]) -> list[tuple]:
    """What DuckDB's list(... order by rank) per user gives."""
    con = duckdb.connect()
    con.execute("create table t (user_id varchar, rank bigint, item_id varchar, score double)")
    if rows:
        con.executemany("insert into t values (?, ?, ?, ?)", rows)
    return con.execute(
        "select user_id, list({'item_id': item_id, 'score': score} order by rank) from t group by user_id order by 1"
    ).fetchall()


def _lists(rows: list[tuple]) -> list[tuple]:
    table = pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.string()),
            "rank": pa.array([r[1] for r in rows], pa.int64()),
            "item_id": pa.array([r[2] for r in rows], pa.string()),
            "score": pa.array([r[3] for r in rows], pa.float64()),
        }
    )
    out = _lists_by_user(table, ["item_id", "score"], "recommended_items")
    assert out.column_names == ["user_id", "recommended_items"]
    return sorted(
        (u, items) for u, items in zip(out.column("user_id").to_pylist(), out.column("recommended_items").to_pylist())
    )


@pytest.mark.parametrize(
    "rows",
    [
        sorted(ROWS, key=lambda r: (r[0], r[1])),  # as the scoring queries leave them
        ROWS,  # users out of order
        [ROWS[0], ROWS[3], ROWS[1], ROWS[4], ROWS[2], ROWS[5]],  # a user's rows apart
        sorted(ROWS, key=lambda r: (r[0], -r[1])),  # ranks out of order within a user
        ROWS[:1],
        [],
    ],
    ids=["sorted", "users-unsorted", "users-interleaved", "ranks-unsorted", "one-row", "empty"],
)
def test_lists_by_user_equal_duckdb_ordered_lists(rows: list[tuple]) -> None:
    assert _lists(rows) == [(u, items) for u, items in _expected(rows)]
