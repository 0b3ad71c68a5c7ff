"""The warehouse models on the generated sample: point in time, incremental, planted truth."""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import pytest
import yaml

from insights.config import load_config
from insights.steps import parse_as_of
from insights.transform import (
    FEATURE_MODELS,
    DbtInvocation,
    TransformError,
    build_snapshots,
    run_dbt,
    run_dbt_many,
)
from tests.conftest import ROOT
from tests.helpers import query, transform

AS_OF = "2026-10-20"
FEATURE_TABLES = {
    "dim_users": "user_id",
    "dim_items": "item_id",
    "fct_user_affinities": "user_id, dimension, value",
    "fct_interactions": "user_id, item_id",
    "fct_funnel_daily": "day, step_number",
}
EVENT_TABLES = {
    "fct_events": "event_id",
    "fct_page_views": "page_view_id",
    "fct_sessions": "session_id",
    "dim_identity_map": "anonymous_id",
}


def _snapshot(folder: Path, tables: dict[str, str], drop: tuple[str, ...] = ("loaded_at",)) -> dict[str, list]:
    con = duckdb.connect(str(folder / "wh.duckdb"), read_only=True)
    try:
        out = {}
        for table, key in tables.items():
            columns = [
                c
                for (c,) in con.execute(
                    "select column_name from information_schema.columns where table_schema = 'main' and table_name = ? "
                    "order by ordinal_position",
                    [table],
                ).fetchall()
                if c not in drop
            ]
            out[table] = con.execute(f"select {', '.join(columns)} from main.{table} order by {key}").fetchall()
        return out
    finally:
        con.close()


def _execute(folder: Path, sql: str) -> None:
    con = duckdb.connect(str(folder / "wh.duckdb"))
    try:
        con.execute(sql)
    finally:
        con.close()


def test_features_ignore_events_after_as_of(sample_warehouse: Path) -> None:
    transform(sample_warehouse, AS_OF)
    with_future = _snapshot(sample_warehouse, FEATURE_TABLES)
    assert len(with_future["dim_users"]) > 100

    _execute(sample_warehouse, f"delete from raw.events where occurred_at >= '{AS_OF}'")
    transform(sample_warehouse, AS_OF, full_refresh=True)
    without_future = _snapshot(sample_warehouse, FEATURE_TABLES)

    for table in FEATURE_TABLES:
        assert without_future[table] == with_future[table], f"{table} differs when later events exist"


def test_bot_rate_drops_the_hours_of_a_burst_and_nothing_else(sample_warehouse: Path) -> None:
    # Probe sessions of a person's browser on a day of the sample: page views (counted) and
    # page pings (not counted). The rate: more than 20 counted events in the minute up to
    # some event of the session (insights__bot_max_events_per_minute).
    probes = {
        # 21 views in 40 s: their hour goes, with a later view in it; the next hour stays.
        "burst": [("10:10:00", 2, 21, "page_view"), ("10:55:00", 1, 1, "page_view"), ("11:05:00", 1, 1, "page_view")],
        # 20 views and 10 pings in the same minute: at the rate, not over it.
        "at-rate": [("10:10:00", 2, 20, "page_view"), ("10:10:01", 2, 10, "page_ping")],
        # 40 views a minute apart: more than 20 in all, at most 2 in any minute.
        "spread": [("10:00:00", 60, 40, "page_view")],
        # 21 views in the hour's last 30 s, then a ping in the next hour: the minute up to
        # the ping holds the 21 views, so its hour goes too, a view later in it included.
        "across": [("10:59:30", 1, 21, "page_view"), ("11:00:10", 1, 1, "page_ping"), ("11:20:00", 1, 1, "page_view")],
    }
    rows = [
        (f"probe-{name}-{run}-{i}", name, kind, f"2026-10-15 {start}", step * i)
        for name, runs in probes.items()
        for run, (start, step, count, kind) in enumerate(runs)
        for i in range(count)
    ]
    con = duckdb.connect(str(sample_warehouse / "wh.duckdb"))
    try:
        con.execute("create temp table probe (event_id varchar, name varchar, kind varchar, start varchar, secs int)")
        con.executemany("insert into probe values (?, ?, ?, ?, ?)", rows)
        con.execute(
            """
            insert into raw.events
            select template.* replace (
                probe.event_id as event_id, probe.kind as event_type, probe.kind as event_name,
                probe.at as occurred_at, probe.at as collector_tstamp, probe.at as dvce_created_tstamp,
                'probe-anon-' || probe.name as anonymous_id, null as user_id, 'probe-' || probe.name as session_id,
                probe.event_id as page_view_id, false as is_flagged_bot,
                'Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0' as useragent
            )
            from (select * from raw.events where event_type = 'page_view' order by event_id limit 1) as template
            cross join (select *, start::timestamp + to_seconds(secs) as at from probe) as probe
            """
        )
    finally:
        con.close()
    transform(sample_warehouse, "2026-11-01")
    kept = query(
        sample_warehouse,
        """
        select session_id, hour(occurred_at), count(*)
        from fct_events where session_id like 'probe-%' group by all order by all
        """,
    )
    assert kept == [("probe-at-rate", 10, 30), ("probe-burst", 11, 1), ("probe-spread", 10, 40)]


def test_incremental_run_equals_full_refresh(sample_warehouse: Path, tmp_path_factory) -> None:
    # Hold back the last week and a tenth of the earlier events (late arrivals, logins that
    # re-stitch earlier sessions), build, then load them as a new batch and run again.
    _execute(
        sample_warehouse,
        """
        create table raw.held_back as
            select * from raw.events
            where occurred_at >= '2026-10-25' or hash(event_id) % 10 = 0;
        delete from raw.events where event_id in (select event_id from raw.held_back);
        """,
    )
    transform(sample_warehouse, "2026-11-01")
    _execute(
        sample_warehouse,
        """
        insert into raw.events
            select * replace ((select max(loaded_at) from raw.events) + interval 1 day as loaded_at)
            from raw.held_back;
        drop table raw.held_back;
        """,
    )
    transform(sample_warehouse, "2026-11-01")
    incremental = _snapshot(sample_warehouse, EVENT_TABLES)
    assert _uncompressed(sample_warehouse) == UNCOMPRESSED

    transform(sample_warehouse, "2026-11-01")
    assert _snapshot(sample_warehouse, EVENT_TABLES) == incremental, "a second run changed something"

    transform(sample_warehouse, "2026-11-01", full_refresh=True)
    full = _snapshot(sample_warehouse, EVENT_TABLES)
    for table in EVENT_TABLES:
        assert len(incremental[table]) == len(full[table]), table
        assert incremental[table] == full[table], f"{table}: incremental differs from full refresh"
    assert _uncompressed(sample_warehouse) == UNCOMPRESSED


# The random ids stored without compression (macros/storage.sql, insights.warehouse).
UNCOMPRESSED = {
    "raw.events": ["event_id"],
    "main.fct_events": ["event_id"],
    "main.fct_page_views": ["page_view_id", "event_id"],
    "main.fct_sessions": [],
}


def _uncompressed(folder: Path) -> dict[str, list[str]]:
    """Per table, the columns its DDL stores without compression."""
    ddl = dict(query(folder, "select schema_name || '.' || table_name, sql from duckdb_tables()"))
    return {table: re.findall(r"(\w+) VARCHAR USING COMPRESSION Uncompressed", ddl[table]) for table in UNCOMPRESSED}


def _truth() -> list[dict]:
    with open(ROOT / "data_samples" / "truth" / "users.jsonl") as fh:
        return [json.loads(line) for line in fh]


def test_planted_truth_holds(sample_warehouse: Path) -> None:
    transform(sample_warehouse, "2026-11-01")
    truth = _truth()
    bot_ids = [a for t in truth if t["is_bot"] for a in t["anonymous_ids"]]
    human_ids = [a for t in truth if not t["is_bot"] for a in t["anonymous_ids"]]
    assert bot_ids

    raw_bot = query(
        sample_warehouse, "select count(*) from raw.events where anonymous_id in (select unnest(?))", [bot_ids]
    )
    kept_bot = query(
        sample_warehouse, "select count(*) from fct_events where anonymous_id in (select unnest(?))", [bot_ids]
    )
    assert raw_bot[0][0] > 1000 and kept_bot[0][0] == 0, "bot traffic survived"
    raw_human = query(
        sample_warehouse, "select count(*) from raw.events where anonymous_id in (select unnest(?))", [human_ids]
    )
    kept_human = query(
        sample_warehouse, "select count(*) from fct_events where anonymous_id in (select unnest(?))", [human_ids]
    )
    assert kept_human[0][0] >= 0.99 * raw_human[0][0], "people's events were removed as bots"

    # Stitching: every session of a cookie that ever logged in belongs to that person,
    # including the sessions before the login.
    owner = {a: t["account_id"] for t in truth if t["account_id"] for a in t["anonymous_ids"]}
    sessions = query(sample_warehouse, "select anonymous_id, user_id, logged_in_user_id from fct_sessions")
    identified = {a for a, _, logged in sessions if logged is not None}
    stitched = [(a, u) for a, u, _ in sessions if a in identified and a in owner]
    pre_login = [(a, u) for a, u, logged in sessions if a in identified and logged is None]
    assert stitched and pre_login, "the sample should contain logins after anonymous visits"
    assert all(u == owner[a] for a, u in stitched), "a session was stitched to the wrong user"
    assert all(u == owner.get(a) for a, u in pre_login)

    # Funnel counts never grow along the steps.
    rows = query(sample_warehouse, "select day, step_number, users, sessions from fct_funnel_daily order by 1, 2")
    by_day: dict = {}
    for day, _, users, sessions_count in rows:
        by_day.setdefault(day, []).append((users, sessions_count))
    assert by_day
    for steps in by_day.values():
        assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in zip(steps, steps[1:]))

    # The strongest top-level category matches the planted favourite for most active people.
    top = dict(query(sample_warehouse, "select user_id, top_category_l1 from dim_users where events_90d >= 20"))
    matches = [top[t["user_id"]] == t["top_category"] for t in truth if t["user_id"] in top and not t["is_bot"]]
    assert len(matches) > 100
    assert sum(matches) / len(matches) > 0.6


def test_funnel_day_with_nobody_at_a_step(sample_warehouse: Path) -> None:
    """A day on which nobody checked out is still a funnel day: the build passes, checkout
    converts 0 of the carts, and the purchase step's conversion from the previous step is
    undefined (null), not a failed test or a division by zero."""
    day = "2026-10-10"
    _execute(
        sample_warehouse,
        f"delete from raw.events where event_type in ('checkout', 'purchase') and occurred_at::date = '{day}'",
    )
    transform(sample_warehouse, AS_OF)
    rows = query(
        sample_warehouse,
        "select step, users, conversion_from_previous, conversion_from_first from fct_funnel_daily "
        "where day = ? order by step_number",
        [day],
    )
    assert [r[0] for r in rows] == ["product_view", "add_to_cart", "checkout", "purchase"]
    (_, viewers, _, _), (_, carts, cart_rate, _), checkout, purchase = rows
    assert viewers > 0 and carts > 0 and cart_rate == round(carts / viewers, 4)
    assert checkout[1:] == (0, 0.0, 0.0)
    assert purchase[1:] == (0, None, 0.0)


USER_TABLES = {
    "dim_users": "user_id",
    "fct_user_affinities": "user_id, dimension, value",
    "fct_funnel_daily": "day, step_number",
    "fct_interactions": "user_id, item_id",
}


def _rebuilt(folder: Path, model: str) -> bool:
    """Whether dbt's last build of ``model`` started from its previous build."""
    return (
        "changed_events"
        in (folder / "dbt" / "target" / "run" / "insights" / "models" / "marts" / f"{model}.sql").read_text()
    )


def test_hourly_rebuild_of_user_features_equals_full_build(sample_warehouse: Path) -> None:
    # The previous hour's build misses a tenth of the history (late events, logins that
    # re-stitch earlier visits, bot bursts) and everything after it; the next hour's batch
    # brings them. The rebuild must give exactly what a build from all events gives.
    first, second, third = "2026-10-28T10:00", "2026-10-28T11:00", "2026-10-29T00:00"
    _execute(
        sample_warehouse,
        f"""
        create table raw.held_back as
            select * from raw.events where occurred_at >= '{first}'::timestamp - interval 3 day or hash(event_id) % 10 = 0;
        delete from raw.events where event_id in (select event_id from raw.held_back);
        -- A funnel across midnight: viewed before it, carted after it; the build of the
        -- hour after midnight must recount the day before.
        insert into raw.held_back
            select * exclude (probe_at) replace (
                'probe-' || event_type as event_id, probe_at as occurred_at, probe_at as collector_tstamp,
                probe_at as dvce_created_tstamp, 'probe-anon' as anonymous_id, null as user_id,
                'probe-session' as session_id, 'probe-' || event_type as page_view_id
            )
            from (
                select *, case event_type when 'product_view' then timestamp '2026-10-28 23:50'
                    else timestamp '2026-10-29 00:10' end as probe_at
                from raw.events
                where event_type in ('product_view', 'add_to_cart')
                qualify row_number() over (partition by event_type order by event_id) = 1
            );
        -- A visitor who viewed on the 20th, as did the person they turn out to be on
        -- another device, logs in just after midnight on the 29th: the 20th's funnel
        -- then counts one person, not two.
        insert into raw.events
            select template.* replace (
                probe.event_id as event_id, probe.probe_at as occurred_at, probe.probe_at as collector_tstamp,
                probe.probe_at as dvce_created_tstamp, probe.anonymous_id as anonymous_id, probe.user_id as user_id,
                probe.session_id as session_id, probe.event_id as page_view_id
            )
            from (
                select * from raw.events where event_type = 'product_view' order by event_id limit 1
            ) as template cross join (
                values
                    ('probe-view', timestamp '2026-10-20 12:00', 'probe-anon-2', null, 'probe-s1'),
                    ('probe-other-device', timestamp '2026-10-20 15:00', 'probe-anon-3', 'probe-user', 'probe-s2'),
                    ('probe-login', timestamp '2026-10-29 00:30', 'probe-anon-2', 'probe-user', 'probe-s3')
            ) as probe(event_id, probe_at, anonymous_id, user_id, session_id);
        """,
    )
    transform(sample_warehouse, first)
    assert not _rebuilt(sample_warehouse, "dim_users")
    _execute(
        sample_warehouse,
        """
        insert into raw.events
            select * replace ((select max(loaded_at) from raw.events) + interval 1 hour as loaded_at)
            from raw.held_back;
        drop table raw.held_back;
        """,
    )
    # New events; a late one two hours later (so the next hour's rebuild looks back past
    # the first batch); then only the clock (windows' edges, decay, a funnel across midnight).
    for as_of in (second, third, "2026-10-29T01:00"):
        if as_of == third:
            _execute(
                sample_warehouse,
                """
                insert into raw.events
                    select * replace (
                        'late-one' as event_id, timestamp '2026-10-10 12:00' as occurred_at,
                        timestamp '2026-10-10 12:00' as collector_tstamp, timestamp '2026-10-10 12:00' as dvce_created_tstamp,
                        'late-anon' as anonymous_id, null as user_id, 'late-session' as session_id,
                        'late-page' as page_view_id, loaded_at + interval 2 hour as loaded_at
                    )
                    from raw.events where event_type = 'product_view' order by loaded_at desc, event_id limit 1
                """,
            )
        transform(sample_warehouse, as_of)
        assert all(_rebuilt(sample_warehouse, model) for model in USER_TABLES), (
            as_of,
            [_rebuilt(sample_warehouse, m) for m in USER_TABLES],
        )
        rebuilt = _snapshot(sample_warehouse, USER_TABLES)
        transform(sample_warehouse, as_of, full_refresh=True)
        assert not _rebuilt(sample_warehouse, "dim_users")
        full = _snapshot(sample_warehouse, USER_TABLES)
        for table in USER_TABLES:
            assert len(rebuilt[table]) == len(full[table]) > 100, table
            assert rebuilt[table] == full[table], f"{table} as of {as_of}: the rebuild differs from a full build"

    # In a new month the kept weights move to the new decay reference by one factor: equal
    # to a full build's to rounding (a float sum's last digits), not bit for bit.
    fourth = "2026-11-01T01:00"
    transform(sample_warehouse, fourth)
    assert _rebuilt(sample_warehouse, "fct_user_affinities")
    rebuilt = _snapshot(sample_warehouse, USER_TABLES)
    transform(sample_warehouse, fourth, full_refresh=True)
    full = _snapshot(sample_warehouse, USER_TABLES)
    for table in USER_TABLES:
        assert len(rebuilt[table]) == len(full[table]), table
        for mine, theirs in zip(rebuilt[table], full[table]):
            assert len(mine) == len(theirs)
            for a, b in zip(mine, theirs):
                if isinstance(a, float) and isinstance(b, float):
                    assert abs(a - b) <= 1.5e-6 + 1e-9 * abs(b), (table, mine, theirs)
                else:
                    assert a == b, (table, mine, theirs)

    # An earlier instant, or a changed catalog, builds from all events.
    transform(sample_warehouse, second)
    assert not _rebuilt(sample_warehouse, "dim_users")
    transform(sample_warehouse, third)
    assert _rebuilt(sample_warehouse, "dim_users")
    _execute(sample_warehouse, "update raw.catalog_items set price = price * 2 where hash(item_id) % 3 = 0")
    transform(sample_warehouse, third)
    assert not any(_rebuilt(sample_warehouse, model) for model in USER_TABLES)


def test_uniqueness_tests_check_each_load_against_every_row(sample_warehouse: Path) -> None:
    """An hourly build tests the event ids loaded since the previous build against the whole
    table, not the whole table against itself; a duplicate of an old row fails it."""
    transform(sample_warehouse, AS_OF)
    repeat_old_event = """
        insert into {table}
            select * replace ((select max(loaded_at) from {table}) + interval 1 hour as loaded_at)
            from {table}
            where event_id = (select min(event_id) from {table} where occurred_at < '2026-10-01')
    """
    _execute(sample_warehouse, repeat_old_event.format(table="raw.events"))
    with pytest.raises(TransformError, match="source_unique_since_last_build_raw_events_event_id__fct_events"):
        transform(sample_warehouse, AS_OF)

    # fct_events' own test (the source's is cleared): a row that reappears after the watermark.
    _execute(
        sample_warehouse,
        "delete from raw.events where loaded_at = (select max(loaded_at) from raw.events);"
        + repeat_old_event.format(table="main.fct_events"),
    )
    with pytest.raises(TransformError, match="unique_since_last_build_fct_events_event_id") as failed:
        transform(sample_warehouse, AS_OF)
    assert "source_unique" not in str(failed.value)

    # A duplicate among old rows is found when every row is tested (and by every full refresh).
    _execute(
        sample_warehouse,
        "delete from main.fct_events where loaded_at = (select max(loaded_at) from main.fct_events);"
        "insert into main.fct_events select * from main.fct_events "
        "where event_id = (select max(event_id) from main.fct_events where occurred_at < '2026-10-01')",
    )
    config = load_config(sample_warehouse / "insights.yml", environ={})
    as_of = parse_as_of(AS_OF)
    assert run_dbt(config, as_of, "test", select=["fct_events"]).tests  # the hourly test passes
    with pytest.raises(TransformError, match="unique_since_last_build_fct_events_event_id"):
        run_dbt(config, as_of, "test", select=["fct_events"], extra_vars={"insights__test_all_rows": True})


def test_view_columns_are_tested_for_nulls_in_each_load(sample_warehouse: Path) -> None:
    """The staging view's computed columns are tested on the rows not yet taken into
    fct_events; an old row is tested when every row is (and by every full refresh)."""
    transform(sample_warehouse, AS_OF)
    no_visitor = """
        insert into raw.events
            select * replace ('{event_id}' as event_id, null as anonymous_id, null as user_id,
                null as session_id, {loaded_at} as loaded_at)
            from raw.events
            where event_id = (select min(event_id) from raw.events where occurred_at < '2026-10-01')
    """
    _execute(sample_warehouse, no_visitor.format(event_id="new-1", loaded_at="now()::timestamp + interval 1 hour"))
    with pytest.raises(TransformError, match="not_null_since_last_build_stg_insights__events_visitor_id") as failed:
        transform(sample_warehouse, AS_OF)
    assert "scope_key" in str(failed.value)

    # The same row loaded long ago: the hourly test leaves it, a test of every row finds it.
    _execute(
        sample_warehouse,
        "delete from raw.events where event_id = 'new-1';"
        + no_visitor.format(event_id="old-1", loaded_at="(select min(loaded_at) from raw.events) - interval 1 day"),
    )
    config = load_config(sample_warehouse / "insights.yml", environ={})
    as_of = parse_as_of(AS_OF)
    assert run_dbt(config, as_of, "test", select=["stg_insights__events"]).tests
    with pytest.raises(TransformError, match="not_null_since_last_build_stg_insights__events_visitor_id"):
        run_dbt(config, as_of, "test", select=["stg_insights__events"], extra_vars={"insights__test_all_rows": True})


def test_unit_tests_run_when_asked_and_pass(sample_warehouse: Path) -> None:
    """A build leaves the dbt project's unit tests out (fixed fixtures: they check the SQL,
    not the data); ``transform.unit_tests`` or the argument runs them, and all pass."""
    defined = {
        f"{test['model']}.{test['name']}"
        for path in (ROOT / "dbt_project" / "models").rglob("*.yml")
        for test in (yaml.safe_load(path.read_text()) or {}).get("unit_tests", [])
    }
    assert len(defined) >= 9
    built = transform(sample_warehouse, AS_OF)
    assert built["tests"]["total"] > 40
    results = json.loads((sample_warehouse / "dbt" / "target" / "run_results.json").read_text())["results"]
    assert not [r for r in results if r["unique_id"].startswith("unit_test.")]

    as_of = parse_as_of(AS_OF)
    config = load_config(sample_warehouse / "insights.yml", environ={})
    assert run_dbt(config, as_of, "test", select=["test_type:unit"]).nodes == []
    asked = load_config(sample_warehouse / "insights.yml", environ={"INSIGHTS__TRANSFORM__UNIT_TESTS": "true"})
    for result in (
        run_dbt(asked, as_of, "test", select=["test_type:unit"]),
        run_dbt(config, as_of, "test", select=["test_type:unit"], unit_tests=True),
    ):
        unit = [n for n in result.nodes if n.kind == "unit_test"]
        assert {n.name for n in unit} == defined
        assert {n.status for n in unit} == {"pass"}


def test_snapshots_built_in_one_child_each_see_their_own_instant(sample_warehouse: Path) -> None:
    config = load_config(sample_warehouse / "insights.yml")
    transform(sample_warehouse, AS_OF)
    saved_parse = Path(config.resolve(config.warehouse.path)).parent / "dbt" / "target" / "partial_parse.msgpack"
    parsed_for_transform = saved_parse.read_bytes()
    first, second = parse_as_of("2026-10-06"), parse_as_of("2026-10-13")
    schemas = build_snapshots(config, {first: FEATURE_MODELS, second: None})
    # The snapshots' parse (other vars) keeps its state apart: the next transform can
    # still parse only what changed.
    assert saved_parse.read_bytes() == parsed_for_transform
    instants = {
        instant: query(sample_warehouse, f"select max(as_of), count(*) from {schema}.dim_users")[0]
        for instant, schema in schemas.items()
    }
    assert instants[first][0] == first and instants[second][0] == second
    assert 0 < instants[first][1] < instants[second][1]
    # Only the second instant asked for every snapshot model.
    tables = {
        (schema, table)
        for schema, table in query(
            sample_warehouse,
            "select table_schema, table_name from information_schema.tables where table_schema like 'pit_%'",
        )
    }
    assert (schemas[second], "fct_interactions") in tables and (schemas[first], "fct_interactions") not in tables
    # One parse serves both: its placeholder schema is never built, and main is untouched.
    assert not query(sample_warehouse, "select 1 from information_schema.schemata where schema_name = 'pit_parsed'")
    assert query(sample_warehouse, "select max(as_of) from main.dim_users")[0][0] == parse_as_of(AS_OF)
    # The commands run in order and stop at the first that fails, which the error names.
    later = parse_as_of("2026-10-16")
    bad = DbtInvocation(later, "run", select=["dim_users"], extra_args=["--no-such-flag"])
    with pytest.raises(TransformError, match="dbt run failed") as failed:
        run_dbt_many(config, [DbtInvocation(later, "run", select=["int_events_as_of"]), bad, bad])
    assert "no-such-flag" in str(failed.value)
