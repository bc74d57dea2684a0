"""The `hydrant` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from app import __version__
from app.config.changes import definitions, plan_changes, render_changes
from app.config.routing import stream_stages, topic_plans
from app.config.services import service_plan
from app.config.settings import ENV_PREFIX, Settings, load_settings
from app.config.spec import Pipeline, load_pipeline, parse_pipeline
from app.errors import HydrantError, SettingsError, SpecError

logger = logging.getLogger("hydrant")
F = TypeVar("F", bound=Callable[..., Any])

EXIT_SPEC = 2


def configure_logging(level: str) -> None:
    """Log to stderr at ``level``."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def friendly_errors(func: F) -> F:
    """Turn Hydrant's own errors into one clear message and an exit code instead of a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SpecError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_SPEC)
        except HydrantError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _settings(pipeline: str | None = None) -> Settings:
    """Settings from the environment; ``--pipeline`` wins over HYDRANT_PIPELINE."""
    if pipeline is not None:
        os.environ[f"{ENV_PREFIX}PIPELINE"] = str(Path(pipeline).resolve())
    settings = load_settings()
    configure_logging(settings.log_level)
    return settings


def _need_broker(settings: Settings) -> None:
    if not settings.broker:
        raise HydrantError(
            f"{ENV_PREFIX}BROKER is not set: point it at Kafka (kafka://host:port) or use `hydrant dev`, "
            "which starts the bundled broker"
        )


pipeline_option = click.option(
    "--pipeline",
    "-p",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"Pipeline YAML (default: {ENV_PREFIX}PIPELINE, else examples/shop/pipeline.yaml).",
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="hydrant")
def cli() -> None:
    """Hydrant: streaming features on Kafka (lookup joins, sliding windows in RocksDB, an HTTP API).

    Settings come from HYDRANT_* environment variables; see docs/ and `hydrant COMMAND --help`.
    """


@cli.command()
@click.option(
    "--port", type=click.IntRange(1, 65535), default=None, help="Port to listen on (default: a free one)."
)
@friendly_errors
def broker(port: int | None) -> None:
    """Run the bundled Kafka-protocol broker (Tansu, memory storage) until Ctrl-C."""
    from app.kafka.broker import EmbeddedBroker

    configure_logging("INFO")
    with EmbeddedBroker(port=port) as embedded:
        click.echo(f"broker listening: {embedded.url}   (export {ENV_PREFIX}BROKER={embedded.url})")
        click.echo("memory storage: topics are lost when it stops. Ctrl-C to stop.")
        _wait_for_signal()
    click.echo("broker stopped")


def _wait_for_signal() -> int:
    """Block until SIGINT or SIGTERM; returns the signal number."""
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda num, _frame: received.append(num))
    while not received:
        signal.pause()
    return received[0]


@cli.command()
@pipeline_option
@friendly_errors
def worker(pipeline: str | None) -> None:
    """Run one worker against HYDRANT_BROKER (what Kubernetes runs)."""
    settings = _settings(pipeline)
    _need_broker(settings)
    spec = load_pipeline(settings.pipeline)  # fail here, with the spec's messages, before Faust starts
    from app.kafka.definitions import reconcile

    # What the state was built with: refuse what it cannot follow, replay what it lacks.
    reconciled = asyncio.run(reconcile(settings, spec))
    from app.config.changes import BACKFILLS_ENV, REPLAYING_ENV

    os.environ[REPLAYING_ENV] = json.dumps(reconciled.replaying)  # for this process and those it starts
    os.environ[BACKFILLS_ENV] = json.dumps(reconciled.backfills)
    import faust

    from app.system.cpus import pin_process, split_cpus
    from app.system.memory import limit_arenas

    limit_arenas()  # before Faust, aiokafka and RocksDB start their threads
    from app.runtime import app, helpers, serving

    split = None
    if settings.serving_cpus is not None and settings.serving_process:
        try:
            split = split_cpus(settings.serving_cpus)
        except ValueError as exc:
            raise SettingsError(f"HYDRANT_SERVING_CPUS: {exc}") from None
    # before Faust: the port answers (503, with the reason) while the worker starts
    serving.start(cpus=split[0] if split else None)
    if split is not None:  # this process's threads, and the helpers' and Faust's to come: the others
        pin_process(os.getpid(), split[1])
    helpers.start()  # and the helpers load the pipeline meanwhile
    try:
        faust.Worker(
            app, loglevel=settings.log_level.lower(), override_logging=False
        ).execute_from_commandline()
    finally:
        helpers.stop()
        serving.stop()


@cli.command()
@click.argument("pipeline", type=click.Path(dir_okay=False))
@click.option(
    "--against",
    metavar="URL",
    help="A running worker (http://host:port): also print what this spec changes in its feature state, "
    "per group and aggregation; exit 1 if a group's state could not be reused.",
)
@friendly_errors
def check(pipeline: str, against: str | None) -> None:
    """Validate a pipeline spec and print its plan; exit 2 with field/line messages when invalid."""
    settings = load_settings()
    spec = load_pipeline(pipeline)
    click.echo(render_plan(spec, settings))
    if against is None:
        return
    running = running_spec(against, settings)
    changes = plan_changes(definitions(running), definitions(spec))
    click.echo("")
    click.echo(f"changes against {against} (pipeline {running.name!r}; docs/operations.md):")
    click.echo("\n".join(render_changes(changes)))
    if any(group.refused for group in changes):
        sys.exit(1)


def running_spec(url: str, settings: Settings) -> Pipeline:
    """The spec a running worker runs (its ``GET /pipeline``)."""
    import httpx

    headers = {}
    if settings.api_token is not None:
        headers["Authorization"] = f"Bearer {settings.api_token.get_secret_value()}"
    try:
        answer = httpx.get(f"{url.rstrip('/')}/pipeline", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        raise HydrantError(f"cannot reach {url}: {exc}") from None
    if answer.status_code != 200:
        raise HydrantError(f"{url}/pipeline answered {answer.status_code}: {answer.text[:200]}")
    return parse_pipeline(orjson.dumps(answer.json()["spec"]).decode(), f"{url}/pipeline")


def render_plan(spec: Pipeline, settings: Settings) -> str:
    """The derived plan: topics, tables, agents, features — what a worker of this spec will run."""
    group = settings.group_id(spec.name)
    lines = [f"pipeline {spec.name!r} is valid (consumer group {group!r})", "", "topics:"]
    for plan in topic_plans(spec, settings.partitions, group):
        compact = ", compacted" if plan.compacted else ""
        lines.append(
            f"  {plan.name:<32} {plan.role:<12} {plan.partitions} partitions{compact}  ({plan.owner})"
        )
    lines += ["", "tables (RocksDB, changelog topic <group>-<table>-changelog):"]
    for name, lookup in spec.lookups.items():
        lines.append(
            f"  lookup-{name:<25} from {lookup.topic}, key {lookup.key}, fields {', '.join(lookup.fields)}"
            + (" (global: replicated on every worker)" if lookup.global_ else "")
        )
    for name, group_spec in spec.features.items():
        key = " + ".join(group_spec.key_fields)
        lines.append(f"  features-{name:<23} key {key}, period {group_spec.period}, one record per bucket")
    lines += ["", "agents:"]
    for name in spec.lookups:
        lines.append(f"  update_{name:<24} {spec.lookups[name].topic} -> table lookup-{name}")
    for name, stream in spec.streams.items():
        outs = [o.topic for o in spec.outputs.values() if o.from_ == name]
        target = ", ".join(outs) or "(state only)"
        lines.append(f"  process_events  {stream.topic:<16} -> {target}; bad -> {stream.dlq_topic}")
    lines += ["", "routing (the keys each stream's events visit, in order; docs/pipeline.md):"]
    for name in spec.streams:
        lines.append(f"  {name}")
        for stage in stream_stages(spec, name, group):
            via = "the stream's key" if stage.index == 0 else f"via {stage.topic}"
            does = [f"feeds {', '.join(stage.groups)}"] if stage.groups else []
            does += [f"joins {lookup} on {on}" for lookup, on in stage.joins]
            if stage.reads:
                does.append(f"outputs read {', '.join(stage.reads)}")
            key = " + ".join(stage.key)
            lines.append(f"    {stage.index + 1}. {key} ({via}): {'; '.join(does) or 'nothing'}")
    for name, group_spec in spec.features.items():
        key = " + ".join(group_spec.key_fields)
        lines += ["", f"feature group {name} (key {key}, period {group_spec.period}):"]
        lines.append("  " + ", ".join(group_spec.feature_names()))
    for name in spec.services:
        service = service_plan(spec, name)
        asked = ", ".join([*service.entities, *(f"{f}: {t}" for f, t in service.request.items())])
        lines += ["", f"service {name} (POST /services/{name}; each row: {asked}):"]
        lines.append("  " + ", ".join(f"{column} {kind}" for column, kind in service.columns))
    return "\n".join(lines)


@cli.group()
def topics() -> None:
    """Manage the pipeline's Kafka topics."""


@topics.command("create")
@pipeline_option
@friendly_errors
def topics_create(pipeline: str | None) -> None:
    """Create every topic the pipeline needs (HYDRANT_PARTITIONS partitions), idempotently."""
    from app.kafka.clients import create_pipeline_topics

    settings = _settings(pipeline)
    _need_broker(settings)
    spec = load_pipeline(settings.pipeline)
    created, existing = asyncio.run(create_pipeline_topics(settings, spec))
    for name in created:
        click.echo(f"created  {name}")
    for name in existing:
        click.echo(f"exists   {name}")


@cli.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--input",
    "-i",
    "inputs",
    multiple=True,
    required=True,
    metavar="STREAM=FILE",
    help="A stream's events older than its topic holds (CSV, Parquet, JSONL; repeatable).",
)
@friendly_errors
def backfill(pipeline_file: Path, inputs: tuple[str, ...]) -> None:
    """Fill the feature groups with history older than the input topics hold, from files: per stream,
    the events before the earliest event time its topic holds (docs/operations.md)."""
    from app.tools.backfill import backfill as run_backfill

    settings = _settings(str(pipeline_file))
    _need_broker(settings)
    spec = load_pipeline(settings.pipeline)
    files: dict[str, Path] = {}
    for item in inputs:
        stream, sep, file = item.partition("=")
        if not sep or not stream or not file:
            raise HydrantError(f"--input {item!r}: expected STREAM=FILE")
        files[stream] = Path(file)
    for line in asyncio.run(run_backfill(settings, spec, files)).lines():
        click.echo(line)


@cli.group()
def state() -> None:
    """Manage the pipeline's feature state."""


@state.command("reset")
@click.argument("group")
@pipeline_option
@click.option("--yes", is_flag=True, help="Do it (without it: say what it would delete).")
@friendly_errors
def state_reset(group: str, pipeline: str | None, yes: bool) -> None:
    """Delete feature GROUP's state (its changelog records, by tombstones) so that workers rebuild it
    from the history the input topics hold; for a changed period or key. Stop the workers first."""
    from app.kafka.reset import changelog_topic, reset_group

    settings = _settings(pipeline)
    _need_broker(settings)
    spec = load_pipeline(settings.pipeline)
    if group not in spec.features:
        raise HydrantError(f"no feature group {group!r} in the pipeline (groups: {', '.join(spec.features)})")
    if not yes:
        topic = changelog_topic(settings.group_id(spec.name), group)
        click.echo(
            f"would delete every record of {topic} (feature group {group!r}); the next worker rebuilds the "
            "group from the topics. Stop the workers, then run again with --yes"
        )
        sys.exit(1)
    click.echo(asyncio.run(reset_group(settings, spec, group)).line())


@cli.command()
@click.argument("topic")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--key", "-k", default=None, help="Column whose value becomes the Kafka record key (UTF-8).")
@click.option(
    "--rate", type=click.FloatRange(min=0, min_open=True), default=None, help="At most N records/s."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "parquet", "jsonl"]),
    default=None,
    help="File format (default: from the suffix).",
)
@click.option(
    "--order-by",
    default=None,
    metavar="COLUMN",
    help="Send rows in event-time order of COLUMN (epoch ms, ISO-8601 or datetime; stable).",
)
@click.option(
    "--resume",
    is_flag=True,
    help="Resumable: keep a checkpoint; a rerun sends only the rows not delivered yet (exactly once).",
)
@click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Checkpoint file of --resume (default: FILE.TOPIC.checkpoint.json next to FILE).",
)
@friendly_errors
def produce(
    topic: str,
    file: Path,
    key: str | None,
    rate: float | None,
    fmt: str | None,
    order_by: str | None,
    resume: bool,
    checkpoint: Path | None,
) -> None:
    """Send every row of a CSV, Parquet or JSONL FILE to TOPIC as a JSON record."""
    from app.tools.produce import produce_file

    settings = _settings()
    _need_broker(settings)
    if checkpoint is not None and not resume:
        raise HydrantError("--checkpoint needs --resume")
    if resume and checkpoint is None:
        checkpoint = file.with_name(f"{file.name}.{topic}.checkpoint.json")
    summary = asyncio.run(
        produce_file(
            settings,
            topic,
            file,
            key=key,
            rate=rate,
            fmt=fmt,
            progress=sys.stderr.isatty(),
            order_by=order_by,
            checkpoint=checkpoint,
        )
    )
    click.echo(summary.line())


def _inputs(
    pipeline: Pipeline, files: tuple[Path, ...], inputs: tuple[str, ...], lookups: bool = False
) -> dict[str, Path]:
    """--input STREAM=FILE pairs (and LOOKUP=FILE with ``lookups``), plus positional files named
    after a stream (orders.parquet)."""
    out: dict[str, Path] = {}
    names = [*pipeline.streams, *(pipeline.lookups if lookups else ())]
    for item in inputs:
        name, sep, text = item.partition("=")
        if not sep or not name or not text:
            raise HydrantError(f"--input {item!r}: expected STREAM=FILE")
        if name.strip() not in names:
            what = "streams and lookups" if lookups else "streams"
            raise HydrantError(f"--input {item}: no stream {name.strip()!r} ({what}: {', '.join(names)})")
        out[name.strip()] = Path(text)
    for path in files:
        stem = path.name.split(".")[0]
        if stem not in pipeline.streams:
            raise HydrantError(
                f"{path}: no stream named {stem!r} (streams: {', '.join(pipeline.streams)}); "
                f"use --input STREAM={path}"
            )
        out.setdefault(stem, path)
    return out


@cli.command()
@click.argument("pipeline_file", metavar="PIPELINE", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input", "-i", "inputs", multiple=True, metavar="STREAM=FILE", help="A stream's file.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file: .parquet, .csv or .jsonl.")  # fmt: skip
@click.option(
    "--at", "ats", multiple=True, help="Reference time, epoch ms or ISO-8601; repeatable (default: now)."
)
@click.option(
    "--keys", "keys", multiple=True, help="Only these keys, string forms (comma-separated; repeatable)."
)
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Point-in-time training set: rows with each group's key fields and a time.")  # fmt: skip
@click.option(
    "--label-key",
    default=None,
    help="One key column of --labels, the key's string form, for groups of one key (default: key, "
    "else each group's key fields).",
)
@click.option(
    "--label-time", default=None, help="Time column of --labels (default: at, event_timestamp, ts, ...)."
)
@click.option(
    "--order-by-time",
    is_flag=True,
    help="Process each file in event-time order, as `hydrant produce --order-by <time field>` sends it.",
)
@click.option("--group", "groups", multiple=True, help="Only this feature group (repeatable; default: all).")
@click.option(
    "--service",
    default=None,
    help="With --labels: the columns this feature service answers at each row's time (lookups' "
    "files as --input LOOKUP=FILE).",
)
@friendly_errors
def compute(
    pipeline_file: Path,
    files: tuple[Path, ...],
    inputs: tuple[str, ...],
    out: Path,
    ats: tuple[str, ...],
    keys: tuple[str, ...],
    labels: Path | None,
    label_key: str | None,
    label_time: str | None,
    order_by_time: bool,
    groups: tuple[str, ...],
    service: str | None,
) -> None:
    """The pipeline's features computed offline from files, as the workers compute them.

    Inputs are CSV, Parquet or JSONL, one per stream (--input orders=orders.parquet, or a file named
    after its stream). Rows: key, each key field, at, every feature (groups of one key); with --labels,
    each label row plus its groups' features as of its own time (no event after it counts), each
    group looked up by its key fields; with --service too, the columns that service answers then.
    See docs/offline.md.
    """
    from tqdm import tqdm

    from app.tools.frames import read_table
    from app.tools.offline import compute as compute_features
    from app.tools.offline import parse_at, write_table

    settings = load_settings()
    configure_logging(settings.log_level)
    spec = load_pipeline(pipeline_file)
    streams = _inputs(spec, files, inputs, lookups=service is not None)
    if labels is not None and ats:
        raise HydrantError("use either --labels or --at, not both")
    if service is not None:
        if labels is None:
            raise HydrantError("--service needs --labels: the rows to answer, each with a time")
        from app.tools.offline.service import compute_service

        started = time.monotonic()
        frame, report = compute_service(
            spec,
            service,
            streams,
            read_table,
            read_table(labels),
            label_time,
            order_by_time=order_by_time,
            partitions=settings.partitions,
        )
        write_table(frame, out)
        click.echo(report.line(out, time.monotonic() - started))
        return
    at_values = [parse_at(a) for a in ats] or [int(time.time() * 1000)]
    key_list = [k.strip() for item in keys for k in item.split(",") if k.strip()] or None
    label_frame = read_table(labels) if labels is not None else None
    plans = [g for name, g in spec.features.items() if not groups or name in groups]
    stages = 2 + sum(len(g.aggregations) for g in plans)
    started = time.monotonic()
    with tqdm(total=stages, desc="compute", unit="step", disable=not sys.stderr.isatty(), leave=False) as bar:

        def step(stage: str) -> None:
            bar.set_postfix_str(stage)
            bar.update(1)

        frame, report = compute_features(
            spec,
            streams,
            read_table,
            ats=at_values,
            keys=key_list,
            labels=label_frame,
            label_key=label_key,
            label_time=label_time,
            groups=groups or None,
            progress=step,
            order_by_time=order_by_time,
            partitions=settings.partitions,
        )
        write_table(frame, out)
    click.echo(report.line(out, time.monotonic() - started))


@cli.command()
@pipeline_option
@click.option(
    "--rate", type=click.FloatRange(min=1), default=50.0, show_default=True, help="Events per second."
)
@click.option(
    "--example",
    type=click.Choice(["shop", "payments"]),
    default=None,
    help="Which example's events (default: the one the pipeline fits).",
)
@friendly_errors
def demo(pipeline: str | None, rate: float, example: str | None) -> None:
    """Generate demo events of an example (shop: users, orders, clicks; payments: merchants,
    payments) into HYDRANT_BROKER until Ctrl-C/SIGTERM."""
    from app.tools.demo import pick_example, run_demo

    settings = _settings(pipeline)
    _need_broker(settings)
    spec = load_pipeline(settings.pipeline)
    example = pick_example(spec, example)  # fails clearly when the pipeline fits no example

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await run_demo(settings, spec, stop, rate=rate, example=example)

    configure_logging(settings.log_level)
    sent = asyncio.run(run())
    click.echo(f"demo: sent {sent} events")


@cli.command()
@pipeline_option
@click.option(
    "--demo/--no-demo",
    default=True,
    show_default=True,
    help="Generate the example's events (shop or payments).",
)
@click.option(
    "--rate", type=click.FloatRange(min=1), default=50.0, show_default=True, help="Demo events per second."
)
@friendly_errors
def dev(pipeline: str | None, demo: bool, rate: float) -> None:
    """Bundled broker (unless HYDRANT_BROKER is set) + topics + one worker + demo data; Ctrl-C stops all."""
    settings = _settings(pipeline)
    spec = load_pipeline(settings.pipeline)
    from app.tools.dev import DevSession

    sys.exit(asyncio.run(DevSession(settings, spec, demo, rate).run()))


def main() -> None:
    """Entry point of the ``hydrant`` command."""
    cli()


if __name__ == "__main__":
    main()
