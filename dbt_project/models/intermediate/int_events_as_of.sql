-- Events strictly before the as-of instant, stitched with the identities known by then:
-- a visitor who logs in after the as-of instant is still anonymous here.

with events as (

    select * from {{ ref('fct_events') }}
    where occurred_at < {{ as_of() }}

),

identities as (

    select anonymous_id, arg_max(user_id, occurred_at) as user_id
    from events
    where anonymous_id is not null and user_id is not null
    group by anonymous_id

),

items as (

    select * from {{ ref('stg_insights__catalog_items') }}

),

final as (

    select
        events.*,
        coalesce(identities.user_id, events.user_id, events.anonymous_id) as stitched_user_id,
        items.category,
        items.category_l1,
        items.brand,
        items.price as catalog_price
    from events
    left join identities on identities.anonymous_id = events.anonymous_id
    left join items on items.item_id = events.item_id

)

select * from final
