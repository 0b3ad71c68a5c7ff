-- One row per user and item with a positive interaction before the as-of instant: the
-- decayed, event-type-weighted confidence that ALS learns from (Hu, Koren & Volinsky 2008).

with events as (

    select * from {{ ref('int_events_as_of') }}
    where item_id is not null

),

final as (

    select
        stitched_user_id as user_id,
        item_id,
        round(sum({{ event_weight() }} * {{ decay('occurred_at') }}), 6) as weight,
        count(*) as events,
        count(*) filter (where event_type = 'product_view') as views,
        count(*) filter (where event_type = 'add_to_cart') as add_to_carts,
        count(*) filter (where event_type = 'purchase') as purchases,
        min(occurred_at) as first_interaction_at,
        max(occurred_at) as last_interaction_at
    from events
    group by stitched_user_id, item_id
    having sum({{ event_weight() }} * {{ decay('occurred_at') }}) > 0

)

select * from final
