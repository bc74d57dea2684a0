"""Baseline (a) of bench/pipeline.py: a plain Faust app with the classic per-event path.

One agent iterates the input topics one event at a time and does ``await sink.send(key=, value=)``
per event (raw serializers: the value is passed through, not decoded). No tables, no web server.
On its first event it writes ``time.time()`` to ``--marker``, so the parent can time from the first
consumed record; the parent counts the output records itself. Run by bench/pipeline.py as

    .venv/bin/python -m bench.faust_baseline --broker kafka://HOST:PORT --app-id ID --data-dir DIR \
        --marker FILE --output OUT_TOPIC IN_TOPIC [IN_TOPIC ...]

and stopped with SIGTERM.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import faust

#: What faust needs on the bundled Tansu broker (docs/broker.md): short group timeouts (Tansu holds a new
#: group's first JoinGroup for half the session timeout) and no idempotent producer.
TANSU_OPTIONS: dict[str, Any] = {
    "broker_session_timeout": 10.0,
    "broker_rebalance_timeout": 10.0,
    "broker_heartbeat_interval": 1.0,
    "processing_guarantee": "at_least_once",
}


def build_app(args: argparse.Namespace) -> faust.App:
    """The passthrough app: inputs -> one agent -> ``args.output``, one awaited send per event."""
    app = faust.App(
        args.app_id,
        env={},  # nothing from Faust's own environment variables
        broker=args.broker,
        store="memory://",
        datadir=str(args.data_dir),
        autodiscover=False,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        topic_partitions=args.partitions,
        key_serializer="raw",
        value_serializer="raw",
        worker_redirect_stdouts=False,
        **TANSU_OPTIONS,
    )
    source = app.topic(*args.inputs, key_serializer="raw", value_serializer="raw")
    sink = app.topic(args.output, key_serializer="raw", value_serializer="raw")
    marker: Path = args.marker

    async def passthrough(stream: faust.StreamT[Any]) -> None:
        first = True
        async for key, value in stream.items():
            if first:
                marker.write_text(repr(time.time()))
                first = False
            await sink.send(key=key, value=value)

    app.agent(source, name="passthrough")(passthrough)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", required=True, help="kafka://host:port")
    parser.add_argument("--app-id", required=True, help="fresh consumer group id")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--marker", type=Path, required=True, help="file written on the first event")
    parser.add_argument("--output", required=True, help="output topic (must exist)")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--loglevel", default="WARNING")
    parser.add_argument("inputs", nargs="+", help="input topics")
    args = parser.parse_args()
    app = build_app(args)
    faust.Worker(app, loglevel=args.loglevel, quiet=True).execute_from_commandline()


if __name__ == "__main__":
    main()
