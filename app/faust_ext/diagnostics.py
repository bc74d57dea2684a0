"""`kill -USR1 <worker pid>`: log what the worker is doing, for a worker that looks stuck.

The dump names the consumer's assigned, paused and active partitions, whether flow is on, the
positions and high watermarks of the input partitions, and every asyncio task with its stack.
"""

from __future__ import annotations

import asyncio
import io
import logging
import signal
from typing import Any

logger = logging.getLogger(__name__)


def _consumer_state(app: Any) -> list[str]:
    consumer = app.consumer
    lines = [
        f"flow active: {consumer.flow_active}; app flow control active: {app.flow_control.is_active()}",
        f"in recovery: {app.in_recovery}; rebalancing: {app.rebalancing}",
        f"generation: {app.consumer_generation_id}",
    ]
    assigned = sorted(consumer.assignment())
    paused = sorted(getattr(consumer, "_paused_partitions", set()) or set())
    active = sorted(getattr(consumer, "_active_partitions", set()) or set())
    buffered = sorted(getattr(consumer, "_buffered_partitions", set()) or set())
    lines.append(f"assigned: {[f'{tp.topic}/{tp.partition}' for tp in assigned]}")
    lines.append(f"paused: {[f'{tp.topic}/{tp.partition}' for tp in paused]}")
    lines.append(f"active: {[f'{tp.topic}/{tp.partition}' for tp in active]}")
    lines.append(f"buffered: {[f'{tp.topic}/{tp.partition}' for tp in buffered]}")
    kafka = consumer._thread._ensure_consumer()
    assignment = kafka._subscription.subscription.assignment if kafka._subscription.subscription else None
    for tp in assigned:
        line = (
            f"  {tp.topic}/{tp.partition}: read {consumer._read_offset.get(tp)} "
            f"committed {consumer._committed_offset.get(tp)} highwater {consumer.highwater(tp)}"
        )
        if assignment is not None:
            try:
                state = assignment.state_value(tp)
                position = state.position if state.has_valid_position else None
                line += f"; kafka position {position} paused {state.paused} resetting {state.awaiting_reset}"
            except Exception as exc:
                line += f"; kafka state {exc!r}"
        lines.append(line)
    tp_index = getattr(app.topics, "_tp_index", {})
    lines.append(f"conductor topics by tp: {len(tp_index)} entries")
    return lines


def _await_chain(task: asyncio.Task[Any]) -> list[str]:
    """The frames a suspended task is awaiting, outermost first (print_stack shows only one)."""
    frames: list[str] = []
    awaited: Any = task.get_coro()
    while awaited is not None and len(frames) < 40:
        frame = getattr(awaited, "cr_frame", None) or getattr(awaited, "gi_frame", None)
        if frame is not None:
            frames.append(f"    {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        awaited = getattr(awaited, "cr_await", None) or getattr(awaited, "gi_yieldfrom", None)
    return frames


def dump(app: Any) -> str:
    """The worker's consumer state and every asyncio task's stack, as text."""
    out = io.StringIO()
    try:
        out.write("\n".join(_consumer_state(app)) + "\n")
    except Exception as exc:  # a diagnostic must not take the worker down
        out.write(f"consumer state unavailable: {exc!r}\n")
    for task in asyncio.all_tasks():
        out.write(f"--- {task.get_name()}\n")
        out.write("\n".join(_await_chain(task)) + "\n")
    return out.getvalue()


def register(app: Any) -> None:
    """Add a task to ``app`` that logs :func:`dump` at WARNING whenever the worker gets SIGUSR1."""

    async def _handler() -> None:
        asyncio.get_running_loop().add_signal_handler(
            signal.SIGUSR1, lambda: logger.warning("worker state (SIGUSR1):\n%s", dump(app))
        )

    app.task(_handler)
