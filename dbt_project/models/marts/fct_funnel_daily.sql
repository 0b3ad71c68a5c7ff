{{ config(post_hook=["{{ record_build() }}"]) }}
-- depends_on: {{ ref('fct_events') }}, {{ ref('stg_insights__events') }}, {{ ref('stg_insights__catalog_items') }}, {{ ref('int_events_as_of') }}
-- One row per day and funnel step, before the as-of instant: users and sessions that
-- reached the step (in order, within the window), conversion from the previous and first
-- step, and the median time from the first step. An hourly rebuild recomputes the days
-- whose funnel instances may have changed and keeps the others (macros/reuse.sql).
{%- set steps = var('insights__funnel_steps') %}
{%- set previous = reusable_build() %}
{#- An instance starts up to a session's length (capped) and the funnel window before an
    event that belongs to it. -#}
{%- set reach = (var('insights__funnel_window_hours') / 24) | round(0, 'ceil') | int
    + var('insights__max_session_days') | round(0, 'ceil') | int + 1 %}

with {% if previous %}{{ changed_days(previous, reach) }},

-- The events the changed days' instances are built from (int_events_as_of's rows on
-- those days, stitched from their own visitors' identities).
events_near_changed_days as (

    {{ events_as_of(
        "occurred_at::date in (select distinct (day + to_days(around.k))::date from changed_days"
        ~ " cross join range(" ~ (-reach) ~ ", " ~ (reach + 1) ~ ") as around(k))"
    ) | indent(4) }}

),

user_days as (

    select * from ({{ funnel_user_days('events_near_changed_days') | indent(4) }})
    where day in (select day from changed_days)

),

sessions as (

    select * from ({{ funnel_sessions('events_near_changed_days') | indent(4) }})
    where day in (select day from changed_days)

),
{%- else %}

user_days as (

    select * from {{ ref('int_funnel_user_days') }}

),

sessions as (

    select * from {{ ref('int_funnel_sessions') }}

),
{%- endif %}

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
{%- if previous %}
union all
select * from {{ this }} where day not in (select day from changed_days)
{%- endif %}
