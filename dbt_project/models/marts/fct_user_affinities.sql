{{ config(post_hook=["{{ record_build() }}"]) }}
-- depends_on: {{ ref('fct_events') }}, {{ ref('stg_insights__events') }}, {{ ref('stg_insights__catalog_items') }}
-- One row per user, dimension (category, category_l1, brand) and value the user interacted
-- with before the as-of instant: the decayed interaction weight and its strength in [0, 1].
-- An hourly rebuild recomputes the users whose history changed and re-ages the others'
-- weights (macros/reuse.sql): the same rows as a build from all events.
{%- set previous = reusable_build() %}

with {% if previous %}{{ changed_users(previous) }},{% endif %}

events as (

    select *
    {%- if previous %}
    from ({{ events_of_users('changed_users') | indent(4) }})
    {%- else %}
    from {{ ref('int_events_as_of') }}
    {%- endif %}
    where item_id is not null and category is not null

),

weighted as (

    select
        stitched_user_id as user_id,
        category,
        category_l1,
        brand,
        {{ event_weight() }} * {{ decay_to_reference('occurred_at') }} as weight,
        occurred_at
    from events

),

-- Weights as seen from the decay reference (the as-of month's first instant), rounded so
-- that the order in which floats are summed does not show.
by_dimension as (

    select user_id, 'category' as dimension, category as value, round(sum(weight), 9) as reference_score,
        max(occurred_at) as last_at
    from weighted group by all
    union all
    select user_id, 'category_l1', category_l1, round(sum(weight), 9), max(occurred_at)
    from weighted group by all
    union all
    select user_id, 'brand', brand, round(sum(weight), 9), max(occurred_at)
    from weighted where brand is not null group by all
    {%- if previous %}
    union all
    -- Everyone else: their weights of the previous build, moved to this month's reference
    -- when the month changed (equal to a full build's to about 1e-9 until the next one).
    select user_id, dimension, value, {{ reference_moved('reference_score', previous) }}, last_interaction_at
    from {{ this }}
    where user_id not in (select user_id from changed_users)
    {%- endif %}

),

aged as (

    select *, reference_score * {{ decay_from_reference() }} as score
    from by_dimension
    where reference_score > 0

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
        last_at as last_interaction_at,
        reference_score
    from aged

)

select * from final
