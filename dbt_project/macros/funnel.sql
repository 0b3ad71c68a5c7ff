{#- Ordered funnel instances: each starts at the first step-1 event of its key (a user's day,
    or a session); step k is the first step-k event after step k-1 and within the funnel
    window of step 1. Selects key columns, day, and step_<k>_at for every step. -#}
{% macro funnel_instances(events, key) -%}
{%- set steps = var('insights__funnel_steps') -%}
{%- set window_seconds = var('insights__funnel_window_hours') * 3600 -%}
with step_events as (

    select
        {{ key }} as funnel_key,
        stitched_user_id as user_id,
        occurred_at,
        case
        {%- for step in steps %}
            when {{ is_step(step) }} then {{ loop.index }}
        {%- endfor %}
        end as step_number
    from {{ events }}

),

step_1 as (

    select funnel_key, any_value(user_id) as user_id, min(occurred_at) as step_1_at
    from step_events
    where step_number = 1
    group by funnel_key

)
{%- for step in steps[1:] %}
{%- set k = loop.index + 1 %},

step_{{ k }} as (

    select
        previous.*,
        min(later.occurred_at) as step_{{ k }}_at
    from step_{{ k - 1 }} as previous
    left join step_events as later
        on later.funnel_key = previous.funnel_key
        and later.step_number = {{ k }}
        and later.occurred_at >= previous.step_{{ k - 1 }}_at
        and later.occurred_at < previous.step_1_at + to_seconds({{ window_seconds }})
    group by all

)
{%- endfor %}

select *, step_1_at::date as day from step_{{ steps | length }}
{%- endmacro %}

{#- One row per user and day on which the user reached the first funnel step, from `events`
    (int_events_as_of's columns). -#}
{% macro funnel_user_days(events) -%}
{{ funnel_instances(events, "stitched_user_id || '|' || occurred_at::date::varchar") }}
{%- endmacro %}

{#- One row per session that reached the first funnel step, from `events`. -#}
{% macro funnel_sessions(events) -%}
{{ funnel_instances(events, 'session_id') }}
{%- endmacro %}
