"""Integration tests share the fixtures of tests/conftest.py (broker, workers)."""
