-- Canonical events with the columns the models use. IP addresses and other raw PII stay in
-- raw.events: nothing downstream of staging can leak them.
with source as (

    select * from {{ source('raw', 'events') }}

),

renamed as (

    select
        event_id,
        event_type,
        event_name,
        occurred_at,
        nullif(trim(user_id), '') as user_id,
        nullif(trim(anonymous_id), '') as anonymous_id,
        coalesce(nullif(trim(anonymous_id), ''), nullif(trim(user_id), '')) as visitor_id,
        {{ tracker_session_id() }} as tracker_session_id,
        -- The unit an incremental run recomputes whole: a tracker session, or the visitor's
        -- whole history when the source has no session id (sessions are derived then).
        case
            when nullif(trim(session_id), '') is not null then 's:' || {{ tracker_session_id() }}
            else 'v:' || coalesce(nullif(trim(anonymous_id), ''), nullif(trim(user_id), ''))
        end as scope_key,
        item_id,
        quantity,
        price,
        -- A purchase without a stated revenue (an export mapped with price and quantity only,
        -- an order's exploded line items) earns price x quantity, as Snowplow's products do.
        coalesce(revenue, case when event_type = 'purchase' then price * coalesce(quantity, 1) end) as revenue,
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
        platform,
        page_view_id,
        device_class,
        useragent,
        coalesce(is_flagged_bot, false) as is_flagged_bot,
        collector_tstamp,
        dvce_created_tstamp,
        source_kind,
        loaded_at
    from source

)

select * from renamed
