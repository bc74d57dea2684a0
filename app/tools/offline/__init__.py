"""Offline features: `hydrant compute` — the worker's window features from files, with pandas.

events.py reads and types the inputs and drops what the worker drops (late events, failing `where`
filters, bad records); states.py builds bucket states and merges windows, vectorized and
bit-identical to tables/apply.py and tables/read.py; compute.py answers `--at` and point-in-time
`--labels` queries.
"""

from app.tools.offline.compute import ComputeReport, compute, parse_at, write_table

__all__ = ["ComputeReport", "compute", "parse_at", "write_table"]
