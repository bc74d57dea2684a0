"""Kafka I/O: clients and topic creation, record batches, dead letters and forwards, changelog
reads for the bulk restore, exact end offsets, and the bundled Tansu broker launcher."""
