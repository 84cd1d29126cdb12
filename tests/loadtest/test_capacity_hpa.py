"""The HPA algorithm against cases computed by hand from the controller's rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from loadtest.capacity.hpa import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    Autoscaler,
    HpaSpec,
    metric_replicas,
    usage_ratio,
)

REPO = Path(__file__).resolve().parents[2]


def test_usage_ratio_is_the_mean_over_the_target() -> None:
    assert usage_ratio([30, 90], 60) == 1.0
    # Milli-units with integer division: (1 + 2 + 0) m // 3 = 1 m.
    assert usage_ratio([0.001, 0.002, 0.0], 0.001) == 1.0


def test_tolerance_keeps_the_count_within_ten_percent() -> None:
    # 65 / 60 = 1.083: inside the 10% band, no change whatever ceil(1.083 * 2) says.
    assert metric_replicas([65, 65], 60, current_replicas=2) == 2
    # 55 / 60 = 0.917: inside too.
    assert metric_replicas([55, 55, 55], 60, current_replicas=3) == 3
    # 67 / 60 = 1.117: outside; ceil(1.117 * 2) = 3.
    assert metric_replicas([67, 67], 60, current_replicas=2) == 3
    # 30 / 60 = 0.5: ceil(0.5 * 4) = 2.
    assert metric_replicas([30, 30, 30, 30], 60, current_replicas=4) == 2


def test_desired_is_ceil_of_ratio_times_ready_pods() -> None:
    assert metric_replicas([120, 120, 120], 60, current_replicas=3) == 6
    assert metric_replicas([100, 0], 60, current_replicas=2) == 2  # 50/60 = 0.83 -> ceil(1.67)
    assert metric_replicas([200], 60, current_replicas=1) == 4  # ceil(3.33)


def test_unready_pods_count_as_zero_when_scaling_up() -> None:
    # Two ready pods at 2x the target, two pods still starting: counted as 0, the mean is
    # exactly the target, so no change (the new pods will take the load).
    assert metric_replicas([120, 120], 60, current_replicas=4, unready=2) == 4
    # At 3x: [180, 180, 0, 0] -> 1.5 -> ceil(1.5 * 4) = 6.
    assert metric_replicas([180, 180], 60, current_replicas=4, unready=2) == 6
    # Scaling down, unready pods are left out: ceil(0.5 * 2) = 1.
    assert metric_replicas([30, 30], 60, current_replicas=4, unready=2) == 1


def test_missing_pods_count_as_the_target_when_scaling_down() -> None:
    # [30, 30, 60, 60] -> 0.75 -> ceil(0.75 * 4) = 3.
    assert metric_replicas([30, 30], 60, current_replicas=4, missing=2) == 3
    # Scaling up they count as 0: [240, 0] -> 2 -> ceil(2 * 2) = 4.
    assert metric_replicas([240], 60, current_replicas=2, missing=1) == 4
    with pytest.raises(ValueError):
        metric_replicas([], 60, current_replicas=2)


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    hpa = Autoscaler(HpaSpec(min_replicas=1, max_replicas=20, target=60))
    assert hpa.sync(0, 10, [60] * 10) == 10
    # The load falls tenfold: each sync proposes 1, but the highest recommendation of the
    # last 300 s (10, at t = 0) holds the count...
    for t in range(15, 300, 15):
        assert hpa.sync(t, 10, [6] * 10) == 10, t
    # ... until it is older than the window (strictly): at t = 300 it is gone. The rate
    # policy (-100% per 15 s) allows any drop, minReplicas stops it at 1.
    assert hpa.sync(300, 10, [6] * 10) == 1


def test_scale_down_follows_the_highest_recent_recommendation() -> None:
    hpa = Autoscaler(HpaSpec(min_replicas=1, max_replicas=20, target=60))
    hpa.sync(0, 8, [60] * 8)  # recommendation 8 at t = 0
    assert hpa.sync(100, 8, [45] * 8) == 8  # proposes 6 (ceil(0.75 * 8)); 8 still in window
    assert hpa.sync(301, 8, [6] * 8) == 6  # the 8 left the window, the 6 of t = 100 did not
    assert hpa.sync(401, 6, [6] * 6) == 1  # the 6 has left too


def test_scale_up_is_limited_to_the_default_policies() -> None:
    hpa = Autoscaler(HpaSpec(min_replicas=2, max_replicas=20, target=60))
    # 10x the target: 20 proposed. Allowed: max(+100% of 2, +4 pods) = 6.
    assert hpa.sync(0, 2, [600, 600]) == 6
    # 15 s later the first step is out of its 15 s period: max(12, 10) = 12.
    assert hpa.sync(15, 6, [600] * 6) == 12
    # Then max(24, 16) = 24, capped by maxReplicas.
    assert hpa.sync(30, 12, [600] * 12) == 20
    # At the maximum, no metric moves it further.
    assert hpa.sync(40, 20, [600] * 20) == 20


def test_a_second_step_inside_the_period_counts_the_first() -> None:
    hpa = Autoscaler(HpaSpec(min_replicas=2, max_replicas=50, target=60))
    assert hpa.sync(0, 2, [600, 600]) == 6
    # 10 s later the +4 of t = 0 is still inside the 15 s period: the period started at
    # 2, so the limit is still max(4, 6) = 6.
    assert hpa.sync(10, 6, [600] * 6) == 6


def test_min_and_max_replicas_bound_the_count() -> None:
    hpa = Autoscaler(HpaSpec(min_replicas=3, max_replicas=5, target=60))
    assert hpa.sync(0, 1, [600]) == 3  # below min: to min, whatever the metric
    assert hpa.sync(15, 9, [0] * 9) == 5  # above max: to max
    assert hpa.sync(30, 0, []) == 0  # scaled to zero by hand: the HPA stays off
    assert hpa.sync(45, 4, []) == 4  # no metrics: no change


def test_the_manifest_uses_the_defaults_the_simulator_implements() -> None:
    doc = yaml.safe_load((REPO / "deploy" / "k8s" / "base" / "hpa.yaml").read_text())
    spec = HpaSpec.from_manifest(doc)
    assert spec.scale_up == DEFAULT_SCALE_UP and spec.scale_down == DEFAULT_SCALE_DOWN
    assert spec.target > 0 and 1 <= spec.min_replicas <= spec.max_replicas
    # An HPA without behavior gets the same defaults.
    del doc["spec"]["behavior"]
    bare = HpaSpec.from_manifest(doc)
    assert bare.scale_up == DEFAULT_SCALE_UP and bare.scale_down == DEFAULT_SCALE_DOWN
