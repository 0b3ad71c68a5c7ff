{{ config(unique_key='scope_key', uncompressed_columns=['event_id']) }}
{#- The events a bot's rate counts: views and searches, not page pings or custom events. -#}
{%- set counted = "event_type not in ('page_ping', 'custom')" %}
-- Clean events: app filter, bots, late arrivals and runaway sessions removed, duplicates
-- collapsed, every event in a session. An incremental run recomputes each scope (tracker
-- session, or visitor history when the source has no sessions) that received an event
-- since the last run, so its result equals a full refresh.

-- Speed: the wide rows (30+ columns) never go through a window or a materialised CTE. The
-- windows (bot rate, derived sessions) run over narrow projections and come back by join,
-- and the wide CTEs are NOT MATERIALIZED, so DuckDB streams them instead of copying (and
-- spilling) every event; the scans they repeat are columnar and cheap.
with events as not materialized (

    select * from {{ ref('stg_insights__events') }}
    {% if var('insights__app_ids') | length > 0 %}
    where app_id in (
        {%- for app in var('insights__app_ids') %}'{{ app | replace("'", "''") }}'{{ ", " if not loop.last }}{% endfor -%}
    )
    {% endif %}

),

{{ events_in_touched_scopes('events') }},

-- The earliest collector time wins, as in Snowplow's models; then the earliest loaded.
{{ first_row_per_id('deduplicated', 'events_in_scope', 'event_id', 'collector_tstamp nulls last, loaded_at, occurred_at') }},

busy_scopes as materialized (

    -- Only a scope with more counted events in all than the rate allows a minute can reach
    -- it in some minute: the window below runs over these scopes alone (at 10M events, a
    -- third of the events; fct_events built alone 28.7-29.8 -> 22.9-26.3 CPU-s, same rows).
    select scope_key
    from deduplicated
    where {{ counted }}
    group by scope_key
    having count(*) > {{ var('insights__bot_max_events_per_minute') }}

),

bot_hours as materialized (

    -- The clock hours of a scope with a bot's rate: more views and searches in the minute
    -- up to some event than a person makes. The whole hour goes: its other requests are
    -- the same crawler, and hour-aligned as-of instants see whole hours.
    select scope_key, hour
    from (
        select
            scope_key,
            date_trunc('hour', occurred_at) as hour,
            count(*) filter (where counts) over (
                partition by scope_key
                order by occurred_at
                range between interval 60 second preceding and current row
            ) as events_last_minute
        from (
            select scope_key, occurred_at, {{ counted }} as counts
            from deduplicated semi join busy_scopes using (scope_key)
        )
    )
    group by scope_key, hour
    having max(events_last_minute) > {{ var('insights__bot_max_events_per_minute') }}

),

bot_agents as materialized (

    -- Agents are few and repeat: match the pattern once per distinct agent. The match runs
    -- in a lambda over the list of agents: as a filter on `select distinct useragent`,
    -- DuckDB pushed it below the distinct and matched every event (3.9 of 37 CPU-s of a
    -- full build at 10M events).
    select unnest(list_filter(list(distinct useragent), lambda a: regexp_matches(a, {{ bot_useragent_pattern() }})))
        as useragent
    from deduplicated

),

kept as not materialized (

    select deduplicated.*
    from deduplicated
    anti join bot_hours
        on bot_hours.scope_key = deduplicated.scope_key
        and bot_hours.hour = date_trunc('hour', deduplicated.occurred_at)
    anti join bot_agents on bot_agents.useragent = deduplicated.useragent
    where not is_flagged_bot
        and not coalesce(
            collector_tstamp > dvce_created_tstamp + to_seconds(86400 * {{ var('insights__days_late_allowed') }}),
            false
        )
        -- Snowplow's web tracker attaches the page context to every event; one without it
        -- cannot be placed on a page view, and Snowplow's models leave it out too.
        and not coalesce(source_kind like 'snowplow%' and platform = 'web' and page_view_id is null, false)

),

derived_sessions as materialized (

    -- Sessions for sources without a tracker session id: a new one after the timeout.
    select
        event_id,
        md5(visitor_id || '#' || sum(starts_session) over (
            partition by scope_key order by occurred_at, event_id rows unbounded preceding
        )::varchar) as derived_session_id
    from (
        select
            event_id,
            visitor_id,
            scope_key,
            occurred_at,
            case
                when lag(occurred_at) over visitor_timeline is null then 1
                when occurred_at - lag(occurred_at) over visitor_timeline
                    > to_minutes({{ var('insights__session_timeout_minutes') }}) then 1
                else 0
            end as starts_session
        from kept
        where tracker_session_id is null
        window visitor_timeline as (partition by scope_key order by occurred_at, event_id)
    )

),

sessionized as not materialized (

    select kept.*, coalesce(kept.tracker_session_id, derived_sessions.derived_session_id) as session_id
    from kept
    left join derived_sessions
        on kept.tracker_session_id is null
        and derived_sessions.event_id = kept.event_id

),

session_starts as materialized (

    select session_id, min(occurred_at) as session_started_at
    from sessionized
    group by session_id

),

capped as not materialized (

    select sessionized.*, session_starts.session_started_at
    from sessionized
    inner join session_starts using (session_id)

),

final as (

    select
        event_id,
        event_type,
        event_name,
        occurred_at,
        user_id,
        anonymous_id,
        visitor_id,
        session_id,
        scope_key,
        item_id,
        quantity,
        price,
        revenue,
        currency,
        order_id,
        search_query,
        page_url,
        page_title,
        page_urlpath,
        referrer,
        refr_medium,
        refr_source,
        mkt_medium,
        mkt_source,
        mkt_campaign,
        source,
        app_id,
        page_view_id,
        device_class,
        dvce_created_tstamp,
        collector_tstamp,
        {{ is_conversion() }} as is_conversion,
        source_kind,
        loaded_at
    from capped
    where occurred_at <= session_started_at + to_seconds(86400 * {{ var('insights__max_session_days') }})

)

select * from final
