"""The session broker: an external one from HYDRANT_TEST_BROKER, else testcontainers Kafka when a
Docker engine answers, else the bundled Tansu. Never a fake."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class BrokerUnderTest:
    url: str  # kafka://host:port
    profile: str  # "kafka" or "tansu": what HYDRANT_BROKER_PROFILE workers need
    kind: str  # "external", "testcontainers", "tansu"

    @property
    def bootstrap(self) -> str:
        return self.url.removeprefix("kafka://")


def docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        client.ping()
        return True
    except Exception:
        return False


@contextlib.contextmanager
def session_broker() -> Iterator[BrokerUnderTest]:
    external = os.environ.get("HYDRANT_TEST_BROKER")
    if external:
        yield BrokerUnderTest(external if "://" in external else f"kafka://{external}", "kafka", "external")
        return
    if docker_answers():
        from testcontainers.community.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.8.0").with_kraft() as kafka:
            yield BrokerUnderTest(f"kafka://{kafka.get_bootstrap_server()}", "kafka", "testcontainers")
        return
    from app.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield BrokerUnderTest(broker.url, "tansu", "tansu")
