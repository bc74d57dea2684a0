"""The one place that builds objects at import: the settings, the pipeline, the Faust app
(app/faust_ext/app.py) and what the agents run with (agents/, found by Faust's autodiscovery);
every other module takes what it needs as arguments."""

from __future__ import annotations

from typing import Any

from app.api.context import ApiContext
from app.api.views import register as register_views
from app.config.changes import backfills_from_env, replaying_from_env
from app.config.settings import Settings, get_settings
from app.config.spec import Pipeline, load_pipeline
from app.engine.batch import StreamEngine, stream_routes
from app.engine.helpers import HelperPool
from app.engine.lookups import BATCH_MAX as LOOKUP_BATCH_MAX
from app.engine.lookups import LookupUpdater
from app.engine.replay import Replayer
from app.engine.replicas import ReplicaUpdater
from app.engine.shards import BatchWork
from app.faust_ext.app import FETCH_RECORDS, HydrantApp, create_app
from app.faust_ext.intake import Intake
from app.faust_ext.live_metrics import LiveCollector
from app.faust_ext.placement import WorkerPlacement
from app.faust_ext.tables import raw_table
from app.faust_ext.worker_io import FaustWorkerIO
from app.kafka.definitions import record_replayed
from app.kafka.history import History
from app.metrics import REGISTRY
from app.serving.supervisor import ServingSupervisor
from tables.registry import StateTables
from tables.replica import LookupReplica

settings: Settings = get_settings()
pipeline: Pipeline = load_pipeline(settings.pipeline)
group_id = settings.group_id(pipeline.name)
app: HydrantApp = create_app(settings, pipeline)
REGISTRY.register(LiveCollector(app))

#: Global lookups: each worker's replica of the whole lookup, and what keeps it (agents/update_lookups.py).
replica_updaters = {
    name: ReplicaUpdater(
        name, spec, LookupReplica(settings.data_dir / "replicas" / group_id / f"lookup-{name}")
    )
    for name, spec in pipeline.lookups.items()
    if spec.global_
}
state_tables = StateTables.build(
    pipeline,
    lambda name, text: raw_table(app, name, settings.partitions, text, settings.rocksdb_memory_mb),
    {name: updater.replica for name, updater in replica_updaters.items()},
)
placement = WorkerPlacement(app, [updater.readiness for updater in replica_updaters.values()])
worker_io = FaustWorkerIO(app)
register_views(
    app,
    ApiContext(
        pipeline,
        group_id,
        settings.partitions,
        state_tables,
        placement,
        settings.api_token is not None,
        producer=lambda: worker_io.kafka_producer,
        replays_running=lambda: replayer.running(),
    ),
)
serving = ServingSupervisor(settings, state_tables, placement)

#: Helper processes that run every batch's shards: started before Faust (app/tools/cli.py `worker`).
helpers = HelperPool(settings.compute_processes, settings.pipeline)
_work = BatchWork(pipeline, group_id, replaying_from_env())
_routes = stream_routes(pipeline, group_id, _work)


async def _replayed(group: str, partition: int, aggregations: list[str]) -> None:
    await record_replayed(settings, group_id, group, partition, aggregations)


#: The replay of new or changed aggregations (app/engine/replay.py), stepped by the stream engine.
replayer: Replayer = Replayer(
    pipeline,
    _work,
    _routes,
    state_tables,
    History(app.client_options),
    settings.partitions,
    settings.replay_share,
    settings.replay_records_per_s,
    _replayed,
    on_write=serving.wrote,
    backfills=backfills_from_env(),
)


async def _replay_revoked(sender: Any, *args: Any, **kwargs: Any) -> None:
    """Before the partitions leave: the replay writes nothing more and forgets its jobs."""
    await replayer.revoked()


async def _replay_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
    """The replay reads its jobs back from the tables once they are recovered."""
    replayer.assigned()


# Faust awaits its signals' receivers during a rebalance (mode's handler type is not mypy-checkable).
app.on_partitions_revoked.connect(_replay_revoked)  # type: ignore[arg-type]
app.on_partitions_assigned.connect(_replay_assigned)  # type: ignore[arg-type]

stream_engine = StreamEngine(
    _work,
    _routes,
    state_tables,
    helpers,
    settings.partitions,
    FETCH_RECORDS,
    on_write=serving.wrote,
    replay=replayer,
    idle_ms=settings.idle_partition_ms,
)
stream_source = Intake(
    app,
    stream_engine.routes,
    max_buffered=4 * FETCH_RECORDS,
    strict=[topic for topic, route in stream_engine.routes.items() if route.repartitioned],
)
#: Subscribes the consumer to the stream topics; their records reach the intake, not this channel.
app.topics.add(app.topic(*stream_engine.routes, key_serializer="raw", value_serializer="raw"))

lookup_updaters = {
    name: LookupUpdater(
        name, spec, state_tables.lookups[name], group_id, settings.partitions, on_write=serving.wrote
    )
    for name, spec in pipeline.lookups.items()
}
lookup_sources = {
    name: Intake(app, updater.topics, max_buffered=4 * LOOKUP_BATCH_MAX)
    for name, updater in lookup_updaters.items()
}
for _updater in lookup_updaters.values():
    app.topics.add(app.topic(*_updater.topics, key_serializer="raw", value_serializer="raw"))
