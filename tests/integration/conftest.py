"""Integration fixtures: one real broker per session; unique topics, groups and data dirs per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.broker import BrokerUnderTest, session_broker
from tests.support.worker import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerUnderTest]:
    with session_broker() as b:
        yield b


@pytest.fixture
def workers(broker: BrokerUnderTest, tmp_path: Path, uid: str) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers (real processes); every one still running at the end is killed."""
    started: list[WorkerProcess] = []

    def start(pipeline: Path, name: str = "w1", data_dir: Path | None = None, **env: str) -> WorkerProcess:
        worker = WorkerProcess(
            broker,
            pipeline,
            data_dir or tmp_path / f"data-{name}",
            app_id=f"hydrant-test-{uid}",
            log_path=tmp_path / f"{name}.log",
            extra_env=env,
        ).start()
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop(timeout=15)
