-- One row per user, dimension (category, category_l1, brand) and value the user interacted
-- with before the as-of instant: the decayed interaction weight and its strength in [0, 1].

with events as (

    select * from {{ ref('int_events_as_of') }}
    where item_id is not null and category is not null

),

weighted as (

    select
        stitched_user_id as user_id,
        category,
        category_l1,
        brand,
        {{ event_weight() }} * {{ decay('occurred_at') }} as weight,
        occurred_at
    from events

),

by_dimension as (

    select user_id, 'category' as dimension, category as value, sum(weight) as score, max(occurred_at) as last_at
    from weighted group by all
    union all
    select user_id, 'category_l1', category_l1, sum(weight), max(occurred_at)
    from weighted group by all
    union all
    select user_id, 'brand', brand, sum(weight), max(occurred_at)
    from weighted where brand is not null group by all

),

final as (

    select
        user_id,
        dimension,
        value,
        round(score, 6) as score,
        round(score / (sum(score) over (partition by user_id, dimension) + {{ var('insights__affinity_prior') }}), 6)
            as strength,
        row_number() over (partition by user_id, dimension order by score desc, value) as rank,
        last_at as last_interaction_at
    from by_dimension
    where score > 0

)

select * from final
