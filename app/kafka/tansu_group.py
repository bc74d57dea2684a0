"""A workaround for the bundled broker's group coordinator (Tansu 0.6): a group whose leader leaves
while a rebalance is in progress stalls for good (docs/broker.md).

Tansu removes a member that sends LeaveGroup while the group is forming, but keeps it recorded as
the leader, and only elects a leader when none is recorded (tansu-broker
src/coordinator/group/administrator.rs, ``Inner<Forming>::leave`` and ``join``): every later JoinGroup
names the departed member as leader, nobody sends the assignment, and every SyncGroup ends in
REBALANCE_IN_PROGRESS. A member evicted at its session timeout goes through a path that does clear
the leader.

:class:`LeaderLeavesStableOnly` is aiokafka's group coordinator, except that a member that led its
current generation leaves on close only if a Heartbeat says the group is stable; otherwise it just
closes and lets the session timeout remove it. With HYDRANT_BROKER_PROFILE=tansu the worker's consumer
uses it (:func:`use_on_tansu`). On Kafka it would be safe too (skipping LeaveGroup is what static
members do), but it is not needed there. Written against aiokafka 0.14.0.
"""

from __future__ import annotations

import logging

from aiokafka import errors
from aiokafka.consumer import consumer as aiokafka_consumer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.group import HeartbeatRequest

logger = logging.getLogger(__name__)


class LeaderLeavesStableOnly(GroupCoordinator):
    """aiokafka's coordinator whose leader sends LeaveGroup only while its group is stable."""

    async def _maybe_leave_group(self) -> None:
        # aiokafka keeps the group's topics only on the leader of the current generation (set when it
        # assigns, cleared when a rebalance starts here).
        if self.generation > 0 and self._group_subscription is not None:
            try:
                answer = await self._send_req(
                    HeartbeatRequest(self.group_id, self.generation, self.member_id)
                )
                stable = answer.error_code == 0
            except errors.KafkaError:
                stable = False
            if not stable:
                logger.warning(
                    "group %s rebalances while its leader (this worker) stops: not sending LeaveGroup, the "
                    "broker drops this member at its session timeout",
                    self.group_id,
                )
                self.reset_generation()
                return
        await super()._maybe_leave_group()


def use_on_tansu() -> None:
    """Make the consumers this process starts from now on use :class:`LeaderLeavesStableOnly`."""
    aiokafka_consumer.GroupCoordinator = LeaderLeavesStableOnly
