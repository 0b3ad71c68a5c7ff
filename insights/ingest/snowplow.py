"""Snowplow events: enriched TSV (what enrich and the S3 loader write) and atomic-table exports.

Both are the same data model. The enriched TSV carries 131 tab-separated fields with the
self-describing JSON columns ``contexts``, ``unstruct_event`` and ``derived_contexts``; an
atomic export (CSV or Parquet) has named columns, with each context shredded into its own
``contexts_<vendor>_<name>_<version>`` column. Both are turned into one typed "atomic"
relation and then into canonical events by the same SQL.

Event typing follows Snowplow's trackers: ``page_view``/``page_ping`` by ``event``; the
e-commerce plugin's ``snowplow_ecommerce_action`` by its ``type`` (product_view,
add_to_cart, remove_from_cart, checkout_step, transaction); ``site_search``; the legacy
``transaction_item``. A transaction with several product entities becomes one purchase
row per product (ids ``<event_id>#<n>`` after the first), so item-level revenue is exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Polars' allocator (its own jemalloc) gives freed pages back to the kernel within seconds.
# A load frees a batch's parsed columns and allocates the next batch's a few seconds later,
# and the kernel faulting those pages in again was a fifth of ingestion's CPU time (sys 13.5
# of 69 CPU-s for 3M enriched lines). Kept 30 s, they are reused: 10M lines load in 111 s
# instead of 125 (back to back), with 230-450 MB more at the peak. Read when polars loads,
# so it is set before the import; a value in the environment wins (empty: polars' own).
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:30000,muzzy_decay_ms:0")

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402

from insights.ingest.textio import quote_ident

ENRICHED_FIELDS: tuple[str, ...] = (
    "app_id platform etl_tstamp collector_tstamp dvce_created_tstamp event event_id txn_id "
    "name_tracker v_tracker v_collector v_etl user_id user_ipaddress user_fingerprint "
    "domain_userid domain_sessionidx network_userid geo_country geo_region geo_city "
    "geo_zipcode geo_latitude geo_longitude geo_region_name ip_isp ip_organization ip_domain "
    "ip_netspeed page_url page_title page_referrer page_urlscheme page_urlhost page_urlport "
    "page_urlpath page_urlquery page_urlfragment refr_urlscheme refr_urlhost refr_urlport "
    "refr_urlpath refr_urlquery refr_urlfragment refr_medium refr_source refr_term mkt_medium "
    "mkt_source mkt_term mkt_content mkt_campaign contexts se_category se_action se_label "
    "se_property se_value unstruct_event tr_orderid tr_affiliation tr_total tr_tax "
    "tr_shipping tr_city tr_state tr_country ti_orderid ti_sku ti_name ti_category ti_price "
    "ti_quantity pp_xoffset_min pp_xoffset_max pp_yoffset_min pp_yoffset_max useragent "
    "br_name br_family br_version br_type br_renderengine br_lang br_features_pdf "
    "br_features_flash br_features_java br_features_director br_features_quicktime "
    "br_features_realplayer br_features_windowsmedia br_features_gears "
    "br_features_silverlight br_cookies br_colordepth br_viewwidth br_viewheight os_name "
    "os_family os_manufacturer os_timezone dvce_type dvce_ismobile dvce_screenwidth "
    "dvce_screenheight doc_charset doc_width doc_height tr_currency tr_total_base "
    "tr_tax_base tr_shipping_base ti_currency ti_price_base base_currency geo_timezone "
    "mkt_clickid mkt_network etl_tags dvce_sent_tstamp refr_domain_userid refr_device_tstamp "
    "derived_contexts domain_sessionid derived_tstamp event_vendor event_name event_format "
    "event_version event_fingerprint true_tstamp"
).split()
assert len(ENRICHED_FIELDS) == 131

# The atomic fields the canonical projection reads, with the type each must parse as.
# A non-empty value that does not parse sends the line to quarantine with the field named.
TYPED_FIELDS: dict[str, str] = {
    "collector_tstamp": "timestamp",
    "dvce_created_tstamp": "timestamp",
    "derived_tstamp": "timestamp",
    "domain_sessionidx": "integer",
    "pp_yoffset_max": "integer",
    "doc_height": "integer",
    "br_viewheight": "integer",
    "ti_price": "double",
    "ti_quantity": "double",
    "tr_total": "double",
}
TEXT_FIELDS = (
    "app_id platform event event_id user_id user_ipaddress domain_userid network_userid "
    "page_url page_title page_referrer page_urlhost page_urlpath refr_medium refr_source "
    "mkt_medium mkt_source mkt_campaign useragent domain_sessionid event_name se_category "
    "se_action tr_orderid ti_orderid ti_sku ti_currency tr_currency"
).split()
JSON_FIELDS = ("contexts", "unstruct_event", "derived_contexts")
NEEDED_FIELDS = (*TEXT_FIELDS, *TYPED_FIELDS, *JSON_FIELDS)

SCHEMA_WEB_PAGE = "iglu:com.snowplowanalytics.snowplow/web_page/%"
SCHEMA_PRODUCT = "iglu:com.snowplowanalytics.snowplow.ecommerce/product/%"
SCHEMA_TRANSACTION = "iglu:com.snowplowanalytics.snowplow.ecommerce/transaction/%"
SCHEMA_IAB = "iglu:com.iab.snowplow/spiders_and_robots/%"
SCHEMA_YAUAA = "iglu:nl.basjes/yauaa_context/%"
SCHEMA_ECOMMERCE_ACTION = "iglu:com.snowplowanalytics.snowplow.ecommerce/snowplow_ecommerce_action/%"
SCHEMA_SITE_SEARCH = "iglu:com.snowplowanalytics.snowplow/site_search/%"

# Shredded column prefixes of an atomic export, for the same entities.
PREFIX = {
    "web_page": "contexts_com_snowplowanalytics_snowplow_web_page_1",
    "product": "contexts_com_snowplowanalytics_snowplow_ecommerce_product_1",
    "transaction": "contexts_com_snowplowanalytics_snowplow_ecommerce_transaction_1",
    "iab": "contexts_com_iab_snowplow_spiders_and_robots_1",
    "yauaa": "contexts_nl_basjes_yauaa_context_1",
    "ecommerce_action": "unstruct_event_com_snowplowanalytics_snowplow_ecommerce_snowplow_ecommerce_action_1",
    "site_search": "unstruct_event_com_snowplowanalytics_snowplow_site_search_1",
}


@dataclass
class EnrichedRead:
    """A batch of enriched TSV files parsed: ``table`` has the needed atomic fields, one
    row per line; ``texts`` and ``line_ends`` (each file's newline offsets, found while
    counting fields) give back the raw text of any line (:meth:`raw_lines`)."""

    table: pa.Table
    texts: dict[str, bytes]
    line_ends: dict[str, np.ndarray]

    def raw_lines(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The raw text of given (file, line) pairs, for quarantining rows found bad after parsing."""
        found = {}
        for path, number in wanted:
            text, ends = self.texts[path], self.line_ends[path]
            if not 1 <= number <= len(ends):
                continue
            # Line n runs from just after newline n-1 to newline n (a file's last line
            # was given a newline if it lacked one, so every line has its end).
            start = int(ends[number - 2]) + 1 if number > 1 else 0
            found[(path, number)] = text[start : int(ends[number - 1])].decode("utf-8", errors="replace").rstrip("\r")
        return found


# Text examined at a time when counting fields: its temporaries stay in the CPU's cache and
# come from memory already mapped (whole-file arrays of a 367 MB batch were written, read
# back and faulted in afresh each batch: 0.106 -> 0.050 CPU-s for 77 MB).
_COUNT_CHUNK = 512 * 1024


def _line_fields(text: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Each line's end (the offset of its newline; ``text`` ends with one) and its number of
    tab-separated fields, computed over runs of whole lines of about ``_COUNT_CHUNK`` bytes."""
    arr = np.frombuffer(text, np.uint8)
    ends_parts, field_parts = [], []
    start, size = 0, len(arr)
    while start < size:
        stop = text.find(b"\n", min(start + _COUNT_CHUNK, size) - 1) + 1
        run = arr[start:stop]
        ends = np.flatnonzero(run == 10)
        tabs = np.flatnonzero(run == 9)
        starts = np.concatenate(([0], ends[:-1] + 1))
        ends_parts.append(ends + start)
        field_parts.append(np.searchsorted(tabs, ends) - np.searchsorted(tabs, starts) + 1)
        start = stop
    return np.concatenate(ends_parts), np.concatenate(field_parts)


def needed_fields(texts: list[bytes]) -> pl.DataFrame:
    """The needed fields of every line of the texts (whole enriched TSV files), one row per
    line whatever its field count: a short line gives nulls, a long one is cut."""
    return (
        pl.scan_csv(
            texts,
            separator="\t",
            quote_char=None,
            has_header=False,
            schema=dict.fromkeys(ENRICHED_FIELDS, pl.String),
            truncate_ragged_lines=True,
            missing_columns="insert",
            extra_columns="ignore",
            encoding="utf8-lossy",
        )
        .select(NEEDED_FIELDS)
        .collect()
    )


def read_enriched(files: list[tuple[str, bytes]]) -> EnrichedRead:
    """Parse enriched TSV files into the needed atomic fields, one row per line.

    Lines without exactly 131 fields become rows with a ``shape_error`` and their raw
    text. Polars' native reader parses every file whole, in one pass, handed over as it is:
    a short line gives nulls, a long one is cut, and the rows of those lines are then left
    out. (Copying the good runs of lines out of the text instead cost a copy of most of the
    batch into fresh pages; joining the files first, another.) Raw text is not kept for
    parsed lines; :meth:`EnrichedRead.raw_lines` recovers it for the few that fail a later
    check.
    """
    pieces: list[bytes] = []
    kept: list[np.ndarray] = []
    line_files: list[np.ndarray] = []
    line_numbers: list[np.ndarray] = []
    bad_rows: dict[str, list] = {"source_file": [], "source_line": [], "raw_text": [], "shape_error": []}
    names: list[str] = []
    texts: dict[str, bytes] = {}
    line_ends: dict[str, np.ndarray] = {}
    for path, text in files:
        if not text:
            continue
        names.append(path)
        if text[-1:] != b"\n":
            text += b"\n"
        ends, fields = _line_fields(text)
        texts[path], line_ends[path] = text, ends
        good = fields == 131
        numbers = np.arange(1, len(ends) + 1, dtype=np.int64)
        for i in np.flatnonzero(~good):
            start = int(ends[i - 1]) + 1 if i else 0
            raw = text[start : ends[i]].decode("utf-8", errors="replace").rstrip("\r")
            bad_rows["source_file"].append(path)
            bad_rows["source_line"].append(int(numbers[i]))
            bad_rows["raw_text"].append(raw)
            bad_rows["shape_error"].append(
                "empty line" if not raw.strip() else f"expected 131 tab-separated fields, found {fields[i]}"
            )
        pieces.append(text)
        kept.append(good)
        line_files.append(np.full(int(good.sum()), len(names) - 1, dtype=np.int64))
        line_numbers.append(numbers[good])
    if pieces:
        frame = needed_fields(pieces)
        keep = np.concatenate(kept)
        if frame.height != len(keep):
            # Every line is a row, whatever its fields; if not, rows and line numbers
            # would not match up.
            raise ValueError(
                f"enriched TSV: {len(keep)} lines counted but {frame.height} rows parsed in "
                f"{', '.join(names[:3])}{' and more' if len(names) > 3 else ''}"
            )
        if not keep.all():
            frame = frame.filter(pl.Series(keep))
    else:
        frame = pl.DataFrame({n: pl.Series([], dtype=pl.String) for n in NEEDED_FIELDS})
    file_index = np.concatenate(line_files) if line_files else np.array([], np.int64)
    frame = frame.with_columns(
        pl.Series("source_file", names, dtype=pl.String).gather(file_index)
        if len(file_index)
        else pl.Series("source_file", [], dtype=pl.String),
        pl.Series("source_line", np.concatenate(line_numbers) if line_numbers else [], dtype=pl.Int64),
        pl.lit(None, pl.String).alias("raw_text"),
        pl.lit(None, pl.String).alias("shape_error"),
    )
    if bad_rows["source_file"]:
        bad = pl.DataFrame(
            bad_rows,
            schema={"source_file": pl.String, "source_line": pl.Int64, "raw_text": pl.String, "shape_error": pl.String},
        )
        frame = pl.concat([frame, bad], how="diagonal")
    # Arrow string views, as polars holds them: DuckDB scans them without the copy into
    # plain strings (a fifth of the parse's memory traffic).
    return EnrichedRead(frame.to_arrow(compat_level=pl.CompatLevel.newest()), texts, line_ends)


# A contexts column parsed once into (schema, data) pairs: the entities are then picked by
# schema without parsing the JSON again for each (four times faster than json_extract per
# entity). Lines with invalid JSON are quarantined before this runs.
_ENTITY = "struct(schema varchar, data json)"


def _context_list(json_col: str) -> str:
    return f'coalesce(from_json({json_col}, \'{{"data": [{{"schema": "VARCHAR", "data": "JSON"}}]}}\').data, []::{_ENTITY}[])'


def _entities_sd(ctx_list: str, pattern: str) -> str:
    return f"list_transform(list_filter({ctx_list}, lambda x: x.schema like '{pattern}'), lambda x: x.data)"


def extraction_exprs(kind: str, columns: list[str]) -> dict[str, str]:
    """SQL for the entities the canonical projection needs, per input shape. Enriched rows
    read the parsed context lists ``x_contexts`` and ``x_derived`` (see :func:`canonical_sql`)."""
    if kind == "enriched":
        ctx = "x_contexts"
        derived = "x_derived"
        unstruct = "case when json_valid(unstruct_event) then json_extract(unstruct_event, '$.data') end"
        return {
            "page_view_id": f"json_extract_string(({_entities_sd(ctx, SCHEMA_WEB_PAGE)})[1], '$.id')",
            "products": _entities_sd(ctx, SCHEMA_PRODUCT),
            "transaction": f"({_entities_sd(ctx, SCHEMA_TRANSACTION)})[1]",
            "iab": f"({_entities_sd(derived, SCHEMA_IAB)})[1]",
            "yauaa": f"({_entities_sd(derived, SCHEMA_YAUAA)} || {_entities_sd(ctx, SCHEMA_YAUAA)})[1]",
            "unstruct_schema": f"json_extract_string({unstruct}, '$.schema')",
            "unstruct_data": f"json_extract({unstruct}, '$.data')",
        }

    def col(key: str) -> str | None:
        return next((c for c in columns if c.startswith(PREFIX[key])), None)

    def first(key: str) -> str:
        name = col(key)
        return (
            f"case when json_valid({quote_ident(name)}) then json_extract({quote_ident(name)}, '$[0]') end"
            if name
            else "null::json"
        )

    product_col = col("product")
    products = (
        f"coalesce(case when json_valid({quote_ident(product_col)}) then "
        f"json_extract({quote_ident(product_col)}, '$[*]') end, []::json[])"
        if product_col
        else "[]::json[]"
    )
    action_col, search_col = col("ecommerce_action"), col("site_search")
    unstruct_schema = "null::varchar"
    unstruct_data = "null::json"
    if action_col or search_col:
        branches_schema, branches_data = [], []
        for name, schema in ((action_col, SCHEMA_ECOMMERCE_ACTION), (search_col, SCHEMA_SITE_SEARCH)):
            if name:
                branches_schema.append(f"when json_valid({quote_ident(name)}) then '{schema}'")
                branches_data.append(f"when json_valid({quote_ident(name)}) then {quote_ident(name)}::json")
        unstruct_schema = f"case {' '.join(branches_schema)} end"
        unstruct_data = f"case {' '.join(branches_data)} end"
    return {
        "page_view_id": f"json_extract_string({first('web_page')}, '$.id')",
        "products": products,
        "transaction": first("transaction"),
        "iab": first("iab"),
        "yauaa": first("yauaa"),
        "unstruct_schema": unstruct_schema,
        "unstruct_data": unstruct_data,
    }


def _field_problem(name: str, kind: str) -> str:
    cast = {
        "timestamp": f"try_cast({name} as timestamptz)",
        "integer": f"try_cast({name} as bigint)",
        "double": f"try_cast({name} as double)",
    }[kind]
    return f"case when {name} is not null and {cast} is null then '{name}: not a {kind} ''' || left({name}, 40) || '''' end"


def canonical_sql(fields_sql: str, kind: str, columns: list[str], source_name: str) -> str:
    """Typed, checked and canonical rows (one per event, quarantined lines included).

    Output columns: every raw.events column except load metadata, plus ``reason``
    (non-null for quarantined lines), ``raw_text``, ``base_event_id`` and ``dedup_ts``.
    Quarantined lines pass through the same projection, one row each (they are never
    exploded, and what would fail on them is guarded by ``reason is null`` or a
    ``try_cast``); only their ``source_file``, ``source_line``, ``raw_text`` and ``reason``
    mean anything. One pass instead of two branches over a materialized CTE: a sixth less
    CPU for the batch (1.15 -> 0.97 s for 189k lines on one thread).
    """
    if kind == "atomic":
        missing = [f for f in NEEDED_FIELDS if f not in columns and f not in JSON_FIELDS]
        pad = ", ".join(f"null::varchar as {f}" for f in missing)
        fields_sql = f"select *{', ' + pad if pad else ''}, null::varchar as contexts, null::varchar as unstruct_event, null::varchar as derived_contexts from ({fields_sql})"
    ex = extraction_exprs(kind, columns)
    problems = ", ".join(_field_problem(n, k) for n, k in TYPED_FIELDS.items())
    json_problems = ", ".join(
        f"case when {n} is not null and not json_valid({n}) then '{n}: invalid JSON' end" for n in JSON_FIELDS
    )
    parsed_columns = (
        f", case when reason is null then {_context_list('contexts')} end as x_contexts"
        f", case when reason is null then {_context_list('derived_contexts')} end as x_derived"
        if kind == "enriched"
        else ""
    )
    ts = "try_cast({} as timestamptz)::timestamp"
    src = source_name.replace("'", "''")
    return f"""
    with fields as ({fields_sql}),
    checked as (
        select *,
            coalesce(shape_error, nullif(concat_ws('; ',
                case when event_id is null then 'event_id is empty' end,
                case when collector_tstamp is null then 'collector_tstamp is empty' end,
                case when event is null then 'event is empty' end,
                case when user_id is null and domain_userid is null and network_userid is null
                     then 'no user_id, domain_userid or network_userid' end,
                {problems}, {json_problems}), '')) as reason
        from fields
    ),
    parsed as (
        select *{parsed_columns}
        from checked
    ),
    good as (
        select *,
            {ex["page_view_id"]} as x_page_view_id,
            {ex["products"]} as x_products,
            {ex["transaction"]} as x_transaction,
            {ex["iab"]} as x_iab,
            {ex["yauaa"]} as x_yauaa,
            {ex["unstruct_schema"]} as x_unstruct_schema,
            {ex["unstruct_data"]} as x_unstruct_data
        from parsed
    ),
    typed as (
        select *,
            case
                when event = 'page_view' then 'page_view'
                when event = 'page_ping' then 'page_ping'
                when event = 'transaction_item' then 'purchase'
                when x_unstruct_schema like '{SCHEMA_ECOMMERCE_ACTION}' then
                    case json_extract_string(x_unstruct_data, '$.type')
                        when 'product_view' then 'product_view'
                        when 'add_to_cart' then 'add_to_cart'
                        when 'remove_from_cart' then 'remove_from_cart'
                        when 'checkout_step' then 'checkout'
                        when 'transaction' then 'purchase'
                        else 'custom' end
                when x_unstruct_schema like '{SCHEMA_SITE_SEARCH}' then 'search'
                else 'custom'
            end as x_event_type
        from good
    ),
    exploded as (
        select *, unnest(case when reason is null and x_event_type = 'purchase' and len(x_products) > 1
                              then list_transform(x_products, lambda p, i: {{'i': i, 'p': p}})
                              else [{{'i': 1, 'p': x_products[1]}}] end) as x_line
        from typed
    )
    select
        case when x_line.i = 1 then event_id else event_id || '#' || x_line.i end as event_id,
        x_event_type as event_type,
        coalesce(event_name, event) as event_name,
        coalesce({ts.format("derived_tstamp")}, {ts.format("collector_tstamp")}) as occurred_at,
        user_id,
        coalesce(domain_userid, network_userid) as anonymous_id,
        domain_sessionid as session_id,
        coalesce(json_extract_string(x_line.p, '$.id'), ti_sku) as item_id,
        coalesce(try_cast(json_extract_string(x_line.p, '$.quantity') as double), try_cast(ti_quantity as double),
                 case when x_line.p is not null then 1.0 end) as quantity,
        coalesce(try_cast(json_extract_string(x_line.p, '$.price') as double), try_cast(ti_price as double)) as price,
        case when x_event_type = 'purchase' then
            coalesce(try_cast(json_extract_string(x_line.p, '$.price') as double), try_cast(ti_price as double))
            * coalesce(try_cast(json_extract_string(x_line.p, '$.quantity') as double), try_cast(ti_quantity as double), 1.0)
        end as revenue,
        coalesce(json_extract_string(x_line.p, '$.currency'),
                 json_extract_string(x_transaction, '$.currency'), ti_currency, tr_currency) as currency,
        coalesce(json_extract_string(x_transaction, '$.transaction_id'), ti_orderid, tr_orderid) as order_id,
        case when x_event_type = 'search' then
            coalesce(array_to_string(json_extract_string(x_unstruct_data, '$.terms[*]'), ' '),
                     json_extract_string(x_unstruct_data, '$.terms')) end as search_query,
        page_url,
        page_referrer as referrer,
        '{src}' as source,
        app_id, platform,
        {ts.format("collector_tstamp")} as collector_tstamp,
        {ts.format("dvce_created_tstamp")} as dvce_created_tstamp,
        x_page_view_id as page_view_id,
        try_cast(domain_sessionidx as integer) as session_index,
        page_title, page_urlhost, page_urlpath, refr_medium, refr_source,
        mkt_medium, mkt_source, mkt_campaign, useragent,
        json_extract_string(x_yauaa, '$.deviceClass') as device_class,
        user_ipaddress, network_userid,
        try_cast(json_extract_string(x_iab, '$.spiderOrRobot') as boolean) as is_flagged_bot,
        try_cast(pp_yoffset_max as integer) as pp_yoffset_max,
        try_cast(doc_height as integer) as doc_height,
        try_cast(br_viewheight as integer) as br_viewheight,
        source_file, source_line,
        case when reason is not null then raw_text end as raw_text, reason,
        event_id as base_event_id,
        {ts.format("collector_tstamp")} as dedup_ts
    from exploded
    """
