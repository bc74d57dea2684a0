"""The Faust App class Hydrant runs, and the options it is built with (app/runtime.py builds the one
app of a worker with :func:`create_app`)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import faust
from faust.types import TransportT

from app import __version__
from app.api.http import application_options
from app.config.settings import Settings, worker_socket
from app.config.spec import Pipeline
from app.errors import HydrantError
from app.faust_ext import diagnostics
from app.faust_ext.consumer import HydrantTransport
from app.faust_ext.recovery import HydrantTableManager
from app.kafka.clients import consumer_options, ssl_context
from app.metrics import WORKER

if TYPE_CHECKING:
    from app.faust_ext.intake import Intake

#: Settings the bundled Tansu broker needs (docs/broker.md): short group timeouts, since Tansu holds a new
#: group's first JoinGroup for half the session timeout; no idempotent producer (aiokafka's
#: InitProducerId v0 fails there), hence at-least-once.
TANSU_PROFILE: dict[str, Any] = {
    "broker_session_timeout": 10.0,
    "broker_rebalance_timeout": 10.0,
    "broker_heartbeat_interval": 1.0,
}

#: Records one fetch hands over at most: one batch of the stream agent (agents/process_events.py).
FETCH_RECORDS = 2000


def faust_options(settings: Settings, pipeline: Pipeline) -> dict[str, Any]:
    """Every option handed to faust.App, explicit so nothing comes from Faust's own env names."""
    options: dict[str, Any] = {
        # Faust lets APP_DATADIR, BROKER_URL, WEB_PORT... from the environment win over arguments;
        # an empty mapping makes HYDRANT_* the only source of configuration.
        "env": {},
        "broker": settings.faust_broker_url,
        "store": "hydrant://",  # app/faust_ext/tables.py ChangelogStore
        "datadir": str(settings.data_dir),
        "autodiscover": ["agents"],
        "origin": "app",
        "processing_guarantee": "at_least_once",
        "topic_partitions": settings.partitions,
        "topic_replication_factor": settings.replication_factor,
        "key_serializer": "raw",
        "value_serializer": "raw",
        "web_enabled": True,
        "web_bind": settings.web_host,
        "web_host": settings.web_host,
        "web_port": settings.web_port,
        "canonical_url": settings.advertised_url,
        # With a serving process (app/serving/process.py) on the public port, the worker's own web server
        # listens on a Unix socket that only the serving process talks to.
        "web_transport": f"unix://{worker_socket(settings.data_dir)}"
        if settings.serving_process
        else "tcp://",
        "web_application_options": application_options(
            settings.api_token.get_secret_value() if settings.api_token else None
        ),
        # Faust's own debug pages would collide with and confuse the data API.
        "web_stats_enabled": False,
        "web_graph_enabled": False,
        "web_router_enabled": False,
        "web_tables_enabled": False,
        "web_metrics_enabled": False,
        "worker_redirect_stdouts": False,
        "consumer_auto_offset_reset": "earliest",
        "table_standby_replicas": settings.standby_replicas,
        # Dead letters and repartitioned records carry the original value plus headers: a record
        # the broker accepted must fit again with a few hundred bytes more.
        "producer_max_request_size": 8 * 1024 * 1024,
        # Outputs and changelog records of a batch leave in few large requests, not one per record
        # (Faust's defaults: no linger, 16 KiB batches). A batch of 2,000 enriched orders holds
        # ~300 KB per output partition: in 256 KiB batches, the second batch of a partition waited
        # until the first left (aiokafka keeps one unsent batch per partition), ~9 % of the run.
        # 1,000,000 bytes stays under Kafka's default message.max.bytes (1,048,588).
        "producer_linger": 0.01,
        "producer_max_batch_size": 1_000_000,
        # At most one agent batch per fetch. Unbounded, a fetch of a backlog returned ~110,000
        # records, which the intake took in one turn of the event loop (half a second, the helpers
        # idle meanwhile) and buffered far past its limit: 12 % fewer events/s (docs/performance.md).
        "broker_max_poll_records": FETCH_RECORDS,
        "version": 1,
        # Faust's table manager, building the recovery with the bulk restore and the inputs positioned
        # before they resume (app/faust_ext/recovery.py).
        "TableManager": HydrantTableManager,
    }
    if settings.security_protocol != "PLAINTEXT":
        options["broker_credentials"] = faust_credentials(settings)
    if settings.broker_profile == "tansu":
        options.update(TANSU_PROFILE)
    return options


def faust_credentials(settings: Settings) -> Any:
    """Faust's credentials object for SASL and/or TLS."""
    context = ssl_context(settings) if settings.security_protocol in ("SSL", "SASL_SSL") else None
    if settings.security_protocol.startswith("SASL_"):
        password = settings.sasl_password.get_secret_value() if settings.sasl_password else ""
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=password,
            mechanism=settings.sasl_mechanism,
            ssl_context=context,
        )
    return faust.SSLCredentials(context)


class HydrantApp(faust.App):
    """faust.App whose autodiscovery fails loudly (Faust only logs a module that fails to import, and
    the worker would then run without that module's agents or tables), whose consumer transport is a
    :class:`HydrantTransport` (its consumer hands the stream topics' records to the intakes registered
    in :attr:`intakes`, app/faust_ext/intake.py), and which holds the aiokafka options of the clients
    Hydrant opens itself (:attr:`client_options`: the bulk restore's reader, the end-offset probe).
    Written against faust-streaming 0.15.3."""

    #: The class of the consumer transport (:meth:`_new_transport`).
    consumer_transport: type[HydrantTransport] = HydrantTransport

    #: aiokafka consumer options (app/kafka/clients.py ``consumer_options``): the bulk restore's reader
    #: (app/faust_ext/recovery.py), the end-offset probe (app/faust_ext/consumer.py), history readers.
    client_options: Mapping[str, Any]
    #: ``HYDRANT_BROKER_PROFILE``: "tansu" applies :data:`TANSU_PROFILE`.
    broker_profile: str
    #: ``HYDRANT_FETCH_MAX_WAIT_MS``: the longest wait of the worker's own fetches.
    fetch_max_wait_ms: int
    #: Why the last table recovery failed (None once one completes): readiness says it
    #: (app/faust_ext/recovery.py, app/faust_ext/placement.py).
    recovery_failure: str | None
    #: The agents' intakes, in the order they registered (app/faust_ext/intake.py).
    intakes: list[Intake]

    def __init__(
        self,
        id: str,
        *,
        client_options: Mapping[str, Any] | None = None,
        broker_profile: str = "kafka",
        fetch_max_wait_ms: int = 50,
        **options: Any,
    ) -> None:
        self.client_options = dict(client_options or {})
        self.broker_profile = broker_profile
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self.recovery_failure = None
        self.intakes = []
        super().__init__(id, **options)

    def _new_transport(self) -> TransportT:
        # As Faust's (faust/app/base.py), with the Hydrant transport class; the producer transport
        # (``_new_producer_transport``) stays Faust's.
        return self.consumer_transport(self.conf.broker_consumer, self)

    def _on_autodiscovery_error(self, name: str) -> None:
        error = sys.exc_info()[1]
        raise HydrantError(f"cannot load {name}: {error!r}") from error


def create_app(settings: Settings, pipeline: Pipeline) -> HydrantApp:
    """A Faust App for this pipeline; agents and tables attach to it on autodiscovery."""
    faust_app = HydrantApp(
        settings.group_id(pipeline.name),
        client_options=consumer_options(settings),
        broker_profile=settings.broker_profile,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        **faust_options(settings, pipeline),
    )
    diagnostics.register(faust_app)
    WORKER.info(
        {"version": __version__, "pipeline": pipeline.name, "app_id": settings.group_id(pipeline.name)}
    )
    return faust_app
