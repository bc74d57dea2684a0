"""Faust's aiokafka transport, subclassed: the consumer hands the stream topics' records to the
intakes (app/faust_ext/intake.py), and its thread asks the bundled broker for exact end offsets.

- :class:`HydrantConsumer` takes the records of the topics of every intake registered on the app
  (``app.intakes``) out of each fetch (``Consumer._wait_next_records``), before Faust turns them into
  messages; the records of other topics (changelogs) go through Faust's path unchanged.
- :class:`HydrantConsumerThread`: with HYDRANT_BROKER_PROFILE=tansu, the end offsets Faust sizes
  table recovery with come from :func:`app.kafka.end_offsets.exact_end_offsets` (Tansu's ListOffsets
  answer is short, docs/broker.md).
- :class:`HydrantTransport` creates the consumer; the app uses it as its consumer transport
  (app/faust_ext/app.py ``HydrantApp._new_transport``). Its producer is Faust's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP, ConsumerT

from app.kafka.end_offsets import exact_end_offsets

if TYPE_CHECKING:
    from app.faust_ext.app import HydrantApp


class HydrantConsumerThread(AIOKafkaConsumerThread):
    """Faust's aiokafka consumer thread whose end offsets are exact on the bundled broker.
    Written against faust-streaming 0.15.3."""

    async def _highwaters(self, partitions: list[TP]) -> Mapping[TP, int]:
        approx = await super()._highwaters(partitions)
        app = cast("HydrantApp", self.app)
        if app.broker_profile != "tansu" or self.consumer.in_transaction:
            return approx
        return await exact_end_offsets(app.client_options, approx)


class HydrantConsumer(faust_aiokafka.Consumer):
    """Faust's aiokafka consumer whose fetches hand the intakes' records over (``app.intakes``)
    and whose thread is a :class:`HydrantConsumerThread`.
    Written against faust-streaming 0.15.3."""

    def _new_consumer_thread(self) -> AIOKafkaConsumerThread:
        return HydrantConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _wait_next_records(self, timeout: float) -> tuple[Any, Any]:  # noqa: ASYNC109 (Faust calls it so)
        records, active = await super()._wait_next_records(timeout)
        for intake in getattr(self.app, "intakes", ()):  # in the order they registered
            await intake.hand_over(self, records, active)
        return records, active


class HydrantTransport(faust_aiokafka.Transport):
    """Faust's aiokafka transport creating :class:`HydrantConsumer` consumers.
    Written against faust-streaming 0.15.3."""

    Consumer: ClassVar[type[ConsumerT]] = HydrantConsumer
