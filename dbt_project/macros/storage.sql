{#- Tables are made by dbt-duckdb's own create_table_as, except that a model may name
    columns to store without compression (config `uncompressed_columns`).

    A column with a distinct random value in every row (event ids, page view ids) gains
    little from DuckDB's string compression (DICT_FSST: 36-character UUIDs in about half the
    space) and pays for it on every write: storing fct_events' event_id took 7.0 CPU-s of
    the 40 that writing the 10M-event table took, 1.2 CPU-s uncompressed (170 MB more). A
    column's compression can only be given when the table is created, so the table is
    created from the query's own column types and then filled; incremental runs insert into
    it and keep it. Temporary tables (in memory) and contracted models go dbt-duckdb's way. -#}
{% macro duckdb__create_table_as(temporary, relation, compiled_code, language='sql', partitioned_by=none, sorted_by=none) -%}
  {%- set uncompressed = config.get('uncompressed_columns') or [] -%}
  {%- set contract_config = config.get('contract') -%}
  {%- if language == 'sql' and uncompressed and not temporary and not (contract_config and contract_config.enforced)
        and not partitioned_by and not sorted_by -%}
    {%- set described = run_query('describe select * from (' ~ compiled_code ~ ') as model_subq') -%}
    {%- set names = described.columns[0].values() -%}
    {%- set missing = uncompressed | reject('in', names) | list -%}
    {%- if missing -%}
      {{ exceptions.raise_compiler_error("uncompressed_columns names columns the model does not have: " ~ missing | join(', ')) }}
    {%- endif -%}
    {%- set sql_header = config.get('sql_header', none) -%}
    {{ sql_header if sql_header is not none }}
    create table {{ relation }} (
      {%- for row in described.rows %}
      {{ adapter.quote(row[0]) }} {{ row[1] }}{% if row[0] in uncompressed %} using compression uncompressed{% endif %}{{ "," if not loop.last }}
      {%- endfor %}
    );
    insert into {{ relation }}
      select * from (
        {{ compiled_code }}
      ) as model_subq;
  {%- else -%}
    {{ dbt.duckdb__create_table_as(temporary, relation, compiled_code, language, partitioned_by, sorted_by) }}
  {%- endif -%}
{%- endmacro %}
