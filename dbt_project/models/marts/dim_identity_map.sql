-- Identity stitching (Snowplow's definition): each anonymous id maps to the latest user id
-- seen with it. Anonymous ids that never logged in have no row and keep their own id.

with events as (

    select * from {{ ref('fct_events') }}

),

final as (

    select
        anonymous_id,
        arg_max(user_id, occurred_at) as user_id,
        min(occurred_at) as first_identified_at,
        max(occurred_at) as last_identified_at,
        count(distinct user_id) as user_ids_seen
    from events
    where anonymous_id is not null and user_id is not null
    group by anonymous_id

)

select * from final
