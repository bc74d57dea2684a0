"""`state_census`: every 30 s, the state this worker serves, counted for /metrics."""

from __future__ import annotations

from app.engine.census import take_census
from app.runtime import app, settings, state_tables

CENSUS_INTERVAL_S = 30.0


@app.timer(CENSUS_INTERVAL_S, on_leader=False)
async def state_census() -> None:
    await take_census(state_tables, settings.partitions)
