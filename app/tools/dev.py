"""`hydrant dev`: the bundled broker (unless HYDRANT_BROKER is set), the pipeline's topics, one
worker process and demo events, stopped in reverse order on Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import aiohttp
import click

from app.config.settings import ENV_PREFIX, Settings
from app.config.spec import Pipeline
from app.errors import HydrantError

EXIT_SIGINT = 130


class DevSession:
    """Everything `hydrant dev` starts, stopped in reverse order whatever happens."""

    def __init__(self, settings: Settings, spec: Pipeline, demo: bool, rate: float) -> None:
        self.settings = settings
        self.spec = spec
        self.demo = demo
        self.rate = rate
        self.run_dir = Path(".hydrant/dev").resolve()
        self.pipeline_path = Path(settings.pipeline).resolve()
        self.stop_event = asyncio.Event()
        self.signal_received: int | None = None

    def _on_signal(self, signum: int) -> None:
        if self.signal_received is None:
            click.echo("\nstopping…", err=True)
        self.signal_received = signum
        self.stop_event.set()

    async def run(self) -> int:
        """Start everything, wait for a signal or a failure, stop everything; the exit code."""
        from app.kafka.broker import EmbeddedBroker
        from app.kafka.clients import create_pipeline_topics
        from app.system.processes import spawn, stop

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal, sig)
        embedded: EmbeddedBroker | None = None
        worker_proc = None
        demo_task: asyncio.Task[int] | None = None
        env = dict(os.environ)
        try:
            if self.settings.broker:
                broker_url = self.settings.broker
            else:
                embedded = EmbeddedBroker(log_path=self.run_dir / "broker.log").start()
                broker_url = embedded.url
                env[f"{ENV_PREFIX}BROKER_PROFILE"] = "tansu"
                # The bundled broker keeps topics in memory, so state from an earlier run is stale.
                data_dir = self.run_dir / "data"
                shutil.rmtree(data_dir, ignore_errors=True)
                env[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir)
            env[f"{ENV_PREFIX}BROKER"] = broker_url
            env[f"{ENV_PREFIX}PIPELINE"] = str(self.pipeline_path)
            settings = self.settings.model_copy(update={"broker": broker_url})
            created, existing = await create_pipeline_topics(settings, self.spec)
            worker_log = self.run_dir / "worker.log"
            worker_proc = spawn(
                [sys.executable, "-m", "app.tools.cli", "worker"], env=env, log_path=worker_log
            )
            base = f"http://{settings.web_host}:{settings.web_port}"
            click.echo(f"broker   {broker_url}" + (f" (bundled, pid {embedded.pid})" if embedded else ""))
            click.echo(f"topics   {len(created)} created, {len(existing)} existing")
            click.echo(f"worker   pid {worker_proc.pid}, log {worker_log}")
            click.echo(
                f"api      {base}/   health {base}/healthz   ready {base}/readyz   metrics {base}/metrics"
            )
            if self.demo:
                from app.tools.demo import pick_example, run_demo

                example = pick_example(self.spec)
                demo_task = asyncio.create_task(
                    run_demo(settings, self.spec, self.stop_event, rate=self.rate, example=example)
                )
                click.echo(f"demo     {example} events at ~{self.rate:.0f}/s")
            click.echo("Ctrl-C to stop everything.")
            ready = asyncio.create_task(self._report_ready(base))
            while not self.stop_event.is_set():
                if worker_proc.poll() is not None:
                    raise HydrantError(
                        f"the worker exited with code {worker_proc.returncode}; see {worker_log}"
                    )
                if demo_task is not None and demo_task.done() and demo_task.exception() is not None:
                    raise HydrantError(f"the demo generator failed: {demo_task.exception()}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), timeout=0.5)
            ready.cancel()
        finally:
            self.stop_event.set()
            if demo_task is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    sent = await asyncio.wait_for(demo_task, timeout=10)
                    click.echo(f"demo     sent {sent:,} events")
            if worker_proc is not None:
                code = await asyncio.to_thread(stop, worker_proc, 30.0)
                click.echo(f"worker   stopped (exit {code})")
            if embedded is not None:
                await asyncio.to_thread(embedded.stop)
                click.echo("broker   stopped")
        return EXIT_SIGINT if self.signal_received == signal.SIGINT else 0

    async def _report_ready(self, base: str) -> None:
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(f"{base}/readyz") as response:
                        if response.status == 200:
                            click.echo(
                                f"ready    after {time.monotonic() - started:.1f}s: {base}/readyz answers 200"
                            )
                            return
                await asyncio.sleep(0.5)
