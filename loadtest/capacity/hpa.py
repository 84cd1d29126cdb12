"""The HorizontalPodAutoscaler's decision, as kube-controller-manager computes it.

A transcription of ``pkg/controller/podautoscaler`` (``replica_calculator.go``:
``calcPlainMetricReplicas``, ``GetMetricUsageRatio``; ``horizontal.go``:
``stabilizeRecommendationWithBehaviors``, ``convertDesiredReplicasWithBehaviorRate``,
``calculateScaleUpLimitWithScalingRules``, ``calculateScaleDownLimitWithBehaviors``,
``storeScaleEvent``) for one ``Pods`` metric with an ``AverageValue`` target, which is what
deploy/k8s/base/hpa.yaml uses:

1. usage ratio = mean(pod values) / target, in milli-units with integer division as
   Kubernetes does; within the tolerance (``|1 - ratio| <= 0.1``) nothing changes, else
   ``ceil(ratio * ready pods)``. Pods without a value yet (missing) count as the target when
   scaling down and 0 when scaling up; pods not ready count as 0 when scaling up, and a
   direction that flips once they are counted means no change.
2. Stabilisation: the result is clamped between the lowest recommendation of the scale-up
   window and the highest of the scale-down window (defaults 0 s and 300 s).
3. Rate: a scale-up is limited by the policies over the replicas added in each policy's
   period (default: the larger of +100% and +4 pods per 15 s); a scale-down likewise
   (default: -100% per 15 s), then by minReplicas and maxReplicas.

Times are seconds on the simulation's clock; the controller syncs every 15 s
(``--horizontal-pod-autoscaler-sync-period``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

SYNC_PERIOD_S = 15.0
TOLERANCE = 0.1


@dataclass(frozen=True)
class ScalingPolicy:
    """``{type: Pods|Percent, value, periodSeconds}``."""

    type: Literal["Pods", "Percent"]
    value: int
    period_s: float


@dataclass(frozen=True)
class ScalingRules:
    """``behavior.scaleUp`` or ``behavior.scaleDown``."""

    stabilization_window_s: float
    select_policy: Literal["Max", "Min", "Disabled"]
    policies: tuple[ScalingPolicy, ...]

    @classmethod
    def from_manifest(cls, rules: Mapping[str, Any], default: ScalingRules) -> ScalingRules:
        policies = rules.get("policies")
        return cls(
            float(rules.get("stabilizationWindowSeconds", default.stabilization_window_s)),
            rules.get("selectPolicy", default.select_policy),
            tuple(
                ScalingPolicy(p["type"], int(p["value"]), float(p["periodSeconds"]))
                for p in policies
            )
            if policies
            else default.policies,
        )

    @property
    def longest_period_s(self) -> float:
        return max((p.period_s for p in self.policies), default=0.0)


# autoscaling/v2's defaults (SetDefaults_HorizontalPodAutoscalerBehavior).
DEFAULT_SCALE_UP = ScalingRules(
    0.0, "Max", (ScalingPolicy("Percent", 100, 15.0), ScalingPolicy("Pods", 4, 15.0))
)
DEFAULT_SCALE_DOWN = ScalingRules(300.0, "Max", (ScalingPolicy("Percent", 100, 15.0),))


@dataclass(frozen=True)
class HpaSpec:
    """What the simulation needs of a HorizontalPodAutoscaler with one Pods metric."""

    min_replicas: int
    max_replicas: int
    target: float
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    tolerance: float = TOLERANCE

    @classmethod
    def from_manifest(cls, doc: Mapping[str, Any]) -> HpaSpec:
        """Read an ``autoscaling/v2`` HorizontalPodAutoscaler (as parsed YAML)."""
        spec = doc["spec"]
        (metric,) = spec["metrics"]
        if metric["type"] != "Pods" or metric["pods"]["target"]["type"] != "AverageValue":
            raise ValueError("only one Pods metric with an AverageValue target is simulated")
        behavior = spec.get("behavior", {})
        return cls(
            min_replicas=int(spec.get("minReplicas", 1)),
            max_replicas=int(spec["maxReplicas"]),
            target=parse_quantity(metric["pods"]["target"]["averageValue"]),
            scale_up=ScalingRules.from_manifest(behavior.get("scaleUp", {}), DEFAULT_SCALE_UP),
            scale_down=ScalingRules.from_manifest(
                behavior.get("scaleDown", {}), DEFAULT_SCALE_DOWN
            ),
        )


def parse_quantity(value: str | int | float) -> float:
    """A Kubernetes quantity without binary suffixes: "60", "1500m", "2k"."""
    text = str(value)
    for suffix, factor in (("m", 1e-3), ("k", 1e3), ("M", 1e6)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _milli(value: float) -> int:
    # resource.Quantity.MilliValue rounds up.
    return math.ceil(round(value * 1000, 6))


def usage_ratio(values: Sequence[float], target: float) -> float:
    """GetMetricUsageRatio: the mean in milli-units (integer division) over the target."""
    mean_milli = sum(_milli(v) for v in values) // len(values)
    return mean_milli / _milli(target)


def _within(ratio: float, tolerance: float) -> bool:
    return abs(1.0 - ratio) <= tolerance


def metric_replicas(
    values: Sequence[float],
    target: float,
    current_replicas: int,
    *,
    unready: int = 0,
    missing: int = 0,
    tolerance: float = TOLERANCE,
) -> int:
    """calcPlainMetricReplicas: replicas proposed for the pods' values.

    ``values`` are the ready pods' metric values; ``unready`` pods are pending (no value,
    ignored unless scaling up), ``missing`` pods run but have no value yet.
    """
    if not values:
        raise ValueError("no metrics for the targeted pods (they may be unready)")
    ratio = usage_ratio(values, target)
    scale_up_with_unready = unready > 0 and ratio > 1.0
    if not scale_up_with_unready and missing == 0:
        if _within(ratio, tolerance):
            return current_replicas
        return math.ceil(ratio * len(values))
    filled = list(values)
    if missing:
        filled += [target if ratio < 1.0 else 0.0] * missing
    if scale_up_with_unready:
        filled += [0.0] * unready
    new_ratio = usage_ratio(filled, target)
    if (
        _within(new_ratio, tolerance)
        or (ratio > 1.0 and new_ratio < 1.0)
        or (ratio < 1.0 and new_ratio > 1.0)
    ):
        return current_replicas
    proposed = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and proposed > current_replicas) or (
        new_ratio > 1.0 and proposed < current_replicas
    ):
        return current_replicas
    return proposed


@dataclass
class _Event:
    at_s: float
    value: int  # a recommendation, or a replica change


def _change_in_period(events: list[_Event], period_s: float, now_s: float) -> int:
    """getReplicasChangePerPeriod: changes strictly after ``now - period``."""
    cutoff = now_s - period_s
    return sum(e.value for e in events if e.at_s > cutoff)


def scale_up_limit(
    current: int, up: list[_Event], down: list[_Event], rules: ScalingRules, now_s: float
) -> int:
    """calculateScaleUpLimitWithScalingRules."""
    if rules.select_policy == "Disabled":
        return current
    pick = min if rules.select_policy == "Min" else max
    result: int | None = None
    for policy in rules.policies:
        start = (
            current
            - _change_in_period(up, policy.period_s, now_s)
            + _change_in_period(down, policy.period_s, now_s)
        )
        if policy.type == "Pods":
            proposed = start + policy.value
        else:
            proposed = math.ceil(start * (1 + policy.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


def scale_down_limit(
    current: int, up: list[_Event], down: list[_Event], rules: ScalingRules, now_s: float
) -> int:
    """calculateScaleDownLimitWithBehaviors."""
    if rules.select_policy == "Disabled":
        return current
    pick = max if rules.select_policy == "Min" else min
    result: int | None = None
    for policy in rules.policies:
        start = (
            current
            - _change_in_period(up, policy.period_s, now_s)
            + _change_in_period(down, policy.period_s, now_s)
        )
        if policy.type == "Pods":
            proposed = start - policy.value
        else:
            proposed = int(start * (1 - policy.value / 100))
        result = proposed if result is None else pick(result, proposed)
    return current if result is None else result


@dataclass
class Autoscaler:
    """One HPA object's controller state across syncs: recommendations and scale events."""

    spec: HpaSpec
    recommendations: list[_Event] = field(default_factory=list)
    up_events: list[_Event] = field(default_factory=list)
    down_events: list[_Event] = field(default_factory=list)
    _initialised: bool = False

    def sync(
        self,
        now_s: float,
        current_replicas: int,
        values: Sequence[float],
        *,
        unready: int = 0,
        missing: int = 0,
    ) -> int:
        """One reconcile: the replica count to set (``current_replicas`` for no change)."""
        spec = self.spec
        if not self._initialised:
            # maybeInitScaleDownStabilizationWindow: the current count is the first
            # recommendation, so no scale-down in the first window after the HPA appears.
            self._initialised = True
            if spec.scale_down.stabilization_window_s > 0:
                self.recommendations.append(_Event(now_s, current_replicas))
        if current_replicas == 0:
            return 0  # scaling disabled (the target was scaled to zero by hand)
        if current_replicas > spec.max_replicas:
            desired = spec.max_replicas
        elif current_replicas < spec.min_replicas:
            desired = spec.min_replicas
        else:
            try:
                proposal = metric_replicas(
                    values,
                    spec.target,
                    current_replicas,
                    unready=unready,
                    missing=missing,
                    tolerance=spec.tolerance,
                )
            except ValueError:
                return current_replicas  # FailedGetPodsMetric: no change
            desired = self._normalize(now_s, current_replicas, proposal)
        if desired != current_replicas:
            self._store_event(now_s, current_replicas, desired)
        return desired

    def _normalize(self, now_s: float, current: int, proposal: int) -> int:
        """normalizeDesiredReplicasWithBehaviors: stabilise, then limit the rate."""
        stabilized = self._stabilize(now_s, current, proposal)
        return self._rate_limited(now_s, current, stabilized)

    def _stabilize(self, now_s: float, current: int, proposal: int) -> int:
        up_cutoff = now_s - self.spec.scale_up.stabilization_window_s
        down_cutoff = now_s - self.spec.scale_down.stabilization_window_s
        up_rec = down_rec = proposal
        old_index = None
        for i, rec in enumerate(self.recommendations):
            if rec.at_s > up_cutoff:
                up_rec = min(rec.value, up_rec)
            if rec.at_s > down_cutoff:
                down_rec = max(rec.value, down_rec)
            if rec.at_s < up_cutoff and rec.at_s < down_cutoff:
                old_index = i
        recommendation = max(current, up_rec)
        recommendation = min(recommendation, down_rec)
        if old_index is not None:
            self.recommendations[old_index] = _Event(now_s, proposal)
        else:
            self.recommendations.append(_Event(now_s, proposal))
        return recommendation

    def _rate_limited(self, now_s: float, current: int, desired: int) -> int:
        spec = self.spec
        if desired > current:
            limit = max(
                scale_up_limit(current, self.up_events, self.down_events, spec.scale_up, now_s),
                current,
            )
            return min(desired, min(spec.max_replicas, limit))
        if desired < current:
            limit = min(
                scale_down_limit(current, self.up_events, self.down_events, spec.scale_down, now_s),
                current,
            )
            return max(desired, max(spec.min_replicas, limit))
        return desired

    def _store_event(self, now_s: float, previous: int, new: int) -> None:
        """storeScaleEvent: keep the events inside the longest policy period."""
        if new > previous:
            events, rules, change = self.up_events, self.spec.scale_up, new - previous
        else:
            events, rules, change = self.down_events, self.spec.scale_down, previous - new
        cutoff = now_s - rules.longest_period_s
        events[:] = [e for e in events if e.at_s > cutoff]
        events.append(_Event(now_s, change))
