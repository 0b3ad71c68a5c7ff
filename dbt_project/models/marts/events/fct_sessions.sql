{{ config(unique_key='scope_key') }}
-- depends_on: {{ ref('fct_page_views') }}
-- (Built after fct_page_views, though it reads none of it: the two window over every event
-- and, side by side in one DuckDB, took about 20 s each at 10M events against 8 s alone.
-- Ordered, the full build went from 57.5-60.0 s to 52.4-52.6 s.)
-- Sessions with their stitched user. An incremental run recomputes the scopes that
-- received events, and those whose anonymous id was just identified (re-stitching the
-- visitor's earlier sessions to the user).

with events as not materialized (

    select * from {{ ref('fct_events') }}

),

identities as (

    select * from {{ ref('dim_identity_map') }}

),

{{ events_in_touched_scopes('events', restitch=true) }},

page_view_pings as (

    select
        session_id,
        page_view_id,
        {{ engaged_seconds('case when event_type = \'page_ping\' then coalesce(dvce_created_tstamp, occurred_at) end') }}
            as engaged_seconds
    from events_in_scope
    where event_type in ('page_view', 'page_ping') and page_view_id is not null
    group by session_id, page_view_id

),

session_engagement as (

    select session_id, sum(engaged_seconds) as engaged_seconds
    from page_view_pings
    group by session_id

),

session_events as (

    select
        session_id,
        any_value(scope_key) as scope_key,
        -- A page ping proves the page was open the minimum visit length before it.
        min(
            case when event_type = 'page_ping'
                then occurred_at - to_seconds({{ var('insights__min_visit_seconds') }})
                else occurred_at
            end
        ) as started_at,
        max(occurred_at) as ended_at,
        arg_min(anonymous_id, occurred_at) filter (where anonymous_id is not null) as anonymous_id,
        arg_min(user_id, occurred_at) filter (where user_id is not null) as logged_in_user_id,
        -- Distinct counts as len(list_distinct(list(...))) (see the engaged_seconds macro):
        -- DuckDB runs count(distinct) as one more group-by over every event and a join
        -- back: with the orders' one, 20.9 CPU-s for this model at 10M events against 9.5.
        coalesce(len(list_distinct(list(coalesce(page_view_id, event_id)) filter (
            where event_type = 'page_view' or (event_type = 'page_ping' and page_view_id is not null)
        ))), 0) as page_views,
        count(*) as total_events,
        count(*) filter (where event_type = 'product_view') as product_views,
        count(*) filter (where event_type = 'search') as searches,
        count(*) filter (where event_type = 'add_to_cart') as add_to_carts,
        count(*) filter (where event_type = 'remove_from_cart') as remove_from_carts,
        count(*) filter (where event_type = 'checkout') as checkouts,
        count(*) filter (where event_type = 'purchase') as purchases,
        count(*) filter (where event_type = 'page_ping') as page_pings,
        count(*) filter (where event_type = 'custom') as custom_events,
        round(coalesce(sum(revenue) filter (where event_type = 'purchase'), 0), 2) as revenue,
        coalesce(len(list_distinct(list(coalesce(order_id, event_id)) filter (where event_type = 'purchase'))), 0)
            as orders,
        bool_or(is_conversion) as converted,
        min(occurred_at) filter (where is_conversion) as converted_at,
        arg_min(page_url, occurred_at) filter (where event_type = 'page_view') as first_page_url,
        arg_min(page_title, occurred_at) filter (where event_type = 'page_view') as first_page_title,
        arg_max(page_url, occurred_at) filter (where event_type = 'page_view') as last_page_url,
        arg_max(page_title, occurred_at) filter (where event_type = 'page_view') as last_page_title,
        arg_min(referrer, occurred_at) filter (where event_type = 'page_view') as referrer,
        arg_min(refr_medium, occurred_at) filter (where refr_medium is not null) as refr_medium,
        arg_min(refr_source, occurred_at) filter (where refr_source is not null) as refr_source,
        arg_min(mkt_medium, occurred_at) filter (where mkt_medium is not null) as mkt_medium,
        arg_min(mkt_source, occurred_at) filter (where mkt_source is not null) as mkt_source,
        arg_min(mkt_campaign, occurred_at) filter (where mkt_campaign is not null) as mkt_campaign,
        arg_min(device_class, occurred_at) filter (where device_class is not null) as device_class,
        any_value(source) as source,
        max(loaded_at) as loaded_at
    from events_in_scope
    group by session_id
    -- A visit has at least one page or commerce event; sessions of nothing but custom
    -- events (consent banners, background pings of other tools) are not visits.
    having count(*) filter (where event_type <> 'custom') > 0

),

final as (

    select
        session_events.session_id,
        coalesce(identities.user_id, session_events.logged_in_user_id, session_events.anonymous_id) as user_id,
        session_events.anonymous_id,
        session_events.logged_in_user_id,
        session_events.started_at,
        session_events.ended_at,
        epoch(session_events.ended_at) - epoch(session_events.started_at) as absolute_seconds,
        session_events.page_views,
        coalesce(session_engagement.engaged_seconds, 0) as engaged_seconds,
        session_events.page_views >= 2
            or coalesce(session_engagement.engaged_seconds, 0) >= 2 * {{ var('insights__heartbeat_seconds') }}
            or session_events.converted as is_engaged,
        session_events.converted,
        session_events.converted_at,
        session_events.total_events,
        session_events.product_views,
        session_events.searches,
        session_events.add_to_carts,
        session_events.remove_from_carts,
        session_events.checkouts,
        session_events.purchases,
        session_events.page_pings,
        session_events.custom_events,
        session_events.orders,
        session_events.revenue,
        session_events.first_page_url,
        session_events.first_page_title,
        session_events.last_page_url,
        session_events.last_page_title,
        session_events.referrer,
        session_events.refr_medium,
        session_events.refr_source,
        session_events.mkt_medium,
        session_events.mkt_source,
        session_events.mkt_campaign,
        session_events.device_class,
        session_events.source,
        session_events.scope_key,
        session_events.loaded_at
    from session_events
    left join session_engagement using (session_id)
    left join identities on identities.anonymous_id = session_events.anonymous_id

)

select * from final
