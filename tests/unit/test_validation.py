"""The Great Expectations checks of a loaded batch, on the frame ingestion hands them."""

from __future__ import annotations

from datetime import UTC, datetime

import duckdb
import pandas as pd

from insights.config import ValidationConfig
from insights.ingest.validate import CATEGORICAL, VALIDATION_QUERY, validate_events, validation_frame
from insights.warehouse import query_frame

NOW = datetime(2026, 11, 1, 12, tzinfo=UTC)


def _batch() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("set TimeZone = 'UTC'")
    con.execute(
        """
        create table batch as select * from (values
            ('e1', 'page_view', timestamp '2026-10-31 10:00:00', 'u1', 'a1', null, null, null),
            ('e2', 'purchase', timestamp '2026-10-31 10:01:00', 'u1', 'a1', 20.0, 1.0, 20.0),
            ('e3', 'teleport', timestamp '2026-10-31 10:02:00', null, 'a2', null, null, null),
            ('e4', 'teleport', timestamp '2026-10-31 10:03:00', null, 'a2', null, null, null),
            ('e5', 'product_view', timestamp '2026-10-31 10:04:00', null, null, 15.0, null, null),
            ('e5', 'add_to_cart', timestamp '2026-10-31 10:05:00', 'u3', null, -4.0, 1.0, null),
            ('e7', 'search', timestamp '2031-01-01 00:00:00', 'u3', null, null, null, null),
            (null, 'custom', timestamp '2026-10-31 10:06:00', 'u3', 'a3', null, null, null)
        ) as t(event_id, event_type, occurred_at, user_id, anonymous_id, price, quantity, revenue)
        """
    )
    return con


def test_the_encoded_frame_gives_every_check_the_same_outcome_as_plain_strings() -> None:
    con = _batch()
    frame = validation_frame(con, "batch")
    assert all(isinstance(frame[c].dtype, pd.CategoricalDtype) for c in CATEGORICAL)
    config = ValidationConfig()
    encoded = validate_events(frame, config, NOW)
    plain = validate_events(query_frame(con, VALIDATION_QUERY.format(relation="batch")), config, NOW)
    assert encoded == plain
    failed = {r.name: (r.severity, r.unexpected_count, r.details) for r in encoded.results if not r.success}
    assert failed == {
        "event_id_not_null": ("error", 1, "e.g. nan"),
        "event_id_unique": ("error", 2, "e.g. e5, e5"),
        "event_type_allowed": ("error", 2, "e.g. teleport, teleport"),
        "has_identity": ("error", 1, "e.g. False"),
        "occurred_at_in_range": ("warning", 1, "e.g. 1924992000.0"),
        "occurred_at_mostly_in_range": ("error", 1, "e.g. 1924992000.0"),
        "price_non_negative": ("error", 1, "e.g. -4.0"),
    }
