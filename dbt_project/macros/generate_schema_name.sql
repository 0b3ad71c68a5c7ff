{#- Custom schemas are used as named (staging, not main_staging): analysts query the marts
    in main and the staging views in staging.

    A point-in-time snapshot (`insights__snapshot_schema`, set by the learning step to get
    features as of past cutoffs) sends every model that depends on the as-of instant (the
    intermediate views and the non-event marts) to that schema instead, so the features of
    the last run in main stay untouched. Event facts and staging do not depend on the as-of
    instant and are shared. -#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- set snapshot = var('insights__snapshot_schema', none) -%}
    {%- if snapshot and node.fqn | length > 2 and node.fqn[1] in ('intermediate', 'marts') and node.fqn[2] != 'events' -%}
        {{ snapshot | trim }}
    {%- elif custom_schema_name is none -%}{{ target.schema }}{%- else -%}{{ custom_schema_name | trim }}{%- endif -%}
{%- endmacro %}
