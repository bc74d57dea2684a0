"""Kafka I/O: clients and topic creation, record batches, dead letters and forwards, changelog
reads, and the bundled Tansu broker launcher."""
