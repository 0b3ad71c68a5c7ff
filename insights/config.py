"""Configuration: one YAML file with documented defaults, every key overridable by environment.

Lookup order for the file: ``--config`` argument, then ``INSIGHTS_CONFIG``, then
``insights.yml`` in the working directory; with none of them the embedded defaults apply.
Any key can be overridden with ``INSIGHTS__<SECTION>__<KEY>=value`` (``__`` separates
levels, list items are addressed by index: ``INSIGHTS__SOURCES__0__PATH``). Values from the
environment are read as YAML scalars, so ``8`` is an integer and ``false`` a boolean.

Secrets never live here: AWS keys and the Segment write key come from the environment
(or Airflow connections); a secret-looking key in the file is refused.
"""

from __future__ import annotations

import difflib
import os
import typing
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "INSIGHTS__"
DEFAULT_CONFIG_FILE = "insights.yml"
CANONICAL_EVENT_TYPES = (
    "page_view",
    "product_view",
    "search",
    "add_to_cart",
    "remove_from_cart",
    "checkout",
    "purchase",
    "page_ping",
    "custom",
)
SECRET_KEYS = {"aws_access_key_id", "aws_secret_access_key", "write_key", "api_token", "password"}


class ConfigError(Exception):
    """A configuration problem, worded for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class WarehouseConfig(_Strict):
    path: str = Field("./warehouse/insights.duckdb", description="DuckDB file of the warehouse.")
    threads: int = Field(2, ge=1, description="DuckDB worker threads.")
    memory_limit: str = Field("4GB", description="DuckDB memory limit (spills to disk above).")
    lock_timeout_seconds: float = Field(
        3600,
        ge=0,
        description="How long a step waits for another step (another process, cron job or Airflow task) to "
        "finish writing the warehouse before it gives up.",
    )


class S3Config(_Strict):
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint; AWS when unset.")
    region: str = "us-east-1"


class _SourceBase(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z][A-Za-z0-9_]*$", description="Unique source name.")
    path: str = Field(..., description="Local folder/file or s3://bucket/prefix.")
    schema_drift: Literal["stop", "load"] = Field(
        "stop",
        description="A mapped column missing from a batch: stop (load nothing, name the column) or load "
        "(the column as empty, a warning on the load; rows that need it are quarantined).",
    )
    pattern: str = Field("**/*", description="Glob of files below path.")
    enabled: bool = True


class SnowplowEnrichedSource(_SourceBase):
    kind: Literal["snowplow_enriched"]
    pattern: str = "**/*.tsv*"


class SnowplowAtomicSource(_SourceBase):
    kind: Literal["snowplow_atomic"]
    pattern: str = "**/*.[cp][sa][vr]*"


class StreamMapping(_Strict):
    """How one Singer stream (or an events file) maps onto the canonical event schema."""

    columns: dict[str, str] = Field(
        default_factory=dict, description="canonical name -> source column (dots for nesting)"
    )
    event_types: dict[str, str] = Field(default_factory=dict, description="source value -> canonical event type")
    event_type: str | None = Field(None, description="Fixed event type for every record.")
    explode: str | None = Field(
        None,
        description="A column holding a JSON array (an order's line items): each element becomes an event of its "
        "own, and columns mapped as '<explode>.<key>' are read from the element.",
    )

    @field_validator("event_types")
    @classmethod
    def _known_types(cls, value: dict[str, str]) -> dict[str, str]:
        for source_value, canonical in value.items():
            if canonical not in CANONICAL_EVENT_TYPES:
                raise ValueError(
                    f"'{source_value}' maps to unknown event type '{canonical}'; "
                    f"expected one of {', '.join(CANONICAL_EVENT_TYPES)}"
                )
        return value


class SingerSource(_SourceBase):
    kind: Literal["singer_jsonl"]
    pattern: str = "**/*.jsonl*"
    streams: dict[str, StreamMapping] = Field(
        default_factory=dict,
        description="Streams that carry events; other streams are kept raw only.",
    )


class EventsFileSource(_SourceBase, StreamMapping):
    kind: Literal["events_file"]
    pattern: str = "**/*.[cp][sa][vr]*"


class CatalogSource(_SourceBase):
    kind: Literal["catalog"]
    columns: dict[str, str] = Field(default_factory=dict)
    stream: str | None = Field(
        None, description="In Singer files: the stream whose RECORDs are the items (default: every stream)."
    )


Source = Annotated[
    SnowplowEnrichedSource | SnowplowAtomicSource | SingerSource | EventsFileSource | CatalogSource,
    Field(discriminator="kind"),
]


class IngestConfig(_Strict):
    batch_bytes: int = Field(
        32 * 1024 * 1024,
        ge=1024,
        description="Stored (compressed) bytes per load batch (one transaction, one validation).",
    )
    parse_threads: int = Field(2, ge=1)
    batches_ahead: int = Field(
        2,
        ge=1,
        description="Batches read, parsed and staged on helper threads while one loads (each holds a batch in memory).",
    )


class ValidationConfig(_Strict):
    enabled: bool = True
    min_timestamp: date = Field(date(2000, 1, 1), description="Older events are implausible.")
    max_future_hours: float = Field(24.0, ge=0, description="Clock-skew allowance.")
    max_price: float = Field(1_000_000.0, gt=0)
    warn_only: list[str] = Field(default_factory=list, description="Expectation names demoted from error to warning.")
    max_data_lag_hours: float = Field(
        24.0,
        gt=0,
        description="Scoring and the run report warn when the newest event is older than this before the as-of instant.",
    )


DEFAULT_EVENT_WEIGHTS = {
    "product_view": 1.0,
    "add_to_cart": 3.0,
    "remove_from_cart": -1.0,
    "checkout": 4.0,
    "purchase": 6.0,
}


# User agents of crawlers, monitors and headless browsers (case-insensitive), the usual
# suspects of the IAB list and of Snowplow's bot filter.
BOT_USERAGENT_PATTERN = (
    "(?i)(bot|crawl|slurp|spider|archiv|spinn|sniff|seo|audit|survey|pingdom|worm|capture|(browser|screen)shots|"
    "analyz|index|thumb|check|facebookexternalhit|phantomjs|headlesschrome|python-requests|curl/|wget|"
    "go-http-client|semalt)"
)


class TransformConfig(_Strict):
    """Knobs of the dbt models; each becomes the dbt var ``insights__<name>``."""

    app_ids: list[str] = Field(default_factory=list, description="Keep only events of these app ids (all when empty).")
    session_timeout_minutes: int = Field(30, ge=1, description="Inactivity that starts a new session.")
    max_session_days: float = Field(3.0, gt=0, description="Events later than this after a session start are dropped.")
    days_late_allowed: float = Field(
        3.0, gt=0, description="Events collected later than this after creation are dropped."
    )
    lookback_hours: float = Field(1.0, ge=0, description="Incremental models reprocess what was loaded this recently.")
    heartbeat_seconds: int = Field(10, ge=1, description="Page-ping interval of the tracker.")
    min_visit_seconds: int = Field(5, ge=0, description="Time before the tracker's first page ping.")
    bot_max_events_per_minute: int = Field(
        20, ge=1, description="Non-ping events per visitor-minute above this are a bot."
    )
    bot_useragent_pattern: str = Field(
        BOT_USERAGENT_PATTERN, description="Regular expression (RE2) of the user agents of crawlers and monitors."
    )
    conversion_event: str = Field("purchase", description="The key conversion: an event type or a custom event name.")
    funnel_steps: list[str] = Field(
        default_factory=lambda: ["product_view", "add_to_cart", "checkout", "purchase"], min_length=2
    )
    funnel_window_hours: float = Field(24.0, gt=0, description="Later funnel steps count within this of the first.")
    half_life_days: float = Field(14.0, gt=0, description="Half-life of the time decay of affinities and interactions.")
    event_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    trending_recent_days: int = Field(3, ge=1)
    trending_baseline_days: int = Field(28, ge=2)
    unit_tests: bool = Field(
        False,
        description="Also run the dbt project's unit tests (fixed fixtures that check the models' SQL, not the "
        "data) in every build. They are for development and CI (`make test` runs them); a scheduled build skips "
        "them, as dbt advises. Not a dbt var.",
    )

    def model_settings(self) -> dict[str, Any]:
        """The settings that shape the models' data (all but ``unit_tests``): the dbt vars,
        and part of a trained model's version."""
        return self.model_dump(exclude={"unit_tests"})

    def dbt_vars(self) -> dict[str, Any]:
        return {f"insights__{name}": value for name, value in self.model_settings().items()}


class WindowsConfig(_Strict):
    purchase_days: int = Field(14, ge=1)
    churn_days: int = Field(30, ge=1)
    value_days: int = Field(30, ge=1)


class MLConfig(_Strict):
    """Knobs of the learning step (``models_ml``): training, scoring and publication."""

    model_dir: str = Field("./warehouse/models", description="Folder of trained model versions (vectors, boosters).")
    recommendations: int = Field(10, ge=1, le=500, description="Items recommended per user.")
    exclude_purchased: bool = Field(True, description="Never recommend what the user already bought.")
    max_per_category: int = Field(3, ge=1, description="At most this many recommended items per leaf category.")
    similar_items: int = Field(10, ge=1, le=500, description="Similar items kept per item.")
    trending_items: int = Field(20, ge=1, description="Items per trending list (global and per category).")
    min_user_items: int = Field(
        2, ge=1, description="Users with fewer distinct items get trending items of their categories instead."
    )
    min_item_users: int = Field(
        2, ge=1, description="Items with fewer users are scored from their catalog text (cold start)."
    )
    reuse_picks_hours: float = Field(
        24,
        ge=0,
        description="Scoring keeps each user's model picks; a later run reuses them for users whose history "
        "has no new event, for at most this many hours (their decayed weights drift meanwhile); 0 recomputes "
        "everyone every run.",
    )
    als_factors: list[int] = Field(default_factory=lambda: [16, 32, 64], min_length=1)
    als_regularization: list[float] = Field(default_factory=lambda: [0.01, 0.1], min_length=1)
    als_alpha: list[float] = Field(default_factory=lambda: [1.0, 5.0, 20.0], min_length=1)
    als_iterations: int = Field(15, ge=1)
    als_screen_iterations: int = Field(
        5,
        ge=1,
        description="Every grid candidate is first fitted this many iterations on the time split; only the "
        "best `als_finalists` are trained on to `als_iterations` (the same fit as from scratch) and compared.",
    )
    als_finalists: int = Field(3, ge=1, description="Grid candidates trained to full iterations after screening.")
    als_grow_factors: bool = Field(
        True,
        description="When screening, factor counts are screened smallest first, and larger ones only while each "
        "count's best screened NDCG@10 (then HR@10) beats the count before it, each with only the regularization "
        "and alpha of the count before it's `als_finalists` best; false screens the whole grid.",
    )
    als_warm_iterations: int = Field(
        5,
        ge=0,
        description="The final fit on every interaction starts from the item vectors of the candidate the time "
        "split chose (its users solved exactly for them) and runs this many iterations; 0 fits from scratch to "
        "`als_iterations`. At 10M events 5 scored as well as 15 from scratch a week later, in a third of the time.",
    )
    als_processes: int = Field(
        2,
        ge=1,
        description="Worker processes fitting ALS candidates at once (from 100k user-item pairs on the time "
        "split; below it a fit takes less than starting a worker). implicit's fit does not speed up in threads.",
    )
    als_screen_min_interactions: int = Field(
        500_000,
        ge=0,
        description="Screening starts at this many (user, item) pairs on the time split; below it every "
        "candidate is fitted fully (cheap there, and few validation users make short fits a noisy guide).",
    )
    # Below 1: at 1 the model's score counts for nothing, every item outside the user's
    # history ties at zero, and ranking those ties cost 90 times a normal blend.
    history_weights: list[Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 0.9],
        min_length=1,
        description="Candidate shares of the user's own history in the score (each in [0, 1)), chosen on the time split.",
    )
    validation_days: int = Field(7, ge=1, description="Last days held out to choose ALS parameters.")
    validation_max_users: int = Field(
        20_000,
        ge=100,
        description="ALS candidates are scored on at most this many of the users active after the split "
        "(a fixed random sample): the standard error of NDCG@10 on 20k users is about 0.002.",
    )
    text_dimensions: int = Field(48, ge=2, description="Size of the catalog-text embedding (TF-IDF + SVD).")
    training_cutoffs: int = Field(5, ge=2, description="Past cutoffs that give propensity training examples.")
    cutoff_step_days: int = Field(7, ge=1, description="Days between training cutoffs.")
    min_class_examples: int = Field(
        100, ge=1, description="Fewer positives or negatives than this: a transparent heuristic instead of a model."
    )
    publish_tolerance: float = Field(
        0.02, ge=0, le=1, description="A new model is published unless its key metric is worse by more than this."
    )
    interests: int = Field(5, ge=1, description="Top interests reported per user.")
    report_dir: str = Field("./out/evaluation", description="Where `insights evaluate` writes its JSON and Markdown.")
    seed: int = 42


class CohortDefinition(_Strict):
    """One cohort: a filter over ``user_insights`` and how its CSV looks."""

    name: str = Field(..., min_length=1, max_length=120)
    description: str = ""
    where: str = Field(..., min_length=1, description="Filter in the cohort filter language (README).")
    columns: list[str] | None = Field(None, description="Columns of the CSV, in order (default: the standard set).")
    sort: str = Field("purchase_probability desc", description="'<column> [asc|desc]', comma-separated.")
    limit: int | None = Field(None, ge=1, description="At most this many users (after sorting).")
    holdout: float = Field(0.0, ge=0, lt=1, description="Share held out by a stable hash of user and cohort.")
    per_category: bool = Field(
        False, description="One cohort per top-level category; ':category' in the filter and '{category}' in the name."
    )


class CohortsConfig(_Strict):
    defaults: bool = Field(True, description="Include the shipped cohorts (README) besides the ones defined here.")
    definitions: list[CohortDefinition] = Field(default_factory=list)
    folder: str | None = Field("./cohorts", description="More definitions: every *.yml file in this folder.")
    out_dir: str = Field("./out/cohorts", description="Where the CSV reports and the summary go.")


class DatastoreConfig(_Strict):
    uri: str = Field("./datastore", description="Local folder or s3://bucket/prefix.")
    retention: int = Field(7, ge=1, description="Partitions kept per table.")
    multipart_threshold_mb: int = Field(64, ge=5, description="S3 uploads above this size are multipart.")


class SegmentConfig(_Strict):
    enabled: bool = True
    dry_run: bool = Field(True, description="Write what would be sent to dry_run_path instead of sending.")
    dry_run_path: str = "./out/segment_dry_run.jsonl"
    endpoint: str = Field("https://api.segment.io/v1/batch", description="EU workspaces: events.eu1.segmentapis.com.")
    write_key_env: str = Field("SEGMENT_WRITE_KEY", description="Environment variable holding the write key.")
    trait_prefix: str = Field("insights_", description="Prefix of every trait name.")
    traits: dict[str, str] = Field(
        default_factory=lambda: {
            "purchase_probability": "purchase_probability",
            "purchase_percentile": "purchase_percentile",
            "churn_probability": "churn_probability",
            "predicted_revenue": "predicted_revenue",
            "segment": "segment",
            "cohorts": "cohorts",
            "top_interests": "top_interests",
            "recommended_items": "recommended_items",
        },
        description="Trait name (before the prefix) -> user_insights column.",
    )
    decimals: int = Field(2, ge=0, le=6, description="Probabilities and amounts are rounded so noise is no change.")
    # Every probability that changes shifts the others' percentile ranks by hundredths: at
    # 10M events an hour with no new event changed 176,312 of 190,156 users' traits at two
    # decimals (174,324 by their percentile alone); with whole percentiles, 33,054.
    trait_decimals: dict[str, Annotated[int, Field(ge=0, le=6)]] = Field(
        default_factory=lambda: {"purchase_percentile": 0},
        description="Decimals of given traits (trait name before the prefix), instead of `decimals`.",
    )
    full_resync: bool = Field(False, description="Send every user, changed or not.")
    max_batch_bytes: int = Field(500_000, ge=1_000, le=500_000)
    max_batch_messages: int = Field(2_500, ge=1, le=2_500)
    max_message_bytes: int = Field(32_000, ge=500, le=32_000)
    max_retries: int = Field(5, ge=0, description="Retries of a batch after 429, 5xx or a timeout.")
    backoff_seconds: float = Field(1.0, ge=0, description="First retry delay; doubles each time.")
    max_wait_seconds: float = Field(60.0, ge=0, description="Longest single wait, Retry-After included.")
    timeout_seconds: float = Field(10.0, gt=0)
    delete_on_forget: bool = Field(
        True,
        description="`insights forget` asks Segment (its Public API) to delete the users it was sent; "
        "false: delete them in Segment yourself.",
    )
    api_url: str = Field(
        "https://api.segmentapis.com",
        description="Segment's Public API. EU workspaces: https://eu1.api.segmentapis.com.",
    )
    api_token_env: str = Field(
        "SEGMENT_API_TOKEN", description="Environment variable holding a Public API token (deletion requests)."
    )
    regulation_type: Literal[
        "SUPPRESS_WITH_DELETE", "DELETE_ONLY", "SUPPRESS_WITH_DELETE_INTERNAL", "DELETE_INTERNAL"
    ] = Field(
        "SUPPRESS_WITH_DELETE",
        description="The deletion Segment is asked for: with or without suppressing new data about the "
        "user, in Segment and its destinations or in Segment only (_INTERNAL).",
    )

    @model_validator(mode="after")
    def _decimals_of_known_traits(self) -> SegmentConfig:
        # The default names purchase_percentile, which a narrower `traits` may leave out.
        unknown = sorted(set(self.trait_decimals) - set(self.traits))
        if unknown and "trait_decimals" in self.model_fields_set:
            raise ValueError(
                f"trait_decimals names trait(s) not in segment.traits: {', '.join(unknown)}; "
                f"traits: {', '.join(sorted(self.traits))}"
            )
        return self


class BoostRule(_Strict):
    category: str | None = None
    brand: str | None = None
    item_id: str | None = None
    factor: float = Field(..., gt=0)


class PinRule(_Strict):
    item_id: str
    position: int = Field(..., ge=1)


class MerchandisingRules(_Strict):
    exclude_out_of_stock: bool = True
    exclude_categories: list[str] = Field(default_factory=list, description="A category path or any prefix of it.")
    exclude_items: list[str] = Field(default_factory=list)
    boost: list[BoostRule] = Field(default_factory=list, description="Multiply the score of matching items.")
    pin: list[PinRule] = Field(default_factory=list, description="Put an item at a position (1 = first).")


class ServingConfig(_Strict):
    path: str = Field("./warehouse/recommendations.sqlite", description="The published recommendation table.")
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    token_env: str = Field("INSIGHTS_API_TOKEN", description="Variable with the bearer token; no token, no auth.")
    default_limit: int = Field(10, ge=1)
    max_limit: int = Field(100, ge=1)
    rules: MerchandisingRules = Field(default_factory=MerchandisingRules)


class ReportConfig(_Strict):
    out_dir: str = Field("./out/reports", description="Where the HTML run report is written (also to the datastore).")


class AirflowConfig(_Strict):
    """How the DAGs in ``dags/`` schedule the pipeline and where their credentials come from."""

    ingest_schedule: str | None = Field("@hourly", description="clickstream_ingest: cron or preset; null: manual.")
    refresh_schedule: str | None = Field(
        "0 */4 * * *", description="insights_refresh on a clock (cron or preset); null: only on new data."
    )
    refresh_on_new_data: bool = Field(True, description="Also start insights_refresh when ingest loaded new events.")
    training_schedule: str | None = Field("@daily", description="insights_training: cron or preset; null: manual.")
    start_date: str = Field("2026-01-01", description="First data interval of every DAG (UTC); catchup is off.")
    retries: int = Field(2, ge=0, description="Retries of every task.")
    retry_delay_minutes: float = Field(5, gt=0, description="First retry delay; doubles each retry.")
    max_retry_delay_minutes: float = Field(60, gt=0)
    task_timeout_minutes: float = Field(180, gt=0, description="A task running longer fails (and retries).")
    pool: str | None = Field(
        None, description="Airflow pool for the warehouse-writing tasks (create it first: airflow pools set)."
    )
    aws_conn_id: str | None = Field(
        None, description="Airflow connection (type aws) with the S3 credentials; else the environment."
    )
    segment_conn_id: str | None = Field(
        None, description="Airflow connection whose password is the Segment write key; else the environment."
    )


class SampleConfig(_Strict):
    users: int = Field(2000, ge=1)
    days: int = Field(60, ge=1)
    seed: int = 7
    out: str = "./data_samples"


# The longest feature window of the user features (dim_users: 7, 30 and 90 days).
FEATURE_HISTORY_DAYS = 90


class PrivacyConfig(_Strict):
    retention_days: int | None = Field(
        None,
        ge=1,
        description="Raw events older than this (and the models' rows made from them), quarantined lines, "
        "Singer records and Segment's sync log are deleted at every ingest; none: kept for good.",
    )


def cutoff_steps(window_days: int, ml: MLConfig) -> range:
    """The training cutoffs of a propensity with an outcome window of ``window_days``, as
    multiples of ``ml.cutoff_step_days`` back from the anchor's day: from the first grid
    point far enough back for the window to be complete, ``ml.training_cutoffs`` of them."""
    first = -(-window_days // ml.cutoff_step_days)  # ceil
    return range(first, first + ml.training_cutoffs)


def history_days_needed(windows: WindowsConfig, ml: MLConfig) -> int:
    """Days of events training reads back from its anchor: the oldest propensity cutoff
    and the longest feature window before it."""
    back = max(
        ml.cutoff_step_days * cutoff_steps(window, ml)[-1]
        for window in (windows.purchase_days, windows.churn_days, windows.value_days)
    )
    return back + FEATURE_HISTORY_DAYS + 1


class Config(_Strict):
    warehouse: WarehouseConfig = Field(default_factory=WarehouseConfig)
    s3: S3Config = Field(default_factory=S3Config)
    sources: list[Source] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    transform: TransformConfig = Field(default_factory=TransformConfig)
    windows: WindowsConfig = Field(default_factory=WindowsConfig)
    ml: MLConfig = Field(default_factory=MLConfig)
    datastore: DatastoreConfig = Field(default_factory=DatastoreConfig)
    segment: SegmentConfig = Field(default_factory=SegmentConfig)
    cohorts: CohortsConfig = Field(default_factory=CohortsConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    airflow: AirflowConfig = Field(default_factory=AirflowConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)

    # Where the config came from, for error messages and relative paths; not a YAML key.
    source_file: str | None = Field(None, exclude=True)

    @field_validator("sources")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        seen: set[str] = set()
        for src in value:
            if src.name in seen:
                raise ValueError(f"source name '{src.name}' is used twice")
            seen.add(src.name)
        return value

    @model_validator(mode="after")
    def _retention_keeps_what_training_reads(self) -> Config:
        days = self.privacy.retention_days
        needed = history_days_needed(self.windows, self.ml)
        if days is not None and days < needed:
            raise ValueError(
                f"privacy.retention_days {days} is shorter than the {needed} days of events training reads "
                f"({FEATURE_HISTORY_DAYS}-day features at the oldest of ml.training_cutoffs {self.ml.training_cutoffs} "
                f"cutoffs, ml.cutoff_step_days {self.ml.cutoff_step_days} apart, behind the outcome windows); "
                f"keep at least {needed} days"
            )
        return self

    def resolve(self, path: str) -> str:
        """A path from the config, relative to the config file's folder (URIs untouched)."""
        if "://" in path or os.path.isabs(path) or not self.source_file:
            return path
        return str(Path(self.source_file).resolve().parent / path)


def default_sources(sample_dir: str = "./data_samples") -> list[dict[str, Any]]:
    """The sources of the committed sample site, used when a config names none."""
    return [
        {"name": "web", "kind": "snowplow_enriched", "path": f"{sample_dir}/snowplow_enriched"},
        {
            "name": "app",
            "kind": "singer_jsonl",
            "path": f"{sample_dir}/singer",
            "streams": {"events": SAMPLE_APP_STREAM},
        },
        {"name": "catalog", "kind": "catalog", "path": f"{sample_dir}/catalog"},
    ]


# The sample's mobile app exports Amplitude-style events through a Meltano tap.
SAMPLE_APP_STREAM: dict[str, Any] = {
    "columns": {
        "event_id": "insert_id",
        "event_name": "event_type",
        "occurred_at": "event_time",
        "user_id": "user_id",
        "anonymous_id": "device_id",
        "session_id": "session_id",
        "item_id": "event_properties.product_id",
        "quantity": "event_properties.quantity",
        "price": "event_properties.price",
        "revenue": "event_properties.revenue",
        "currency": "event_properties.currency",
        "order_id": "event_properties.order_id",
        "search_query": "event_properties.query",
        "page_url": "event_properties.screen",
    },
    "event_types": {
        "Screen Viewed": "page_view",
        "Product Viewed": "product_view",
        "Products Searched": "search",
        "Product Added": "add_to_cart",
        "Product Removed": "remove_from_cart",
        "Checkout Started": "checkout",
        "Product Purchased": "purchase",
    },
}


def _env_overrides(raw: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if not parts:
            continue
        try:
            value = yaml.safe_load(environ[name])
        except yaml.YAMLError:
            value = environ[name]
        node: Any = raw
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise ConfigError(
                        f"environment variable {name}: '{part}' is not an index of that list (it has {len(node)} items)"
                    )
                if last:
                    node[int(part)] = value
                else:
                    node = node[int(part)]
            else:
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
    return raw


def _find_secrets(node: Any, where: str = "") -> str | None:
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{where}.{key}" if where else str(key)
            if str(key).lower() in SECRET_KEYS:
                return path
            found = _find_secrets(value, path)
            if found:
                return found
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found = _find_secrets(value, f"{where}.{i}")
            if found:
                return found
    return None


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation holds (through lists, unions and Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _known_keys(parent: list[Any]) -> list[str]:
    """The keys a mapping at ``parent`` (a validation error's location) may hold. List
    indexes and union tags in the location leave the models as they are."""
    models: list[type[BaseModel]] = [Config]
    for part in parent:
        inner = [
            m
            for model in models
            if str(part) in model.model_fields
            for m in _models_in(model.model_fields[str(part)].annotation)
        ]
        if inner:
            models = inner
    return sorted({name for model in models for name in model.model_fields})


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"] if not str(p).startswith("function-after"))
    kind = error["type"]
    if kind == "extra_forbidden":
        known = _known_keys([p for p in error["loc"][:-1] if not str(p).startswith("function-after")])
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1, cutoff=0.7)
        return f"unknown key '{key}'" + (f" (did you mean '{close[0]}'?)" if close else "")
    if kind == "missing":
        return f"missing required key '{key}'"
    if kind == "union_tag_invalid":
        return f"key '{key}': {error['msg']}"
    if not key and kind == "value_error":  # a check across sections: its message names the keys
        return str(error["msg"]).removeprefix("Value error, ")
    got = error.get("input")
    shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
    return f"key '{key}': {error['msg']} (got {shown})"


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate the configuration.

    Raises ConfigError naming the file, the key and what was expected.
    """
    environ = dict(os.environ if environ is None else environ)
    explicit = path or environ.get("INSIGHTS_CONFIG")
    file = Path(explicit) if explicit else Path(DEFAULT_CONFIG_FILE)
    raw: dict[str, Any] = {}
    if file.exists():
        try:
            loaded = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: expected a mapping of sections at the top level")
        raw = loaded
    elif explicit:
        raise ConfigError(f"config file not found: {file}")
    origin = str(file) if file.exists() else "(embedded defaults)"

    secret = _find_secrets(raw)
    if secret:
        raise ConfigError(
            f"{origin}: key '{secret}' looks like a secret; secrets come from the environment "
            "or an Airflow connection, never from the config file"
        )
    raw = _env_overrides(raw, environ)
    if not raw.get("sources"):
        sample_out = (raw.get("sample") or {}).get("out", SampleConfig().out)
        raw["sources"] = default_sources(sample_out)
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_describe(e) for e in exc.errors())
        env_keys = [k for k in environ if k.startswith(ENV_PREFIX)]
        hint = f" (environment overrides in effect: {', '.join(env_keys)})" if env_keys else ""
        raise ConfigError(f"{origin}: {problems}{hint}") from None
    config.source_file = str(file) if file.exists() else None
    return config
