"""`process_events`: the one task of every stream — decode, window state, joins, outputs — in
batches (app/engine/batch.py). One task writes the feature tables, so no two batches interleave."""

from __future__ import annotations

from app.runtime import app, replica_updaters, stream_engine, stream_source, worker_io


@app.task
async def process_events() -> None:
    for replica in replica_updaters.values():  # joins read global lookups: wait until they are read
        await replica.caught_up.wait()
    await stream_engine.run(worker_io, stream_source)
