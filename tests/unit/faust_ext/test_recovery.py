"""app/faust_ext/recovery.py: a recovery step that does not finish makes the worker not ready, says
why (readiness, /status, the log, a metric), is retried, and crashes the worker after a few in a row.

Faust's own ``Recovery._wait`` treats a timeout as the service stopping: its loop ends for good and
the inputs are never resumed. The app here is Hydrant's real one, never started (no broker)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from faust.tables.recovery import RebalanceAgain, ServiceStopped

from app.api.context import ApiContext
from app.api.status import samples, summary
from app.config.spec import load_pipeline
from app.faust_ext import recovery as recovery_module
from app.faust_ext.app import HydrantApp
from app.faust_ext.placement import WorkerPlacement
from app.faust_ext.recovery import RETRIES, HydrantRecovery, HydrantTableManager
from app.metrics import RECOVERY_FAILURES, REGISTRY
from tests.conftest import SHOP


def make_app() -> HydrantApp:
    """Hydrant's app on the running loop (mode binds its events to the loop it finds running)."""
    return HydrantApp(
        "test-recovery",
        broker="kafka://127.0.0.1:1",
        store="memory://",
        autodiscover=False,
        loop=asyncio.get_running_loop(),
        TableManager=HydrantTableManager,
    )


@pytest.fixture(autouse=True)
def short_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recovery_module, "BACKOFF_S", (0.01,))


async def test_a_timed_out_recovery_step_leaves_the_worker_not_ready_and_recovery_starts_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app()
    recovery = cast(HydrantRecovery, app.tables.recovery)
    assert isinstance(recovery, HydrantRecovery)
    placement = WorkerPlacement(app)
    failures = RECOVERY_FAILURES._value.get()

    async def stuck() -> None:
        await asyncio.sleep(60)  # a seek that never answers

    with pytest.raises(RebalanceAgain):  # Faust's loop then starts the recovery over
        await recovery._wait(stuck(), timeout=0.05)
    assert recovery.signal_recovery_start.is_set()
    assert RECOVERY_FAILURES._value.get() == failures + 1

    ready, reason = placement.readiness()
    assert not ready
    assert reason.startswith("table recovery failed (stuck did not finish within 0.05s); retry 1 of 4")
    assert any(r.levelname == "ERROR" and "stuck did not finish" in r.message for r in caplog.records)
    ctx = ApiContext(load_pipeline(SHOP), "g", 4, cast(Any, None), placement)
    status = summary(ctx, samples(REGISTRY.collect()))
    assert status["ready"] is False
    assert status["not_ready"] == reason

    recovery._recovered()  # the next recovery completed (HydrantRecovery._start_inputs)
    assert app.recovery_failure is None
    assert placement.readiness()[1] != reason


async def test_recovery_failing_again_and_again_crashes_the_worker() -> None:
    app = make_app()
    recovery = cast(HydrantRecovery, app.tables.recovery)
    for _ in range(RETRIES - 1):
        recovery.signal_recovery_start.clear()  # as Faust's loop does when it starts over
        with pytest.raises(RebalanceAgain):
            await recovery._wait(asyncio.sleep(60), timeout=0.01)
    assert not recovery._crashed.is_set()
    recovery.signal_recovery_start.clear()
    with pytest.raises(ServiceStopped):
        await recovery._wait(asyncio.sleep(60), timeout=0.01)
    assert recovery._crashed.is_set()  # the worker stops; its supervisor starts it again
    assert app.recovery_failure is not None and "failed 5 times in a row" in app.recovery_failure


async def test_a_step_that_finishes_or_a_stopping_service_is_not_a_failure() -> None:
    app = make_app()
    recovery = cast(HydrantRecovery, app.tables.recovery)
    await recovery._wait(asyncio.sleep(0), timeout=1)
    assert app.recovery_failure is None
    await recovery.stop()
    with pytest.raises(ServiceStopped):
        await recovery._wait(asyncio.sleep(60), timeout=0.01)
    assert app.recovery_failure is None
