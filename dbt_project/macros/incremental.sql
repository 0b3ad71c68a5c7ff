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

{#- The pre-hook of the event models: the loaded_at watermark this build starts from
    (null when it builds from all events), read by the unique_since_last_build test. -#}
{% macro record_watermark() -%}
create or replace table build_state.{{ this.identifier }}_watermark as
select
    {%- if is_incremental() %} (select max(loaded_at) from {{ this }})
    {%- else %} null::timestamp
    {%- endif %} as loaded_at
{%- endmacro %}

{#- The instant after which rows count as new to the event model `name` (a watermark minus
    the lookback) as a SQL literal: the watermark its build started from, or with `current`
    its newest loaded_at now. None when every row must be tested: no recorded watermark, a
    build from all events, a full refresh, or the var insights__test_all_rows. -#}
{% macro watermark_since(name, current=false) -%}
    {%- if not execute or flags.FULL_REFRESH or var('insights__test_all_rows', false) -%}
        {{- return(none) -}}
    {%- endif -%}
    {%- if current -%}
        {%- set node = graph.nodes.values() | selectattr('resource_type', 'equalto', 'model')
            | selectattr('name', 'equalto', name) | first -%}
        {%- set relation = adapter.get_relation(database=node.database, schema=node.schema, identifier=node.alias) -%}
        {%- set sql = "select strftime(max(loaded_at), '%Y-%m-%d %H:%M:%S.%f') from " ~ relation -%}
    {%- else -%}
        {%- set relation = adapter.get_relation(database=target.database, schema='build_state', identifier=name ~ '_watermark') -%}
        {%- set sql = "select strftime(loaded_at, '%Y-%m-%d %H:%M:%S.%f') from " ~ relation -%}
    {%- endif -%}
    {%- if relation is none -%}{{- return(none) -}}{%- endif -%}
    {%- set found = run_query(sql) -%}
    {%- if found.rows | length != 1 or found.rows[0][0] is none -%}{{- return(none) -}}{%- endif -%}
    {{- return("'" ~ found.rows[0][0] ~ "'::timestamp - to_seconds(" ~ var('insights__lookback_hours') ~ " * 3600)") -}}
{%- endmacro %}
