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

{#- Clean events strictly before the as-of instant, stitched with the identities known by
    then (each anonymous id to the user id it was last seen with; users who never log in
    keep their anonymous id), with the item's category, brand and catalog price: the
    select of int_events_as_of. With `selected` (a condition on fct_events' columns), only
    the events it holds, stitched from the identities of their anonymous ids alone: an
    anonymous id's identity depends only on its own events, so a rebuild that needs a few
    visitors does not stitch every event. -#}
{% macro events_as_of(selected=none) -%}
with as_of_events as (

    select * from {{ ref('fct_events') }}
    where occurred_at < {{ as_of() }}
    {%- if selected %}
        and ({{ selected }})
    {%- endif %}

),

identities as (

    select anonymous_id, arg_max(user_id, occurred_at) as user_id
    from {{ ref('fct_events') }}
    where occurred_at < {{ as_of() }} and anonymous_id is not null and user_id is not null
    {%- if selected %}
        and anonymous_id in (select anonymous_id from as_of_events)
    {%- endif %}
    group by anonymous_id

),

items as (

    select * from {{ ref('stg_insights__catalog_items') }}

)

select
    as_of_events.*,
    coalesce(identities.user_id, as_of_events.user_id, as_of_events.anonymous_id) as stitched_user_id,
    items.category,
    items.category_l1,
    items.brand,
    items.price as catalog_price
from as_of_events
left join identities on identities.anonymous_id = as_of_events.anonymous_id
left join items on items.item_id = as_of_events.item_id
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

{#- The first row of each id of `rows` by `order_by`, without windowing every row: the ids
    seen more than once are found first and only their rows go through the window (they
    are rare: ingestion keeps one copy per event id, a tracker sends one page_view per page
    view id); the others pass as they are. Windowing every page view with its wide text
    columns cost fct_page_views 10.4 s against 5.9 s (built alone at 10M events). Emits two
    CTEs, `<name>_repeated_ids` and `<name>`, for a `with` list. -#}
{% macro first_row_per_id(name, rows, id, order_by, exclude=none) -%}
{%- set columns = '*' ~ (' exclude (' ~ exclude ~ ')' if exclude else '') -%}
{{ name }}_repeated_ids as materialized (

    select {{ id }} from {{ rows }} group by {{ id }} having count(*) > 1

),

{{ name }} as not materialized (

    select {{ columns }} from {{ rows }} anti join {{ name }}_repeated_ids using ({{ id }})
    union all
    select {{ columns }}
    from (
        select *
        from {{ rows }} semi join {{ name }}_repeated_ids using ({{ id }})
        qualify row_number() over (partition by {{ id }} order by {{ order_by }}) = 1
    )

)
{%- endmacro %}

{#- The tracker's session id. Snowplow's is a UUID; a mapped source's (Amplitude's, GA4's
    ga_session_id) is often the session's start time, unique per visitor only, so it is
    scoped by the visitor: two people starting a session in the same second stay two. -#}
{% macro tracker_session_id() -%}
    case
        when nullif(trim(session_id), '') is null then null
        when source_kind like 'snowplow%' then trim(session_id)
        else coalesce(nullif(trim(anonymous_id), ''), nullif(trim(user_id), '')) || '/' || trim(session_id)
    end
{%- endmacro %}
