{#- Fails with the rows whose `column_name` is null, like dbt's `not_null`, but on an hourly
    run looks only at the rows loaded since the previous build, the way
    unique_since_last_build does (its comment says which rows and when every row is tested).
    For columns computed by a view over the raw events: loaded rows do not change, so each
    is tested once, in the build that brings it in, and the view is not computed over all
    10M events every hour. -#}
{% test not_null_since_last_build(model, column_name, loaded_into=none) %}
{%- set since = watermark_since(loaded_into or model.identifier, current=loaded_into is not none) %}
select {{ column_name }}
from {{ model }}
where {{ column_name }} is null
{%- if since %}
    and loaded_at > {{ since }}
{%- endif %}
{% endtest %}
