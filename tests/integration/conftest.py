"""Integration tests share the fixtures of tests/conftest.py (broker, workers), and these."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import payments_pipeline_text
from tests.support.broker import BrokerUnderTest
from tests.support.kafka import create_pipeline_topics_for


@pytest.fixture
def payments_pipeline(tmp_path: Path, uid: str, broker: BrokerUnderTest) -> Path:
    """The payments example's pipeline file, its topics suffixed by ``uid`` and created."""
    path = tmp_path / "payments.yaml"
    path.write_text(payments_pipeline_text(uid))
    create_pipeline_topics_for(broker.url, path, uid)
    return path
