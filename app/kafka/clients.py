"""Small aiokafka helpers shared by the CLI, the producer and the demo: clients from settings, topics."""

from __future__ import annotations

import logging
import ssl
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from app.config.routing import TopicPlan, topic_plans
from app.config.settings import Settings
from app.config.spec import Pipeline
from app.errors import BrokerError

logger = logging.getLogger(__name__)


def client_options(settings: Settings) -> dict[str, Any]:
    """aiokafka connection options (bootstrap and security) from the settings."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_username
        if settings.sasl_password is not None:
            options["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = ssl_context(settings)
    return options


def consumer_options(settings: Settings) -> dict[str, Any]:
    """:func:`client_options` of a consumer: its fetches wait at most HYDRANT_FETCH_MAX_WAIT_MS."""
    return {**client_options(settings), "fetch_max_wait_ms": settings.fetch_max_wait_ms}


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """TLS context from HYDRANT_SSL_CAFILE / CERTFILE / KEYFILE (system CAs when no CA file is given)."""
    context = ssl.create_default_context(cafile=str(settings.ssl_cafile) if settings.ssl_cafile else None)
    if settings.ssl_certfile:
        context.load_cert_chain(
            str(settings.ssl_certfile), str(settings.ssl_keyfile) if settings.ssl_keyfile else None
        )
    return context


def bulk_producer(settings: Settings) -> AIOKafkaProducer:
    """An unstarted producer tuned for throughput (256 KiB batches, 20 ms linger, acks=1)."""
    return AIOKafkaProducer(
        **client_options(settings), linger_ms=20, max_batch_size=256 * 1024, acks=1, request_timeout_ms=30_000
    )


async def create_topics(settings: Settings, plans: list[TopicPlan]) -> tuple[list[str], list[str]]:
    """Create the planned topics that do not exist yet. Returns (created, already there)."""
    admin = AIOKafkaAdminClient(**client_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [p for p in plans if p.name not in existing]
        created: list[str] = []
        if wanted:
            new = [
                NewTopic(
                    p.name,
                    p.partitions,
                    settings.replication_factor,
                    topic_configs={"cleanup.policy": "compact"} if p.compacted else {},
                )
                for p in wanted
            ]
            response = await admin.create_topics(new)
            for name, code, *rest in response.topic_errors:
                if code == 0:
                    created.append(name)
                elif for_code(code) is not TopicAlreadyExistsError:  # another worker won the race: fine
                    detail = rest[0] if rest and rest[0] else for_code(code).__name__
                    raise BrokerError(f"cannot create topic {name!r}: {detail}")
        return created, [p.name for p in plans if p.name in existing]
    finally:
        await admin.close()


async def create_pipeline_topics(settings: Settings, pipeline: Pipeline) -> tuple[list[str], list[str]]:
    """Every topic the pipeline needs, with HYDRANT_PARTITIONS partitions, idempotently."""
    return await create_topics(
        settings, topic_plans(pipeline, settings.partitions, settings.group_id(pipeline.name))
    )
