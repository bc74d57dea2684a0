"""The session broker: an external one from HYDRANT_TEST_BROKER, else testcontainers Kafka when a
Docker engine answers, else the bundled Tansu. Never a fake."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field


@dataclass(frozen=True)
class BrokerUnderTest:
    url: str  # kafka://host:port
    profile: str  # "kafka" or "tansu": what HYDRANT_BROKER_PROFILE workers need
    kind: str  # "external", "testcontainers", "tansu"
    #: Stop and start the broker keeping its data (testcontainers only: the container restarts with
    #: its filesystem, on the same host port).
    restart: Callable[[], None] | None = field(default=None, compare=False)

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

        from app.kafka.broker import free_port

        container = KafkaContainer("apache/kafka:3.8.0").with_kraft()
        container.with_bind_ports(container.port, free_port())  # a restart keeps the advertised port
        with container as kafka:

            def restart() -> None:
                kafka.get_wrapped_container().restart(timeout=10)

            url = f"kafka://{kafka.get_bootstrap_server()}"
            yield BrokerUnderTest(url, "kafka", "testcontainers", restart=restart)
        return
    from app.kafka.broker import EmbeddedBroker

    with EmbeddedBroker() as broker:
        yield BrokerUnderTest(broker.url, "tansu", "tansu")
