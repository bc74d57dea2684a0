"""Hydrant's public Python API: :class:`Client`, feature values, services and tables as pandas
DataFrames over a worker's HTTP API (docs/api.md, "Python client")."""

from hydrant.client import Client, HydrantClientError

__all__ = ["Client", "HydrantClientError"]
