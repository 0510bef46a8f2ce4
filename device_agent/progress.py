"""What the agent keeps across restarts, in the state store beside the spool: the cycle count, the capacity
points the health estimator fits, when the first cycle was seen and the charge discharged since."""

from __future__ import annotations

import logging
from typing import Any

from device_agent.health.estimator import MAX_HISTORY, HealthEstimator
from device_agent.health.fade_law import CapacityPoint
from device_agent.soc import SocEstimator
from device_agent.tracking.cycle_tracker import CycleTracker
from device_agent.uplink.state_store import StateStore

log = logging.getLogger("device_agent.agent")  # reported as the agent's own


class Progress:
    def __init__(
        self,
        store: StateStore,
        source_id: str,
        tracker: CycleTracker,
        estimator: HealthEstimator,
        soc: SocEstimator | None = None,
    ) -> None:
        self.store = store
        self.soc = soc
        self.source_id = source_id
        self.tracker = tracker
        self.estimator = estimator

    def add_point(self, point: CapacityPoint) -> None:
        try:
            self.store.append_point(self.source_id, point)
        except Exception as exc:
            log.warning("could not store the capacity point", extra={"error": str(exc)[:200]})

    def save(self) -> None:
        est = self.estimator
        state: dict[str, Any] = {
            "cycle": self.tracker.cycle,
            "first_ts": est.first_ts,
            "discharged_ah": est.discharged_ah,
        }
        if self.soc is not None:
            state["soc"] = self.soc.snapshot()
        try:
            self.store.save(self.source_id, state)
        except Exception as exc:  # a full disk must not stop the agent; the spool reports the pressure
            log.warning("could not save agent state", extra={"error": str(exc)[:200]})

    def restore(self) -> None:
        state = self.store.load(self.source_id)
        if state is None:
            return
        try:
            points = self.store.points(self.source_id, MAX_HISTORY)
            self.tracker.cycle = int(state.get("cycle", 0))
            self.estimator.restore(points, state.get("first_ts"), float(state.get("discharged_ah", 0.0)))
            if self.soc is not None:
                self.soc.restore(state.get("soc"))
        except (TypeError, ValueError) as exc:
            log.warning("saved agent state unreadable; starting afresh", extra={"error": str(exc)[:200]})
            return
        log.info("restored agent state", extra={"cycle": self.tracker.cycle, "capacity_points": len(points)})
