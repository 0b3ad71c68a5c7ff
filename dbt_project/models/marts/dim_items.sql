-- One row per catalog item, as of the as-of instant: activity counts, conversion rate,
-- decayed popularity and a trending score (recent daily rate against the item's own
-- baseline), ranked globally and within the top-level category.
{%- set recent = var('insights__trending_recent_days') %}
{%- set baseline = var('insights__trending_baseline_days') %}

with items as (

    select * from {{ ref('stg_insights__catalog_items') }}
    where created_at is null or created_at < {{ as_of() }}

),

events as (

    select * from {{ ref('int_events_as_of') }}
    where item_id is not null
        and occurred_at >= {{ as_of() }} - to_days({{ baseline }})

),

activity as (

    select
        item_id,
        count(*) filter (where event_type = 'product_view' and occurred_at >= {{ as_of() }} - to_days(7)) as views_7d,
        count(*) filter (where event_type = 'product_view') as views_{{ baseline }}d,
        count(*) filter (where event_type = 'add_to_cart') as add_to_carts_{{ baseline }}d,
        count(*) filter (where event_type = 'purchase') as purchases_{{ baseline }}d,
        coalesce(sum(revenue) filter (where event_type = 'purchase'), 0) as revenue_{{ baseline }}d,
        count(distinct stitched_user_id) as users_{{ baseline }}d,
        sum(greatest({{ event_weight() }}, 0) * {{ decay('occurred_at') }}) as popularity,
        sum(greatest({{ event_weight() }}, 0)) filter (where occurred_at >= {{ as_of() }} - to_days({{ recent }}))
            / {{ recent }} as recent_daily_weight,
        sum(greatest({{ event_weight() }}, 0)) filter (where occurred_at < {{ as_of() }} - to_days({{ recent }}))
            / {{ baseline - recent }} as baseline_daily_weight
    from events
    group by item_id

),

scored as (

    select
        items.item_id,
        items.title,
        items.category,
        items.category_l1,
        items.brand,
        items.price,
        items.currency,
        items.in_stock,
        items.created_at,
        items.created_at >= {{ as_of() }} - to_days(14) as is_new,
        coalesce(activity.views_7d, 0) as views_7d,
        coalesce(activity.views_{{ baseline }}d, 0) as views_{{ baseline }}d,
        coalesce(activity.add_to_carts_{{ baseline }}d, 0) as add_to_carts_{{ baseline }}d,
        coalesce(activity.purchases_{{ baseline }}d, 0) as purchases_{{ baseline }}d,
        round(coalesce(activity.revenue_{{ baseline }}d, 0), 2) as revenue_{{ baseline }}d,
        coalesce(activity.users_{{ baseline }}d, 0) as users_{{ baseline }}d,
        round(coalesce(activity.purchases_{{ baseline }}d, 0) / nullif(activity.views_{{ baseline }}d, 0), 4)
            as conversion_rate,
        round(coalesce(activity.popularity, 0), 6) as popularity,
        -- Smoothed by one weighted event a day, so a single view of a quiet item is no trend.
        round(
            (coalesce(activity.recent_daily_weight, 0) + 1) / (coalesce(activity.baseline_daily_weight, 0) + 1)
            * ln(1 + coalesce(activity.recent_daily_weight, 0)),
            6
        ) as trending_score
    from items
    left join activity using (item_id)

),

final as (

    select
        *,
        row_number() over (order by popularity desc, item_id) as popularity_rank,
        row_number() over (partition by category_l1 order by popularity desc, item_id) as popularity_rank_in_category,
        row_number() over (order by trending_score desc, item_id) as trending_rank,
        row_number() over (partition by category_l1 order by trending_score desc, item_id) as trending_rank_in_category,
        {{ as_of() }} as as_of
    from scored

)

select * from final
