"""Test helpers shared by integration tests: broker selection, workers as real processes, Kafka I/O."""
