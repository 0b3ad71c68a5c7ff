-- One row per day and funnel step, before the as-of instant: users and sessions that
-- reached the step (in order, within the window), conversion from the previous and first
-- step, and the median time from the first step.
{%- set steps = var('insights__funnel_steps') %}

with user_days as (

    select * from {{ ref('int_funnel_user_days') }}

),

sessions as (

    select * from {{ ref('int_funnel_sessions') }}

),

{% for step in steps %}
step_{{ loop.index }}_counts as (

    select
        day,
        {{ loop.index }} as step_number,
        '{{ step }}' as step,
        count(*) filter (where step_{{ loop.index }}_at is not null) as users,
        median(epoch(step_{{ loop.index }}_at) - epoch(step_1_at)) as median_seconds_from_first
    from user_days
    group by day

),

step_{{ loop.index }}_sessions as (

    select day, {{ loop.index }} as step_number, count(*) filter (where step_{{ loop.index }}_at is not null) as sessions
    from sessions
    group by day

),
{% endfor %}

counts as (
    {% for step in steps %}
    select c.day, c.step_number, c.step, c.users, coalesce(s.sessions, 0) as sessions, c.median_seconds_from_first
    from step_{{ loop.index }}_counts as c
    left join step_{{ loop.index }}_sessions as s using (day, step_number)
    {% if not loop.last %}union all{% endif %}
    {% endfor %}

),

final as (

    select
        day,
        step_number,
        step,
        users,
        sessions,
        case when step_number = 1 then 1.0 else round(users / nullif(lag(users) over (partition by day order by step_number), 0), 4) end
            as conversion_from_previous,
        round(users / nullif(first_value(users) over (partition by day order by step_number), 0), 4)
            as conversion_from_first,
        median_seconds_from_first
    from counts

)

select * from final
