{{ config(post_hook=["{{ record_build() }}"]) }}
-- depends_on: {{ ref('fct_events') }}, {{ ref('stg_insights__events') }}, {{ ref('stg_insights__catalog_items') }}
-- One row per user and item with a positive interaction before the as-of instant: the
-- decayed, event-type-weighted confidence that ALS learns from (Hu, Koren & Volinsky 2008).
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
    where item_id is not null

),

-- Weights as seen from the decay reference (the as-of month's first instant), rounded so
-- that the order in which floats are summed does not show.
by_item as (

    select
        stitched_user_id as user_id,
        item_id,
        round(sum({{ event_weight() }} * {{ decay_to_reference('occurred_at') }}), 9) as reference_weight,
        count(*) as events,
        count(*) filter (where event_type = 'product_view') as views,
        count(*) filter (where event_type = 'add_to_cart') as add_to_carts,
        count(*) filter (where event_type = 'purchase') as purchases,
        min(occurred_at) as first_interaction_at,
        max(occurred_at) as last_interaction_at
    from events
    group by stitched_user_id, item_id
    {%- if previous %}
    union all
    -- Everyone else: their weights of the previous build, moved to this month's reference
    -- when the month changed (equal to a full build's to about 1e-9 until the next one).
    select
        user_id,
        item_id,
        {{ reference_moved('reference_weight', previous) }},
        events,
        views,
        add_to_carts,
        purchases,
        first_interaction_at,
        last_interaction_at
    from {{ this }}
    where user_id not in (select user_id from changed_users)
    {%- endif %}

),

final as (

    select
        user_id,
        item_id,
        round(reference_weight * {{ decay_from_reference() }}, 6) as weight,
        events,
        views,
        add_to_carts,
        purchases,
        first_interaction_at,
        last_interaction_at,
        reference_weight
    from by_item
    where reference_weight > 0

)

select * from final
