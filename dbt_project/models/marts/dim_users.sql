{{ config(post_hook=["{{ record_build() }}"]) }}
-- depends_on: {{ ref('fct_events') }}, {{ ref('stg_insights__events') }}, {{ ref('stg_insights__catalog_items') }}
-- One row per user (stitched id) seen before the as-of instant: recency, frequency and
-- monetary value over 7/30/90 days and lifetime, sessions, engagement, funnel depth, price
-- band, favourite device and strongest affinities. The point-in-time features of the
-- learning step: nothing here uses an event at or after the as-of instant. An hourly
-- rebuild recomputes the users whose history changed or crossed a window's edge and brings
-- the others' rows to the new instant (macros/reuse.sql): the same rows as a full build.
{%- set previous = reusable_build() %}

with {% if previous %}{{ changed_users(previous, window_days=[7, 30, 90], day_window_days=[30]) }},{% endif %}

events as (

    {%- if previous %}
    {{ events_of_users('changed_users') | indent(4) }}
    {%- else %}
    select * from {{ ref('int_events_as_of') }}
    {%- endif %}

),

affinities as (

    select * from {{ ref('fct_user_affinities') }}

),

funnel as (

    {%- if previous %}
    -- int_funnel_user_days over the changed users' events.
    {{ funnel_user_days('events') | indent(4) }}
    {%- else %}
    select * from {{ ref('int_funnel_user_days') }}
    {%- endif %}

),

page_view_engagement as (

    select
        stitched_user_id as user_id,
        session_id,
        page_view_id,
        min(occurred_at) as started_at,
        {{ engaged_seconds("case when event_type = 'page_ping' then coalesce(dvce_created_tstamp, occurred_at) end") }}
            as engaged_seconds
    from events
    where page_view_id is not null and event_type in ('page_view', 'page_ping')
    group by all

),

engagement as (

    select
        user_id,
        sum(engaged_seconds) filter (where started_at >= {{ as_of() }} - to_days(30)) as engaged_seconds_30d,
        sum(engaged_seconds) filter (where started_at >= {{ as_of() }} - to_days(90)) as engaged_seconds_90d
    from page_view_engagement
    group by user_id

),

orders as (

    select
        stitched_user_id as user_id,
        coalesce(order_id, event_id) as order_id,
        min(occurred_at) as ordered_at,
        round(sum(coalesce(revenue, price * coalesce(quantity, 1), 0)), 2) as revenue
    from events
    where event_type = 'purchase'
    group by all

),

order_stats as (

    select
        user_id,
        count(*) filter (where ordered_at >= {{ as_of() }} - to_days(7)) as orders_7d,
        count(*) filter (where ordered_at >= {{ as_of() }} - to_days(30)) as orders_30d,
        count(*) filter (where ordered_at >= {{ as_of() }} - to_days(90)) as orders_90d,
        count(*) as orders_lifetime,
        coalesce(sum(revenue) filter (where ordered_at >= {{ as_of() }} - to_days(7)), 0) as revenue_7d,
        coalesce(sum(revenue) filter (where ordered_at >= {{ as_of() }} - to_days(30)), 0) as revenue_30d,
        coalesce(sum(revenue) filter (where ordered_at >= {{ as_of() }} - to_days(90)), 0) as revenue_90d,
        sum(revenue) as revenue_lifetime,
        max(ordered_at) as last_order_at
    from orders
    group by user_id

),

activity as (

    select
        stitched_user_id as user_id,
        min(occurred_at) as first_seen_at,
        max(occurred_at) as last_seen_at,
        count(*) filter (where occurred_at >= {{ as_of() }} - to_days(7)) as events_7d,
        count(*) filter (where occurred_at >= {{ as_of() }} - to_days(30)) as events_30d,
        count(*) filter (where occurred_at >= {{ as_of() }} - to_days(90)) as events_90d,
        count(*) filter (where event_type = 'page_view' and occurred_at >= {{ as_of() }} - to_days(30)) as page_views_30d,
        count(*) filter (where event_type = 'product_view' and occurred_at >= {{ as_of() }} - to_days(7)) as product_views_7d,
        count(*) filter (where event_type = 'product_view' and occurred_at >= {{ as_of() }} - to_days(30)) as product_views_30d,
        count(*) filter (where event_type = 'search' and occurred_at >= {{ as_of() }} - to_days(30)) as searches_30d,
        count(*) filter (where event_type = 'add_to_cart' and occurred_at >= {{ as_of() }} - to_days(7)) as add_to_carts_7d,
        count(*) filter (where event_type = 'add_to_cart' and occurred_at >= {{ as_of() }} - to_days(30)) as add_to_carts_30d,
        count(*) filter (where event_type = 'checkout' and occurred_at >= {{ as_of() }} - to_days(30)) as checkouts_30d,
        median(catalog_price) filter (where event_type in ('product_view', 'add_to_cart', 'purchase')) as median_item_price,
        bool_or(user_id is not null) as has_logged_in
    from events
    group by stitched_user_id

),

-- Sessions and active days in a window: each (user, session) and (user, day) once, with
-- its last event. Counting those is one pass; six count(distinct) were six.
user_sessions as (

    select stitched_user_id as user_id, session_id, max(occurred_at) as last_at
    from events
    where session_id is not null
    group by all

),

session_counts as (

    select
        user_id,
        count(*) filter (where last_at >= {{ as_of() }} - to_days(7)) as sessions_7d,
        count(*) filter (where last_at >= {{ as_of() }} - to_days(30)) as sessions_30d,
        count(*) filter (where last_at >= {{ as_of() }} - to_days(90)) as sessions_90d,
        count(*) as sessions_lifetime
    from user_sessions
    group by user_id

),

user_days as (

    select stitched_user_id as user_id, occurred_at::date as day, max(occurred_at) as last_at
    from events
    group by all

),

day_counts as (

    select
        user_id,
        count(*) filter (where last_at >= {{ as_of() }} - to_days(30)) as days_active_30d,
        count(*) filter (where last_at >= {{ as_of() }} - to_days(90)) as days_active_90d
    from user_days
    group by user_id

),

devices as (

    -- The most used device class; ties go to the alphabetically first, so reruns agree.
    select
        stitched_user_id as user_id,
        first(device_class order by events_on_device desc, device_class) as favourite_device
    from (
        select stitched_user_id, device_class, count(*) as events_on_device
        from events
        where device_class is not null
        group by stitched_user_id, device_class
    )
    group by stitched_user_id

),

price_bands as (

    select
        quantile_cont(price, 0.33) as budget_below,
        quantile_cont(price, 0.67) as premium_above
    from {{ ref('stg_insights__catalog_items') }}

),

funnel_depth as (

    select
        user_id,
        max(
            greatest(
                {%- for step in var('insights__funnel_steps') %}
                case when step_{{ loop.index }}_at is not null then {{ loop.index }} else 0 end{{ "," if not loop.last }}
                {%- endfor %}
            )
        ) as funnel_depth_30d
    from funnel
    where day >= ({{ as_of() }} - to_days(30))::date
    group by user_id

),

top_affinities as (

    select
        user_id,
        max(value) filter (where dimension = 'category' and rank = 1) as top_category,
        max(strength) filter (where dimension = 'category' and rank = 1) as top_category_strength,
        max(value) filter (where dimension = 'category_l1' and rank = 1) as top_category_l1,
        max(strength) filter (where dimension = 'category_l1' and rank = 1) as top_category_l1_strength,
        max(value) filter (where dimension = 'brand' and rank = 1) as top_brand,
        max(strength) filter (where dimension = 'brand' and rank = 1) as top_brand_strength,
        count(*) filter (where dimension = 'category') as categories_seen
    from affinities
    group by user_id

),

final as (

    select
        activity.user_id,
        {{ as_of() }} as as_of,
        activity.first_seen_at,
        activity.last_seen_at,
        {{ days_before_as_of('activity.last_seen_at') }} as recency_days,
        {{ days_before_as_of('activity.first_seen_at') }} as tenure_days,
        activity.events_7d,
        activity.events_30d,
        activity.events_90d,
        coalesce(session_counts.sessions_7d, 0) as sessions_7d,
        coalesce(session_counts.sessions_30d, 0) as sessions_30d,
        coalesce(session_counts.sessions_90d, 0) as sessions_90d,
        coalesce(session_counts.sessions_lifetime, 0) as sessions_lifetime,
        coalesce(day_counts.days_active_30d, 0) as days_active_30d,
        coalesce(day_counts.days_active_90d, 0) as days_active_90d,
        activity.page_views_30d,
        activity.product_views_7d,
        activity.product_views_30d,
        activity.searches_30d,
        activity.add_to_carts_7d,
        activity.add_to_carts_30d,
        activity.checkouts_30d,
        coalesce(engagement.engaged_seconds_30d, 0) as engaged_seconds_30d,
        coalesce(engagement.engaged_seconds_90d, 0) as engaged_seconds_90d,
        coalesce(order_stats.orders_7d, 0) as orders_7d,
        coalesce(order_stats.orders_30d, 0) as orders_30d,
        coalesce(order_stats.orders_90d, 0) as orders_90d,
        coalesce(order_stats.orders_lifetime, 0) as orders_lifetime,
        round(coalesce(order_stats.revenue_7d, 0), 2) as revenue_7d,
        round(coalesce(order_stats.revenue_30d, 0), 2) as revenue_30d,
        round(coalesce(order_stats.revenue_90d, 0), 2) as revenue_90d,
        round(coalesce(order_stats.revenue_lifetime, 0), 2) as revenue_lifetime,
        -- Sums of money are rounded to cents first: float sums depend on the order of rows.
        round(round(order_stats.revenue_lifetime, 2) / nullif(order_stats.orders_lifetime, 0), 2) as avg_order_value,
        order_stats.last_order_at,
        {{ days_before_as_of('order_stats.last_order_at') }} as days_since_last_order,
        coalesce(funnel_depth.funnel_depth_30d, 0) as funnel_depth_30d,
        round(activity.median_item_price, 2) as median_item_price,
        case
            when activity.median_item_price is null then null
            when activity.median_item_price < price_bands.budget_below then 'budget'
            when activity.median_item_price > price_bands.premium_above then 'premium'
            else 'mid'
        end as price_band,
        devices.favourite_device,
        activity.has_logged_in,
        -- top category, category_l1 and brand with their strengths
        top_affinities.* exclude (user_id, categories_seen),
        coalesce(top_affinities.categories_seen, 0) as categories_seen
    from activity
    cross join price_bands
    left join engagement using (user_id)
    left join order_stats using (user_id)
    left join funnel_depth using (user_id)
    left join top_affinities using (user_id)
    left join devices using (user_id)
    left join session_counts using (user_id)
    left join day_counts using (user_id)

)

select * from final
{%- if previous %}
union all by name
-- Everyone else: the previous build's row at the new instant (their counts cannot have
-- changed: no event of theirs came, went or crossed a window's edge) with today's top
-- affinities (every user's strengths move as their weights decay).
select
    previous.* exclude (
        as_of, recency_days, tenure_days, days_since_last_order, top_category, top_category_strength,
        top_category_l1, top_category_l1_strength, top_brand, top_brand_strength, categories_seen
    ),
    {{ as_of() }} as as_of,
    {{ days_before_as_of('previous.last_seen_at') }} as recency_days,
    {{ days_before_as_of('previous.first_seen_at') }} as tenure_days,
    {{ days_before_as_of('previous.last_order_at') }} as days_since_last_order,
    top_affinities.* exclude (user_id, categories_seen),
    coalesce(top_affinities.categories_seen, 0) as categories_seen
from {{ this }} as previous
left join top_affinities using (user_id)
where previous.user_id not in (select user_id from changed_users)
{%- endif %}
