{#- Rebuilding the point-in-time models (dim_users, fct_user_affinities, fct_interactions,
    fct_funnel_daily) from their previous build. An hour later almost every user's rows
    change only through the clock: recency grows, decayed scores shrink by the same factor.
    A rebuild recomputes from events only the users (changed_users) or funnel days
    (changed_days) that may have changed, keeps or re-ages the other rows of the previous
    build, and gives the rows a full build gives.

    The previous build is reused only when nothing else can have changed: its as-of instant
    is not later than this one, the settings and the model's code are the same, and so is
    the catalog (prices, categories).
    Otherwise, with --full-refresh, without an explicit as-of instant, and in point-in-time
    snapshots, the model is built from all events. What a build saw is recorded in
    build_state.<model> by record_build(). -#}

{#- The decay reference: decayed weights are kept as seen from the first instant of the
    as-of month, and brought to the as-of instant by one factor per row. A weight seen from
    a fixed instant does not change when the clock moves, so a rebuild can keep it (and in
    a new month moves it to the new reference by one factor). -#}
{% macro decay_reference(instant=none) -%}
    date_trunc('month', {{ instant or as_of() }})
{%- endmacro %}

{#- The decay from instant `earlier` to instant `later`: 0.5 per half-life between them
    (above 1 when `later` is the earlier one). -#}
{% macro decay_between(earlier, later) -%}
    pow(0.5, (epoch({{ later }}) - epoch({{ earlier }})) / (86400.0 * {{ var('insights__half_life_days') }}))
{%- endmacro %}

{#- The decay of an event at `ts` seen from the decay reference (above 1 after it). -#}
{% macro decay_to_reference(ts) -%}
    {{ decay_between(ts, decay_reference()) }}
{%- endmacro %}

{#- The factor from the decay reference to the as-of instant. -#}
{% macro decay_from_reference() -%}
    {{ decay_between(decay_reference(), as_of()) }}
{%- endmacro %}

{#- A kept weight (`column`, seen from the decay reference of the `previous` build) seen from
    this build's reference: the same number within a month, moved by one factor across a
    month's end (rounded as the weights are). -#}
{% macro reference_moved(column, previous) -%}
    {%- set previous_reference = decay_reference("'" ~ previous.as_of ~ "'::timestamp") -%}
    case
        when {{ previous_reference }} = {{ decay_reference() }} then {{ column }}
        else round({{ column }} * {{ decay_between(previous_reference, decay_reference()) }}, 9)
    end
{%- endmacro %}

{#- Days from `ts` to the as-of instant, to the thousandth. -#}
{% macro days_before_as_of(ts) -%}
    round((epoch({{ as_of() }}) - epoch({{ ts }})) / 86400.0, 3)
{%- endmacro %}

{#- What must match for a build to be reused: every insights__ var but the instant, and
    this model's code (the version is raised when a macro's meaning changes). -#}
{% macro build_settings() -%}
    {%- set settings = {'version': 1, 'code': local_md5(model.raw_code)} -%}
    {%- for name in [
        'insights__app_ids', 'insights__session_timeout_minutes', 'insights__max_session_days',
        'insights__days_late_allowed', 'insights__heartbeat_seconds', 'insights__min_visit_seconds',
        'insights__bot_max_events_per_minute', 'insights__bot_useragent_pattern',
        'insights__conversion_event', 'insights__funnel_steps', 'insights__funnel_window_hours',
        'insights__half_life_days', 'insights__event_weights', 'insights__affinity_prior'
    ] -%}
        {%- do settings.update({name: var(name)}) -%}
    {%- endfor -%}
    {{- return(tojson(settings, sort_keys=true)) -}}
{%- endmacro %}

{#- The catalog as the user models see it: changed prices or categories rebuild them. -#}
{% macro catalog_fingerprint(catalog) -%}
    (select count(*)::varchar || ':' || coalesce(sum(hash(item_id, category, brand, price))::varchar, '') from {{ catalog }})
{%- endmacro %}

{#- The previous build of this model as {as_of, loaded_at} when this run may start from it;
    none when it must build from all events. -#}
{% macro reusable_build() -%}
    {%- set catalog = ref('stg_insights__catalog_items') -%}
    {#- A unit test has no `this`: it builds from its given rows. -#}
    {%- if not execute or this is none or flags.FULL_REFRESH or var('insights__snapshot_schema', none)
        or as_of_text() is none -%}
        {{- return(none) -}}
    {%- endif -%}
    {%- set state = adapter.get_relation(database=this.database, schema='build_state', identifier=this.identifier) -%}
    {%- set previous = adapter.get_relation(database=this.database, schema=this.schema, identifier=this.identifier) -%}
    {%- if state is none or previous is none -%}{{- return(none) -}}{%- endif -%}
    {%- set found = run_query(
        "select strftime(as_of, '%Y-%m-%d %H:%M:%S.%f'), strftime(loaded_at, '%Y-%m-%d %H:%M:%S.%f') from " ~ state
        ~ " where as_of <= " ~ as_of()
        ~ " and loaded_at is not null"
        ~ " and settings = '" ~ (build_settings() | replace("'", "''")) ~ "'"
        ~ " and catalog = " ~ catalog_fingerprint(catalog)
    ) -%}
    {%- if found.rows | length != 1 -%}{{- return(none) -}}{%- endif -%}
    {{- return({'as_of': found.rows[0][0], 'loaded_at': found.rows[0][1]}) -}}
{%- endmacro %}

{#- The post-hook that records what this build saw (none for snapshots: they are never
    rebuilt from). -#}
{% macro record_build() -%}
    {%- set catalog = ref('stg_insights__catalog_items') -%}
    {%- if var('insights__snapshot_schema', none) -%}
        select 1
    {%- else -%}
        create or replace table build_state.{{ this.identifier }} as
        select
            {{ as_of() }} as as_of,
            (select max(events.loaded_at) from {{ ref('fct_events') }} as events) as loaded_at,
            '{{ build_settings() | replace("'", "''") }}' as settings,
            {{ catalog_fingerprint(catalog) }} as catalog
    {%- endif -%}
{%- endmacro %}

{#- CTE `changed_events`: (anonymous id, user id, time) of every event that may have
    changed something since the previous build (`previous`, from reusable_build):
    - every event of a scope (tracker session, or visitor history) that received events
      since the previous build, old ones included: fct_events recomputed those scopes whole
      (duplicates, bots, late events), so their events may have gone as well as come;
    - every event in [previous as-of, as-of): it came into view;
    - every event that crossed the edge of a window of `window_days` days, or of the first
      day of a window of `day_window_days` days counted in whole days. -#}
{% macro changed_events(previous, window_days=[], day_window_days=[]) -%}
touched_scopes as (

    select distinct scope_key
    from {{ ref('stg_insights__events') }}
    where loaded_at > '{{ previous.loaded_at }}'::timestamp - to_seconds({{ var('insights__lookback_hours') }} * 3600)

),

changed_events as (

    select anonymous_id, user_id, occurred_at
    from {{ ref('stg_insights__events') }}
    where scope_key in (select scope_key from touched_scopes)
    union all
    select anonymous_id, user_id, occurred_at
    from {{ ref('fct_events') }}
    where (occurred_at >= '{{ previous.as_of }}'::timestamp and occurred_at < {{ as_of() }})
    {%- for days in window_days %}
        or (occurred_at >= '{{ previous.as_of }}'::timestamp - to_days({{ days }})
            and occurred_at < {{ as_of() }} - to_days({{ days }}))
    {%- endfor %}
    {%- for days in day_window_days %}
        or (occurred_at >= date_trunc('day', '{{ previous.as_of }}'::timestamp - to_days({{ days }}))
            and occurred_at < date_trunc('day', {{ as_of() }} - to_days({{ days }})))
    {%- endfor %}

)
{%- endmacro %}

{#- CTE `changed_users`: every stitched user whose rows may differ from the previous build:
    the people of changed_events (a superset is harmless, a user missed is not) and, with
    each anonymous id among them, every user id it was ever seen with: the person it is
    stitched to may have changed, and both lose or gain its history. -#}
{% macro changed_users(previous, window_days=[], day_window_days=[]) -%}
{{ changed_events(previous, window_days, day_window_days) }},

changed_users as (

    select anonymous_id as user_id from changed_events where anonymous_id is not null
    union
    select user_id from changed_events where user_id is not null
    union
    select user_id
    from {{ ref('fct_events') }}
    where user_id is not null
        and anonymous_id in (select anonymous_id from changed_events where anonymous_id is not null)

)
{%- endmacro %}

{#- int_events_as_of's rows of the stitched users in CTE `users` (a user_id column), read
    without stitching every event. An event is stitched to one of them when its anonymous
    id was last seen with one of them (so was seen with one), when it has no identity and
    its anonymous id is one of them, or when it has no anonymous id and its user id is one:
    those events are selected, stitched, and kept when their stitched id is one of them. -#}
{% macro events_of_users(users) -%}
select *
from (
    {{ events_as_of(
        "anonymous_id in (select user_id from " ~ users ~ ")"
        ~ " or anonymous_id in (select anonymous_id from " ~ ref('fct_events')
        ~ " where user_id in (select user_id from " ~ users ~ "))"
        ~ " or (anonymous_id is null and user_id in (select user_id from " ~ users ~ "))"
    ) | indent(4) }}
)
where stitched_user_id in (select user_id from {{ users }})
{%- endmacro %}

{#- CTE `changed_days`: every day whose funnel instances may differ from the previous build:
    the days of changed_events, the days on which an anonymous id that may now be stitched
    to another person shares a day with another visitor of its people, and the `reach` days
    before each (an instance starts up to a session's length and the funnel window before).

    An anonymous id seen logged in among changed_events keeps its person when it was only
    ever seen with one user id and a login of it before the previous as-of instant is in a
    scope that nothing touched: it was stitched to that user then and still is. Any other is
    re-stitched (a first login, another person, or its earlier login gone). Its user-day
    instances (keyed by person and day) change only on days when another visitor of one of
    its people (a user id it was seen with, or an anonymous id seen with one) has events
    too: on its other days the instance only changes its key. -#}
{% macro changed_days(previous, reach) -%}
{{ changed_events(previous) }},

-- Every CTE below reads fct_events through `in (a small set)`: the set is hashed, not
-- the 10M events.
login_candidates as (

    select distinct anonymous_id
    from changed_events
    where anonymous_id is not null and user_id is not null

),

-- Candidates logged in before the previous instant in a scope that nothing touched.
kept_logins as (

    select distinct anonymous_id
    from {{ ref('fct_events') }}
    where anonymous_id in (select anonymous_id from login_candidates)
        and user_id is not null
        and occurred_at < '{{ previous.as_of }}'::timestamp
        and scope_key not in (select scope_key from touched_scopes)

),

restitched as (

    select anonymous_id
    from {{ ref('stg_insights__events') }}
    where anonymous_id in (select anonymous_id from login_candidates)
    group by anonymous_id
    having count(distinct user_id) > 1
        or anonymous_id not in (select anonymous_id from kept_logins)

),

restitched_people as (

    select distinct anonymous_id, user_id
    from {{ ref('fct_events') }}
    where anonymous_id in (select anonymous_id from restitched) and user_id is not null

),

-- The visitors of those people: every anonymous id seen with one of their user ids.
people_visitors as (

    select distinct anonymous_id, user_id
    from {{ ref('fct_events') }}
    where user_id in (select user_id from restitched_people) and anonymous_id is not null

),

people_events as (

    select anonymous_id, user_id, occurred_at::date as day
    from {{ ref('fct_events') }}
    where user_id in (select user_id from restitched_people)
        or anonymous_id in (select anonymous_id from people_visitors)

),

-- (re-stitched anonymous id, day) on which another visitor of one of its people was active.
shared_days as (

    select people.anonymous_id, others.day
    from restitched_people as people
    inner join people_events as others
        on others.user_id = people.user_id and others.anonymous_id is distinct from people.anonymous_id
    union
    select people.anonymous_id, others.day
    from restitched_people as people
    inner join people_visitors as seen
        on seen.user_id = people.user_id and seen.anonymous_id <> people.anonymous_id
    inner join people_events as others on others.anonymous_id = seen.anonymous_id

),

changed_days as (

    select distinct (day - to_days(back.k))::date as day
    from (
        select occurred_at::date as day from changed_events
        union
        select own.day
        from people_events as own
        semi join shared_days using (anonymous_id, day)
    ) as touched
    cross join range(0, {{ reach + 1 }}) as back(k)

)
{%- endmacro %}
