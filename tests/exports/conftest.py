"""A small hand-made warehouse with the scored tables the delivery step reads."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from insights.config import Config, load_config
from insights.warehouse import connect
from tests.conftest import write_config

CATEGORIES = ["Outdoor > Tents", "Outdoor > Backpacks", "Home > Kitchen", "Fashion > Shoes"]


def build_warehouse(path: Path, users: int = 60, items: int = 40) -> None:
    """Users u000.. (every third anonymous), items i000.. (i003 out of stock), ten
    recommendations each, similar items, trending lists, u001's purchases and cookies, and one model
    version."""
    con = duckdb.connect(str(path))
    con.execute(
        f"""
        create table main.dim_items as
        select printf('i%03d', i) as item_id, 'Item ' || i as title,
            ['{"','".join(CATEGORIES)}'][i % 4 + 1] as category,
            split_part(['{"','".join(CATEGORIES)}'][i % 4 + 1], ' > ', 1) as category_l1,
            'Brand' || (i % 3) as brand, 10.0 + i as price, i != 3 as in_stock
        from range({items}) t(i);
        create table main.user_insights as
        select case when u % 3 = 0 then printf('anon-%03d', u) else printf('u%03d', u) end as user_id,
            timestamp '2026-11-01' as as_of,
            timestamp '2026-09-01' + to_days(u % 30) as first_seen_at,
            timestamp '2026-10-31' - to_days(u % 40) as last_seen_at,
            (u % 40)::double as recency_days, (u % 7)::bigint as sessions_90d, (u % 4)::bigint as orders_90d,
            (u % 4) * 25.0 as revenue_90d, case when u % 4 > 0 then 25.0 end as avg_order_value,
            [{{'dimension': 'category', 'value': split_part(['{"','".join(CATEGORIES)}'][u % 4 + 1], ' > ', 1),
               'strength': round(0.2 + (u % 5) / 6, 2)}},
             {{'dimension': 'brand', 'value': 'Brand' || (u % 3), 'strength': 0.25}}] as top_interests,
            [{{'item_id': printf('i%03d', (u + 1) % {items}), 'score': 0.9}},
             {{'item_id': printf('i%03d', (u + 2) % {items}), 'score': 0.8}}] as recommended_items,
            u / {users}.0 as purchase_probability, round(100.0 * u / {users}, 2) as purchase_percentile,
            (({users} - u) / {users}.0) as churn_probability, (u % 10) * 10.0 as predicted_revenue,
            ['Champions', 'At risk', 'Prospect', 'Lost'][u % 4 + 1] as segment,
            case when u >= {users} * 0.8 then ['Ready to buy'] else [] end::varchar[] as cohorts,
            'lightgbm' as propensity_method, (u % 4)::bigint as orders_lifetime, (u % 4) * 30.0 as revenue_lifetime,
            (u % 5)::bigint as sessions_30d, case when u % 4 > 0 then (u % 40)::double end as days_since_last_order,
            ['{"','".join(CATEGORIES)}'][u % 4 + 1] as top_category, 'Brand' || (u % 3) as top_brand,
            'mid' as price_band, 'Desktop' as favourite_device, u % 3 != 0 as is_identified,
            'v1' as model_version
        from range({users}) t(u);
        create table main.recommendations as
        select user_id, r as rank, printf('i%03d', (hash(user_id) + r * 7) % {items}) as item_id,
            1.0 - r / 20.0 as score, 'collaborative' as reason
        from main.user_insights, range(1, 11) t(r);
        create table main.item_similar as
        select item_id, r as rank, printf('i%03d', (i + r) % {items}) as similar_item_id, 1.0 - r / 20.0 as score
        from (select item_id, row_number() over (order by item_id) - 1 as i from main.dim_items), range(1, 6) t(r);
        create table main.trending as
        select 'global' as scope, r as rank, printf('i%03d', r - 1) as item_id, 100.0 - r as score
        from range(1, 21) t(r);
        -- u001 bought i000 and i005 (trending's first and sixth), u002 viewed i000.
        create table main.fct_interactions as
        select * from (values ('u001', 'i000', 6.0, 2::bigint), ('u001', 'i005', 6.0, 1), ('u002', 'i000', 1.0, 0))
            t(user_id, item_id, weight, purchases);
        -- u001 was stitched from two cookies; cookie-x stitched to a user with no list.
        create table main.dim_identity_map as
        select * from (values ('cookie-a', 'u001'), ('cookie-b', 'u001'), ('cookie-x', 'someone-else'))
            t(anonymous_id, user_id);
        create table main.user_interests as
        select user_id, 1::bigint as rank, 'category' as dimension, top_category as value, 0.5 as strength
        from main.user_insights;
        create schema ml;
        create table ml.model_versions as select 'v1' as model_version, now()::timestamp as trained_at,
            timestamp '2026-11-01' as as_of, timestamp '2026-08-01' as data_start, timestamp '2026-11-01' as data_end,
            '{{}}'::json as params, '{{}}'::json as metrics, 'published' as status, 'first' as reason, '' as path;
        """
    )
    con.close()


@pytest.fixture
def small(tmp_path: Path) -> Config:
    """Config over a fresh hand-made warehouse; outputs go below tmp_path."""
    build_warehouse(tmp_path / "wh.duckdb")
    path = write_config(
        tmp_path,
        [{"name": "catalog", "kind": "catalog", "path": str(tmp_path)}],
        datastore={"uri": str(tmp_path / "datastore"), "retention": 2},
        cohorts={"out_dir": str(tmp_path / "cohorts_out"), "folder": None},
        segment={"dry_run_path": str(tmp_path / "segment.jsonl")},
        serving={"path": str(tmp_path / "recs.sqlite")},
    )
    return load_config(path, environ={})


def on_s3(config: Config, endpoint: str, monkeypatch: pytest.MonkeyPatch, uri: str, **datastore: object) -> Config:
    """``config`` with its datastore at ``uri`` on the local S3 server (its bucket made)."""
    import boto3

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    bucket = uri.removeprefix("s3://").split("/")[0]
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return config.model_copy(
        update={
            "s3": config.s3.model_copy(update={"endpoint_url": endpoint}),
            "datastore": config.datastore.model_copy(update={"uri": uri, **datastore}),
        }
    )


def rows(config: Config, sql: str) -> list[tuple]:
    """The rows of a query on the warehouse of ``config``, opened read-only."""
    con = connect(config, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
