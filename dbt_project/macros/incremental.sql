{#- The incremental pattern of the event models (after Snowplow's): take the high-water
    mark of loaded_at in this model minus a lookback, find the scopes (tracker session, or
    visitor history without one) that received events since, and recompute those scopes
    whole (the CTE named by `events` should be NOT MATERIALIZED, so that only the touched
    scopes' rows are read, not a copy of every event). With restitch, scopes of anonymous
    ids that were just identified are recomputed too, so earlier sessions move to the user.
    Defines the CTE `events_in_scope` from the CTE named by `events`. -#}
{% macro events_in_touched_scopes(events='events', restitch=false) -%}
{%- if is_incremental() -%}
new_events as (

    select *
    from {{ events }}
    where loaded_at > (
        select coalesce(max(loaded_at), '1970-01-01'::timestamp)
            - to_seconds({{ var('insights__lookback_hours') }} * 3600)
        from {{ this }}
    )

),

touched_scopes as (

    select scope_key from new_events
    {%- if restitch %}
    union
    select scope_key
    from {{ events }}
    where anonymous_id in (
        select anonymous_id from new_events where user_id is not null and anonymous_id is not null
    )
    {%- endif %}

),

events_in_scope as (

    select {{ events }}.* from {{ events }} semi join touched_scopes using (scope_key)

)
{%- else -%}
{#- Streamed, not copied: a full build's scope is every event. -#}
events_in_scope as not materialized (

    select * from {{ events }}

)
{%- endif -%}
{%- endmacro %}
