{#- Fails with the values of `column_name` that occur more than once, like dbt's `unique`,
    but on an hourly run looks only at the values of the rows loaded since the previous
    build (loaded_at after its watermark minus the lookback), each against the whole table.
    Every row is so tested once, in the build that brings it in, and a 10M-row table is not
    grouped every hour. A full refresh, a first build, or the var insights__test_all_rows
    tests every row.

    On an event model the watermark is the one its build started from (macros/incremental.sql
    record_watermark). On a source, `loaded_into` names the event model that takes its rows
    in: the test runs before that model is built, and looks at the rows the model has not
    taken in yet (after its newest loaded_at minus the lookback). -#}
{% test unique_since_last_build(model, column_name, loaded_into=none) %}
{%- set since = watermark_since(loaded_into or model.identifier, current=loaded_into is not none) %}
select {{ column_name }} as unique_field, count(*) as n_records
from {{ model }}
where {{ column_name }} is not null
{%- if since %}
    and {{ column_name }} in (select {{ column_name }} from {{ model }} where loaded_at > {{ since }})
{%- endif %}
group by {{ column_name }}
having count(*) > 1
{% endtest %}
