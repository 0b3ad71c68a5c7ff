{#- Fails with the values of `column_name` that occur more than once, like dbt's `unique`,
    but on an hourly run looks only at the values of the rows loaded since the previous
    build (loaded_at after its watermark minus the lookback), each against the whole table.
    Every row is so tested once, in the build that brings it in, and a 10M-row table is not
    grouped every hour. A full refresh, a first build, or the var insights__test_all_rows
    tests every row. The watermark is the one the event model `watermark_of` (default: the
    tested model) started from (macros/incremental.sql record_watermark); a source's test
    runs before that model, so it reads the previous run's, a superset. -#}
{% test unique_since_last_build(model, column_name, watermark_of=none) %}
{%- set since = watermark_since(watermark_of or model.identifier) %}
select {{ column_name }} as unique_field, count(*) as n_records
from {{ model }}
where {{ column_name }} is not null
{%- if since %}
    and {{ column_name }} in (select {{ column_name }} from {{ model }} where loaded_at > {{ since }})
{%- endif %}
group by {{ column_name }}
having count(*) > 1
{% endtest %}
