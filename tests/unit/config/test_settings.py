"""Settings: HYDRANT_* only, clear errors naming the variable, Faust's env names ignored."""

from __future__ import annotations

import os
import re

import pytest

from app.config.settings import load_settings, parse_broker_url
from app.errors import SettingsError
from app.system.cpus import split_cpus


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:

    for name in list(os.environ):
        if name.startswith("HYDRANT_"):
            monkeypatch.delenv(name)


def test_defaults_are_safe_for_dev() -> None:
    s = load_settings()
    assert s.web_host == "127.0.0.1"
    assert s.web_port == 6066
    assert s.partitions == 4
    assert s.broker is None and s.bootstrap_servers == []
    assert s.api_token is None
    assert s.pipeline.name == "pipeline.yaml" and s.pipeline.is_file()


def test_reads_hydrant_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRANT_BROKER", "kafka://k1:9092,k2:9093")
    monkeypatch.setenv("HYDRANT_WEB_PORT", "7000")
    monkeypatch.setenv("HYDRANT_LOG_LEVEL", "debug")
    monkeypatch.setenv("HYDRANT_API_TOKEN", "s3cret")
    s = load_settings()
    assert s.bootstrap_servers == ["k1:9092", "k2:9093"]
    assert s.faust_broker_url == "kafka://k1:9092;k2:9093"
    assert s.web_port == 7000
    assert s.log_level == "DEBUG"
    assert s.api_token is not None and s.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("HYDRANT_WEB_PORT", "99999", "HYDRANT_WEB_PORT: Input should be less than or equal to 65535"),
        ("HYDRANT_WEB_PORT", "http", "HYDRANT_WEB_PORT: Input should be a valid integer"),
        ("HYDRANT_PARTITIONS", "0", "HYDRANT_PARTITIONS: Input should be greater than or equal to 1"),
        ("HYDRANT_LOG_LEVEL", "loud", "HYDRANT_LOG_LEVEL: Input should be 'DEBUG'"),
        ("HYDRANT_BROKER", "kafka://nohost", "HYDRANT_BROKER: Value error, expected kafka://host:port"),
        ("HYDRANT_SECURITY_PROTOCOL", "TLS", "HYDRANT_SECURITY_PROTOCOL: Input should be 'PLAINTEXT'"),
        ("HYDRANT_SSL_CAFILE", "/nonexistent/ca.pem", "HYDRANT_SSL_CAFILE: Value error, file not found"),
        ("HYDRANT_SERVING_CPUS", "one", "HYDRANT_SERVING_CPUS: Value error, bad CPU list 'one'"),
        ("HYDRANT_SERVING_CPUS", "3-1", "HYDRANT_SERVING_CPUS: Value error, bad CPU range '3-1'"),
        ("HYDRANT_SERVING_CPUS", "last:0", "HYDRANT_SERVING_CPUS: Value error, bad 'last:0'"),
    ],
)
def test_invalid_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert message in str(err.value)


def test_sasl_needs_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYDRANT_SECURITY_PROTOCOL", "SASL_SSL")
    with pytest.raises(SettingsError, match="HYDRANT_SASL_USERNAME and HYDRANT_SASL_PASSWORD are required"):
        load_settings()


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("kafka://a:1", ["a:1"]),
        ("a:1,b:2", ["a:1", "b:2"]),
        ("kafka://a:1,kafka://b:2", ["a:1", "b:2"]),
        (" kafka://10.0.0.1:9092 ", ["10.0.0.1:9092"]),
    ],
)
def test_broker_url_forms(url: str, hosts: list[str]) -> None:
    assert parse_broker_url(url) == hosts


def test_faust_environment_names_do_not_override(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Faust reads BROKER_URL, WEB_PORT, APP_DATADIR... and lets them win; Hydrant must not."""
    from app.config.spec import load_pipeline
    from app.faust_ext.app import create_app

    monkeypatch.setenv("BROKER_URL", "kafka://evil:1")
    monkeypatch.setenv("WEB_PORT", "1234")
    monkeypatch.setenv("APP_DATADIR", "/tmp/evil")
    monkeypatch.setenv("WEB_BIND", "0.0.0.0")
    settings = load_settings(broker="kafka://good:9092", web_port=7777, data_dir=tmp_path)
    app = create_app(settings, load_pipeline(settings.pipeline))
    assert [str(u) for u in app.conf.broker] == ["kafka://good:9092"]
    assert app.conf.web_port == 7777
    assert app.conf.web_bind == "127.0.0.1"
    assert str(app.conf.datadir).startswith(str(tmp_path))
    assert app.conf.processing_guarantee.value == "at_least_once"
    assert app.conf.store.scheme == "hydrant"  # app/faust_ext/tables.py ChangelogStore, on RocksDB


def test_tansu_profile_shortens_group_timeouts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from app.config.spec import load_pipeline
    from app.faust_ext.app import create_app

    settings = load_settings(broker="kafka://b:1", broker_profile="tansu", data_dir=tmp_path)
    conf = create_app(settings, load_pipeline(settings.pipeline)).conf
    assert conf.broker_session_timeout == 10.0
    assert conf.broker_heartbeat_interval == 1.0
    kafka_conf = create_app(
        load_settings(broker="kafka://b:1", data_dir=tmp_path), load_pipeline(settings.pipeline)
    ).conf
    assert kafka_conf.broker_session_timeout > 10.0


@pytest.mark.parametrize("profile", ["kafka", "tansu"])
def test_faust_is_extended_by_subclasses_it_is_handed(profile: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Hydrant's consumer (intakes, Tansu end offsets) and recovery (bulk restore, inputs positioned
    before they resume) reach Faust as the classes it builds, never by changing Faust's own."""
    from faust.tables.manager import TableManager
    from faust.tables.recovery import Recovery
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Producer

    from app.config.spec import load_pipeline
    from app.faust_ext.app import create_app
    from app.faust_ext.consumer import HydrantConsumer, HydrantConsumerThread, HydrantTransport
    from app.faust_ext.recovery import HydrantRecovery, HydrantTableManager

    settings = load_settings(broker="kafka://b:1", broker_profile=profile, data_dir=tmp_path)
    app = create_app(settings, load_pipeline(settings.pipeline))
    assert app.broker_profile == profile
    assert app.client_options["bootstrap_servers"] == ["b:1"]
    assert type(app.transport) is HydrantTransport
    assert type(app.producer_transport) is not HydrantTransport  # Faust's own
    assert type(app.consumer) is HydrantConsumer
    assert type(app.consumer._thread) is HydrantConsumerThread
    assert type(app.producer) is Producer
    assert app.conf.TableManager is HydrantTableManager
    assert type(app.tables) is HydrantTableManager
    assert type(app.tables.recovery) is HydrantRecovery
    # Faust's classes are as it shipped them.
    assert "_wait_next_records" not in vars(Consumer)
    assert AIOKafkaConsumerThread._highwaters.__module__ == "faust.transport.drivers.aiokafka"
    for name in ("on_recovery_completed", "_resume_streams", "_build_offsets"):
        assert getattr(Recovery, name).__module__ == "faust.tables.recovery"
    assert TableManager.recovery.fget.__module__ == "faust.tables.manager"  # type: ignore[attr-defined]


def test_a_fetch_hands_over_at_most_one_agent_batch(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Unbounded, one fetch of a backlog held ~110,000 records, buffered in one turn of the event
    loop (docs/performance.md); aiokafka's max_poll_records bounds it to the agent's batch size."""
    from app.config.spec import load_pipeline
    from app.faust_ext.app import FETCH_RECORDS, create_app

    settings = load_settings(broker="kafka://b:1", data_dir=tmp_path)
    conf = create_app(settings, load_pipeline(settings.pipeline)).conf
    assert conf.broker_max_poll_records == FETCH_RECORDS == 2000


def test_serving_cpus_split_what_is_available() -> None:
    pool = frozenset({0, 1, 2, 3})
    assert split_cpus("3", pool) == (frozenset({3}), frozenset({0, 1, 2}))
    assert split_cpus("1-2", pool) == (frozenset({1, 2}), frozenset({0, 3}))
    assert split_cpus("last:1", frozenset({4, 5})) == (frozenset({5}), frozenset({4}))  # a pod's cpuset
    for text, message in [
        ("4096", "CPUs [4096] are not available here (available: [0, 1, 2, 3])"),
        ("0-3", "no CPU left for the worker"),
        ("last:4", "'last:4' leaves no CPU for the worker"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            split_cpus(text, pool)
