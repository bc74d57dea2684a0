"""Hydrant: a Kafka-native streaming feature service built on Faust, RocksDB and Prometheus."""

__version__ = "0.1.0"
