"""Kafka I/O: clients and topic creation, record batches, dead letters and forwards, and the
bundled Tansu broker launcher."""
