{{ config(unique_key='scope_key', uncompressed_columns=['event_id', 'page_view_id']) }}
-- Page views with engaged time from page pings (Snowplow's heartbeat definition),
-- de-duplicated on the page view id (the first page_view event of an id wins).

with events as not materialized (

    select * from {{ ref('fct_events') }}

),

identities as (

    select * from {{ ref('dim_identity_map') }}

),

{{ events_in_touched_scopes('events', restitch=true) }},

page_view_rows as not materialized (

    select
        coalesce(page_view_id, event_id) as page_view_id,
        event_id,
        session_id,
        scope_key,
        user_id,
        anonymous_id,
        occurred_at,
        dvce_created_tstamp,
        page_url,
        page_title,
        referrer,
        device_class
    from events_in_scope
    where event_type = 'page_view'

),

-- The first page_view event of an id wins (by time, then device time, then id).
{{ first_row_per_id('page_view_events', 'page_view_rows', 'page_view_id', 'occurred_at, dvce_created_tstamp, event_id', exclude='dvce_created_tstamp') }},

pings as (

    select
        page_view_id,
        session_id,
        max(occurred_at) as last_ping_at,
        {{ engaged_seconds('coalesce(dvce_created_tstamp, occurred_at)') }} as engaged_seconds
    from events_in_scope
    where event_type = 'page_ping' and page_view_id is not null
    group by page_view_id, session_id

),

scope_loads as (

    select scope_key, max(loaded_at) as loaded_at
    from events_in_scope
    group by scope_key

),

final as (

    select
        page_view_events.page_view_id,
        page_view_events.event_id,
        page_view_events.session_id,
        coalesce(identities.user_id, page_view_events.user_id, page_view_events.anonymous_id) as user_id,
        page_view_events.anonymous_id,
        row_number() over (
            partition by page_view_events.session_id
            order by page_view_events.occurred_at, page_view_events.event_id
        ) as page_view_in_session_index,
        page_view_events.occurred_at as started_at,
        greatest(page_view_events.occurred_at, coalesce(pings.last_ping_at, page_view_events.occurred_at)) as ended_at,
        coalesce(pings.engaged_seconds, 0) as engaged_seconds,
        epoch(greatest(page_view_events.occurred_at, coalesce(pings.last_ping_at, page_view_events.occurred_at)))
            - epoch(page_view_events.occurred_at) as absolute_seconds,
        page_view_events.page_url,
        page_view_events.page_title,
        page_view_events.referrer,
        page_view_events.device_class,
        page_view_events.scope_key,
        scope_loads.loaded_at
    from page_view_events
    left join pings
        on pings.page_view_id = page_view_events.page_view_id
        and pings.session_id = page_view_events.session_id
    left join scope_loads on scope_loads.scope_key = page_view_events.scope_key
    left join identities on identities.anonymous_id = page_view_events.anonymous_id

)

select * from final
