"""Hydrant's settings: one frozen class read from HYDRANT_* environment variables, the only
configuration of a worker (Faust's own variables are ignored: docs/operations.md)."""

from __future__ import annotations

import hashlib
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.errors import SettingsError
from app.system.cpus import check_cpus

ENV_PREFIX = "HYDRANT_"
REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PIPELINE = REPO_ROOT / "examples" / "shop" / "pipeline.yaml"


def parse_broker_url(value: str) -> list[str]:
    """``kafka://h1:9092,h2:9092`` or ``h1:9092,h2:9092`` -> ``["h1:9092", "h2:9092"]``; ValueError
    naming the bad part."""
    text = value.strip()
    for scheme in ("kafka://", "tcp://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    hosts = []
    for part in text.split(","):
        item = part.strip()
        if item.startswith("kafka://"):
            item = item[len("kafka://") :]
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected kafka://host:port[,host:port...], got {value!r} (bad part {item!r})")
        hosts.append(f"{host}:{int(port)}")
    return hosts


class Settings(BaseSettings):
    """Everything a worker needs, from the environment. Invalid values fail at start."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="ignore")

    broker: str | None = Field(
        default=None,
        description="Kafka bootstrap servers, kafka://host:port[,host:port...]. Unset: `hydrant dev` "
        "starts the bundled broker; `hydrant worker` refuses to start.",
    )
    broker_profile: Literal["kafka", "tansu"] = Field(
        default="kafka",
        description="`tansu` applies the settings the bundled broker needs (short session timeouts, "
        "at-least-once); `hydrant dev` and the test harness set it.",
    )
    pipeline: Path = Field(default=DEFAULT_PIPELINE, description="Path of the pipeline YAML.")
    app_id: str | None = Field(
        default=None,
        description="Consumer group and changelog prefix; default `hydrant-<pipeline name>`.",
    )
    data_dir: Path = Field(default=Path(".hydrant/data"), description="RocksDB and worker state directory.")
    web_host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    web_port: int = Field(default=6066, ge=1, le=65535, description="HTTP port.")
    web_advertised_url: str | None = Field(
        default=None,
        description="URL other workers use to reach this one (pod DNS name in Kubernetes); "
        "default http://<web_host>:<web_port>.",
    )
    serving_process: bool = Field(
        default=True,
        description="Answer feature reads (`/features`) in a separate serving process that owns the HTTP "
        "port and reads RocksDB as a secondary, so reads do not wait behind the agents; the worker's own "
        "web server then listens on a Unix socket and the serving process passes every other request "
        "to it. `false`: the worker serves everything on its event loop.",
    )
    serving_processes: int = Field(
        default=2,
        ge=1,
        le=32,
        description="How many serving processes share the HTTP port (SO_REUSEPORT: the kernel spreads "
        "connections over them); each reads on its own core. With `serving_process` only.",
    )
    serving_cpus: str | None = Field(
        default=None,
        description="CPUs for the serving processes (Linux: `1`, `2-3`, or `last:1`, the last of the CPUs "
        "the worker may use): they run there and the "
        "worker, its threads and its helpers on the other CPUs, so feature reads do not wait for a time "
        "slice behind event processing. Unset: the kernel places everything. With `serving_process` only.",
    )
    compute_processes: int = Field(
        default=2,
        ge=0,
        le=32,
        description="Helper processes that run every batch's window updates and output rows (split by "
        "entity key), while the worker reads, sends, writes and decodes the next batch: that work is "
        "CPU-bound Python, so each helper adds a core's worth. 0: the worker does all of it.",
    )
    replay_share: float = Field(
        default=0.25,
        gt=0,
        lt=1,
        description="The share of the worker's event loop that replaying history into new or changed "
        "aggregations may take while events arrive (it takes all of it while none do).",
    )
    replay_records_per_s: float = Field(
        default=0,
        ge=0,
        description="At most this many input records per second read by the replay (0: no limit), to "
        "spare the brokers while it reads history.",
    )
    fetch_max_wait_ms: int = Field(
        default=50,
        ge=1,
        le=60_000,
        description="The most any fetch of any consumer Hydrant runs (inputs, hop topics, changelogs, "
        "replicas, history readers) waits for records. Kafka answers as soon as records arrive; the "
        "bundled broker only when the wait is over, so a short wait makes it behave like Kafka.",
    )
    standby_replicas: int = Field(
        default=1,
        ge=0,
        le=10,
        description="Standby copies of every table partition kept by other workers (Faust's "
        "`table_standby_replicas`): a worker taking a partition over from a failed one starts from "
        "its standby instead of the whole changelog.",
    )
    idle_partition_ms: int = Field(
        default=60_000,
        ge=0,
        le=86_400_000,
        description="How long an upstream partition may send nothing to a later stage (a group on another "
        "key than its stream's) before it stops holding that stage's lateness and bucket expiry back "
        "(docs/features.md, late rule).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    api_token: SecretStr | None = Field(default=None, description="Bearer token for the data API.")
    partitions: int = Field(default=4, ge=1, le=10_000, description="Partitions of topics Hydrant creates.")
    rocksdb_memory_mb: int = Field(
        default=128,
        ge=16,
        le=1_000_000,
        description="RocksDB memory of the worker (block cache, with a quarter for memtables), shared by "
        "every table partition.",
    )
    replication_factor: int = Field(default=1, ge=1, le=10, description="Replication of created topics.")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_broker_url(value)
        return value

    @field_validator("serving_cpus")
    @classmethod
    def _check_cpus(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        check_cpus(value)  # which CPUs exist is known where the worker runs (app/system/cpus.py)
        return value.strip()

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile")
    @classmethod
    def _file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @property
    def bootstrap_servers(self) -> list[str]:
        """The broker list without scheme; empty when no broker is configured."""
        return parse_broker_url(self.broker) if self.broker else []

    @property
    def faust_broker_url(self) -> str:
        """The broker in Faust's ``kafka://h1:p1;h2:p2`` form."""
        return "kafka://" + ";".join(self.bootstrap_servers)

    @property
    def advertised_url(self) -> str:
        """How other workers reach this one: HYDRANT_WEB_ADVERTISED_URL, else http://<host>:<port>."""
        host = "127.0.0.1" if self.web_host in ("0.0.0.0", "::") else self.web_host
        return self.web_advertised_url or f"http://{host}:{self.web_port}"

    def group_id(self, pipeline_name: str) -> str:
        """Consumer group id and changelog topic prefix: HYDRANT_APP_ID, else hydrant-<pipeline name>."""
        return self.app_id or f"hydrant-{pipeline_name}"

    def check_security(self) -> None:
        """SASL needs a username and password; raise SettingsError naming what is missing."""
        if self.security_protocol.startswith("SASL_") and not (self.sasl_username and self.sasl_password):
            raise SettingsError(
                f"{ENV_PREFIX}SASL_USERNAME and {ENV_PREFIX}SASL_PASSWORD are required with "
                f"{ENV_PREFIX}SECURITY_PROTOCOL={self.security_protocol}"
            )


def describe_validation_error(exc: ValidationError) -> str:
    """One line per bad variable, named as the user wrote it (HYDRANT_WEB_PORT, not web_port)."""
    lines = []
    for err in exc.errors():
        field = str(err["loc"][0]) if err["loc"] else "?"
        value = err.get("input")
        shown = "" if isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"{ENV_PREFIX}{field.upper()}: {err['msg']}{shown}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment (plus explicit overrides); SettingsError on bad values."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
    settings.check_security()
    return settings


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return load_settings()


def worker_socket(data_dir: Path) -> Path:
    """The Unix socket of the worker's own web server when serving processes own the public port: in
    the temp dir (socket paths must be short), one per data dir."""
    digest = hashlib.sha1(str(data_dir.resolve()).encode(), usedforsecurity=False).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"hydrant-{digest}.sock"
