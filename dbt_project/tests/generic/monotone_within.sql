{#- Fails with the rows whose column exceeds the previous row's within a partition, ordered
    by `order_by` (funnel counts never grow from one step to the next). -#}
{% test non_increasing(model, column_name, partition_by, order_by) %}
select *
from (
    select *, lag({{ column_name }}) over (partition by {{ partition_by }} order by {{ order_by }}) as previous_value
    from {{ model }}
)
where previous_value is not null and {{ column_name }} > previous_value
{% endtest %}
