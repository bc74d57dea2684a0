"""Shared fixtures: pipeline files written per test with unique topic names."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

SHOP = Path(__file__).resolve().parents[1] / "examples" / "shop" / "pipeline.yaml"


def shop_pipeline_text(uid: str) -> str:
    """The shop example with every topic suffixed by ``uid`` (tests share one broker)."""
    text = SHOP.read_text()
    for topic in ("orders-enriched", "orders", "clicks", "users"):
        text = text.replace(f"topic: {topic}\n", f"topic: {topic}-{uid}\n")
    return text.replace("name: shop", f"name: shop-{uid}")


@pytest.fixture
def uid() -> str:
    """Unique per test: topic names, consumer group, pipeline name."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def shop_pipeline(tmp_path: Path, uid: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(shop_pipeline_text(uid))
    return path
