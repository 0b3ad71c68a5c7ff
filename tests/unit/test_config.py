from pathlib import Path

import pytest

from insights.config import Config, ConfigError, load_config


def test_defaults_apply_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load_config(environ={})
    assert config.warehouse.path == "./warehouse/insights.duckdb"
    assert config.windows.purchase_days == 14
    assert [s.kind for s in config.sources] == ["snowplow_enriched", "singer_jsonl", "catalog"]


def test_environment_overrides_nested_and_list_keys(tmp_path: Path) -> None:
    cfg = tmp_path / "insights.yml"
    cfg.write_text("sources:\n  - {name: web, kind: snowplow_enriched, path: ./a}\n")
    env = {
        "INSIGHTS__WAREHOUSE__THREADS": "4",
        "INSIGHTS__SOURCES__0__PATH": "s3://bucket/x",
        "INSIGHTS__SEGMENT__DRY_RUN": "false",
    }
    config = load_config(cfg, environ=env)
    assert config.warehouse.threads == 4
    assert config.sources[0].path == "s3://bucket/x"
    assert config.segment.dry_run is False


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.yml"
    cfg.write_text("warehouse:\n  pth: x.duckdb\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={})
    assert "bad.yml" in str(err.value) and "warehouse.pth" in str(err.value)
    assert "(did you mean 'path'?)" in str(err.value)


@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        ("ml:\n  recomendations: 5\n", "unknown key 'ml.recomendations' (did you mean 'recommendations'?)"),
        ("warehous:\n  path: x\n", "unknown key 'warehous' (did you mean 'warehouse'?)"),
        ("serving:\n  rules:\n    pinn: []\n", "unknown key 'serving.rules.pinn' (did you mean 'pin'?)"),
        ("sources:\n  - {name: w, kind: snowplow_enriched, paht: ./a}\n", "sources.0.snowplow_enriched.paht' (did you mean 'path'?)"),
        (
            "sources:\n  - {name: a, kind: singer_jsonl, path: ./a, streams: {events: {column: {}}}}\n",
            "streams.events.column' (did you mean 'columns'?)",
        ),
        ("ml:\n  zzz: 5\n", "unknown key 'ml.zzz' (environment"),
    ],
)  # fmt: skip
def test_an_unknown_key_suggests_the_closest_known_one(tmp_path: Path, yaml_text: str, message: str) -> None:
    cfg = tmp_path / "insights.yml"
    cfg.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(cfg, environ={"INSIGHTS__WAREHOUSE__THREADS": "2"})
    assert message in str(err.value)


def test_wrong_type_says_what_was_expected(tmp_path: Path) -> None:
    cfg = tmp_path / "insights.yml"
    cfg.write_text("windows:\n  purchase_days: soon\n")
    with pytest.raises(ConfigError, match=r"windows.purchase_days.*integer.*'soon'"):
        load_config(cfg, environ={})


def test_a_history_weight_must_leave_the_model_a_share(tmp_path: Path) -> None:
    cfg = tmp_path / "insights.yml"
    cfg.write_text("ml:\n  history_weights: [0.0, 0.5, 1.0]\n")
    with pytest.raises(ConfigError, match=r"ml.history_weights.2.*less than 1"):
        load_config(cfg, environ={})
    cfg.write_text("ml:\n  history_weights: [0.0, 0.5, 0.95]\n")
    assert load_config(cfg, environ={}).ml.history_weights == [0.0, 0.5, 0.95]


def test_bad_env_value_is_reported_with_the_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "insights.yml"
    cfg.write_text("{}\n")
    with pytest.raises(ConfigError, match="INSIGHTS__WAREHOUSE__THREADS"):
        load_config(cfg, environ={"INSIGHTS__WAREHOUSE__THREADS": "many"})


def _from_text(tmp_path: Path, text: str) -> Config:
    cfg = tmp_path / "insights.yml"
    cfg.write_text(text)
    return load_config(cfg, environ={})


def test_unknown_source_kind_and_event_type(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sources.0"):
        _from_text(tmp_path, "sources:\n  - {name: x, kind: kafka, path: ./x}\n")
    with pytest.raises(ConfigError, match="unknown event type 'purchased'"):
        _from_text(tmp_path, "sources:\n  - {name: x, kind: events_file, path: ./x, event_types: {Buy: purchased}}\n")


def test_duplicate_source_names_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="used twice"):
        _from_text(tmp_path, "sources:\n  - {name: a, kind: catalog, path: x}\n  - {name: a, kind: catalog, path: y}\n")


def test_trait_decimals_must_name_synced_traits(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="segment.*trait_decimals names trait.*purchase_percentil;"):
        _from_text(tmp_path, "segment:\n  trait_decimals: {purchase_percentil: 0}\n")
    # The default (whole purchase percentiles) is no error when the trait is not synced.
    config = _from_text(tmp_path, "segment:\n  traits: {segment: segment}\n")
    assert config.segment.trait_decimals == {"purchase_percentile": 0}


def test_secrets_are_refused_in_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "insights.yml"
    cfg.write_text("segment:\n  write_key: abc123\n")
    with pytest.raises(ConfigError, match="segment.write_key.*secret") as err:
        load_config(cfg, environ={})
    assert "abc123" not in str(err.value)


def test_missing_explicit_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found.*nope.yml"):
        load_config(tmp_path / "nope.yml", environ={})


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "sub" / "insights.yml"
    cfg.parent.mkdir()
    cfg.write_text("warehouse: {path: ./w.duckdb}\n")
    config = load_config(cfg, environ={})
    assert config.resolve(config.warehouse.path) == str(tmp_path / "sub" / "w.duckdb")
    assert config.resolve("s3://b/p") == "s3://b/p"


def test_dbt_project_var_defaults_match_the_config_defaults() -> None:
    """dbt run on its own (without the CLI passing vars) behaves as the documented defaults."""
    import yaml

    from insights.config import Config

    project = yaml.safe_load((Path(__file__).resolve().parents[2] / "dbt_project" / "dbt_project.yml").read_text())
    declared = project["vars"]
    for name, value in Config().transform.dbt_vars().items():
        if name in declared:
            assert declared[name] == value, name
    assert "insights__bot_useragent_pattern" in declared


def test_running_unit_tests_is_no_model_setting() -> None:
    """transform.unit_tests says what a build runs, not what the models hold: it is neither a
    dbt var (which would make dbt parse again) nor part of a trained model's version."""
    config = load_config(environ={"INSIGHTS__TRANSFORM__UNIT_TESTS": "true"})
    assert config.transform.unit_tests is True
    assert config.transform.model_settings() == load_config(environ={}).transform.model_settings()
    assert "unit_tests" not in config.transform.model_settings()
    assert not any("unit_tests" in name for name in config.transform.dbt_vars())
