"""The one place that builds objects at import: the settings, the pipeline, the Faust app and what
the agents (agents/, found by Faust's autodiscovery) run with; every other module takes them as
arguments."""

from __future__ import annotations

import logging
import sys
from typing import Any

import faust

from app import __version__
from app.api.context import ApiContext
from app.api.http import application_options
from app.api.views import register as register_views
from app.config.settings import Settings, get_settings
from app.config.spec import Pipeline, load_pipeline
from app.engine.batch import StreamEngine, stream_routes
from app.engine.helpers import HelperPool
from app.engine.lookups import BATCH_MAX as LOOKUP_BATCH_MAX
from app.engine.lookups import LookupUpdater
from app.engine.shards import BatchWork
from app.errors import HydrantError
from app.faust_ext import diagnostics, end_offsets, recovery
from app.faust_ext.intake import Intake
from app.faust_ext.placement import WorkerPlacement
from app.faust_ext.tables import raw_table
from app.faust_ext.worker_io import FaustWorkerIO
from app.kafka.clients import client_options, ssl_context
from app.metrics import REGISTRY, WORKER, LiveCollector
from app.serving.bulletin import worker_socket
from app.serving.supervisor import ServingSupervisor
from tables import restore
from tables.registry import StateTables

logger = logging.getLogger(__name__)

#: Settings the bundled Tansu broker needs (BROKER.md): short group timeouts, since Tansu holds a new
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
        "store": "rocksdb://",
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
    the worker would then run without that module's agents or tables), and whose consumer hands
    the stream topics' records to the intakes registered in :attr:`intakes` (app/faust_ext/intake.py)."""

    intakes: list[Any]

    def _new_consumer(self) -> Any:
        consumer = super()._new_consumer()
        for intake in getattr(self, "intakes", ()):
            intake.install(consumer)
        return consumer

    def _on_autodiscovery_error(self, name: str) -> None:
        error = sys.exc_info()[1]
        raise HydrantError(f"cannot load {name}: {error!r}") from error


def create_app(settings: Settings, pipeline: Pipeline) -> faust.App:
    """A Faust App for this pipeline; agents and tables attach to it on autodiscovery."""
    if settings.broker_profile == "tansu":
        end_offsets.install(client_options(settings))
    recovery.install()
    restore.install(client_options(settings))
    faust_app = HydrantApp(settings.group_id(pipeline.name), **faust_options(settings, pipeline))
    diagnostics.install(faust_app)
    WORKER.info(
        {"version": __version__, "pipeline": pipeline.name, "app_id": settings.group_id(pipeline.name)}
    )
    return faust_app


settings: Settings = get_settings()
pipeline: Pipeline = load_pipeline(settings.pipeline)
group_id = settings.group_id(pipeline.name)
app: faust.App = create_app(settings, pipeline)
REGISTRY.register(LiveCollector(app))

state_tables = StateTables.build(
    pipeline,
    lambda name, text: raw_table(app, name, settings.partitions, text, settings.rocksdb_memory_mb),
)
placement = WorkerPlacement(app)
register_views(
    app,
    ApiContext(
        pipeline, group_id, settings.partitions, state_tables, placement, settings.api_token is not None
    ),
)
worker_io = FaustWorkerIO(app)
serving = ServingSupervisor(settings, state_tables, placement)

#: Helper processes that run every batch's shards: started before Faust (app/tools/cli.py `worker`).
helpers = HelperPool(settings.compute_processes, settings.pipeline)
_work = BatchWork(pipeline)
stream_engine = StreamEngine(
    _work,
    stream_routes(pipeline, group_id, _work),
    state_tables,
    helpers,
    settings.partitions,
    FETCH_RECORDS,
    on_write=serving.wrote,
)
stream_source = Intake(app, stream_engine.routes, max_buffered=4 * FETCH_RECORDS)
#: Subscribes the consumer to the stream topics; their records reach the intake, not this channel.
app.topics.add(app.topic(*stream_engine.routes, key_serializer="raw", value_serializer="raw"))

lookup_updaters = {
    name: LookupUpdater(name, spec, state_tables.lookups[name], group_id, settings.partitions)
    for name, spec in pipeline.lookups.items()
}
lookup_sources = {
    name: Intake(app, updater.topics, max_buffered=4 * LOOKUP_BATCH_MAX)
    for name, updater in lookup_updaters.items()
}
for _updater in lookup_updaters.values():
    app.topics.add(app.topic(*_updater.topics, key_serializer="raw", value_serializer="raw"))
