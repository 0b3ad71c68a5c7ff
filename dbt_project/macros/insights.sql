{#- Shared expressions of the models. Each is the one definition of its concept. -#}

{#- The as-of instant as text: the var insights__as_of (dbt's --vars, unit tests), else the
    environment variable INSIGHTS_AS_OF, which `insights transform` sets (a var that changes
    every hour makes dbt parse the whole project again each run; a changed environment
    variable re-parses only the files that use it); none when neither is set. -#}
{% macro as_of_text() -%}
    {%- set value = var('insights__as_of') or env_var('INSIGHTS_AS_OF', '') -%}
    {{- return(value if value else none) -}}
{%- endmacro %}

{#- The as-of instant as a timestamp literal (naive UTC); now when none is given. -#}
{% macro as_of() -%}
    {%- set value = as_of_text() -%}
    {%- if value is none -%}
        date_trunc('second', now()::timestamp)
    {%- else -%}
        cast('{{ value | replace("'", "") }}' as timestamp)
    {%- endif -%}
{%- endmacro %}

{#- Exponential time decay of an event at `ts` seen from the as-of instant: 1 now, 0.5 one
    half-life ago. -#}
{% macro decay(ts) -%}
    pow(0.5, greatest(epoch({{ as_of() }}) - epoch({{ ts }}), 0) / (86400.0 * {{ var('insights__half_life_days') }}))
{%- endmacro %}

{#- Engaged time of a page view (Snowplow's heartbeat definition): heartbeat x (distinct
    heartbeat windows with a page ping - 1) + minimum visit length, or 0 without pings.
    An aggregate over the page view's pings; `ping_ts` is null on non-ping rows. The
    distinct windows are counted as len(list_distinct(list(...))) (nulls dropped, as
    count(distinct) drops them): DuckDB turns count(distinct) into an extra group-by over
    every ping and a join back, which took half of dim_users at 10M events. -#}
{% macro engaged_seconds(ping_ts) -%}
    case
        when count({{ ping_ts }}) = 0 then 0
        else {{ var('insights__heartbeat_seconds') }}
            * (len(list_distinct(list(floor(epoch({{ ping_ts }}) / {{ var('insights__heartbeat_seconds') }})))) - 1)
            + {{ var('insights__min_visit_seconds') }}
    end
{%- endmacro %}

{#- True for the key conversion event: an event type, or a custom event's name. -#}
{% macro is_conversion(event_type='event_type', event_name='event_name') -%}
    {{ is_step(var('insights__conversion_event'), event_type, event_name) }}
{%- endmacro %}

{% macro is_step(step, event_type='event_type', event_name='event_name') -%}
    ({{ event_type }} = '{{ step }}' or ({{ event_type }} = 'custom' and {{ event_name }} = '{{ step }}'))
{%- endmacro %}

{#- The weight of one interaction by event type, from insights__event_weights. -#}
{% macro event_weight(event_type='event_type') -%}
    case {{ event_type }}
    {%- for name, weight in var('insights__event_weights').items() %}
        when '{{ name }}' then {{ weight }}
    {%- endfor %}
        else 0
    end
{%- endmacro %}

{#- User agents of crawlers and monitors: the var insights__bot_useragent_pattern (config
    transform.bot_useragent_pattern), as a quoted SQL literal. -#}
{% macro bot_useragent_pattern() -%}
    '{{ var('insights__bot_useragent_pattern') | replace("'", "''") }}'
{%- endmacro %}
