"""Offline features, `hydrant compute`: the worker's window features from files, with pandas (events.py:
inputs, stages and lateness; keys.py: entity keys; states.py: bucket states and windows; compute.py:
queries). docs/offline.md."""

from app.tools.offline.compute import ComputeReport, compute, parse_at, write_table

__all__ = ["ComputeReport", "compute", "parse_at", "write_table"]
