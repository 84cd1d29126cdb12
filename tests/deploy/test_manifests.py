"""What each rendered overlay promises: posture, probes, drain, resources, scaling wiring."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from k8stools import REPO, container, env, only

from service.settings import Settings

EXPECTED_KINDS = {
    "Namespace",
    "ServiceAccount",
    "Deployment",
    "Service",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "ServiceMonitor",
    "PrometheusRule",
}


def dockerfile_uid(name: str) -> int:
    text = (REPO / "docker" / name).read_text()
    return int(re.search(r"useradd [^\n]*--uid (\d+)", text).group(1))  # type: ignore[union-attr]


def quantity(value: str | int) -> float:
    """A Kubernetes quantity ("2", "500m", "1Gi") as a number (cores or bytes)."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def test_every_object_is_there_once(docs: list[dict[str, Any]]) -> None:
    kinds = [d["kind"] for d in docs]
    assert set(kinds) == EXPECTED_KINDS and len(kinds) == len(EXPECTED_KINDS)
    namespaced = [d for d in docs if d["kind"] != "Namespace"]
    namespace = only(docs, "Namespace")["metadata"]["name"]
    assert {d["metadata"]["namespace"] for d in namespaced} == {namespace}


def test_runs_as_the_images_user_with_a_read_only_root(docs: list[dict[str, Any]]) -> None:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    uid = dockerfile_uid("Dockerfile")
    assert uid == dockerfile_uid("Dockerfile.gpu") == 10001
    for context in (pod["securityContext"], main["securityContext"]):
        assert context["runAsNonRoot"] is True and context["runAsUser"] == uid
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    assert main["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # The only writable path is an emptyDir on /tmp.
    (mount,) = main["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount["mountPath"] == "/tmp" and volume["name"] == mount["name"]
    assert "emptyDir" in volume


def test_probes_use_the_services_endpoints(docs: list[dict[str, Any]]) -> None:
    main = container(docs)
    port_names = {p["name"] for p in main["ports"]}
    assert main["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert main[probe]["httpGet"]["port"] in port_names
    # The container listens where the probes and the Service look.
    (port,) = main["ports"]
    assert int(env(docs)["RELEVANCE_PORT"]) == port["containerPort"]
    assert env(docs)["RELEVANCE_HOST"] == "0.0.0.0"
    # Warm-up gets at least two minutes before the kubelet gives up on a pod.
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_grace_period_outlasts_prestop_and_the_services_drain(docs: list[dict[str, Any]]) -> None:
    pod = only(docs, "Deployment")["spec"]["template"]["spec"]
    main = container(docs)
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    configured = env(docs).get("RELEVANCE_SHUTDOWN_TIMEOUT_S")
    drain_s = float(configured) if configured else Settings().shutdown_timeout_s
    assert drain_s == Settings.model_fields["shutdown_timeout_s"].default
    # The grace period counts from the start of preStop; leave the lifespan time to drain.
    assert pod["terminationGracePeriodSeconds"] >= pre_stop_s + drain_s + 10


def test_resources_are_set_and_guaranteed(docs: list[dict[str, Any]], overlay: str) -> None:
    resources = container(docs)["resources"]
    assert resources["requests"] == resources["limits"]
    cores = quantity(resources["limits"]["cpu"])
    assert cores >= 1
    # ONNX Runtime's threads follow the CPU limit, not the node's core count.
    assert quantity(env(docs)["RELEVANCE_INTRA_OP_THREADS"]) == cores
    memory = quantity(resources["limits"]["memory"])
    # Above the measured peak RSS (deploy/measurements/) with room for bodies in flight.
    assert memory >= 2 * 355 * 2**20
    if overlay == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == 1
    else:
        assert "nvidia.com/gpu" not in resources["limits"]


def test_overlay_picks_image_and_provider(docs: list[dict[str, Any]], overlay: str) -> None:
    assert env(docs)["RELEVANCE_PROVIDER"] == {"cpu": "cpu", "gpu": "cuda"}[overlay]
    assert container(docs)["image"] == f"relevance-service:{overlay}"
    tolerations = only(docs, "Deployment")["spec"]["template"]["spec"].get("tolerations", [])
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations) == (overlay == "gpu")


def test_selectors_reach_the_pods(docs: list[dict[str, Any]]) -> None:
    deployment = only(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = [
        deployment["spec"]["selector"]["matchLabels"],
        only(docs, "Service")["spec"]["selector"],
        only(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
        only(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"],
    ]
    for selector in selectors:
        assert selector and selector.items() <= pod_labels.items()
    service = only(docs, "Service")
    monitor = only(docs, "ServiceMonitor")
    service_labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service_labels.items()
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= service_ports
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in container(docs)["ports"]}


def test_hpa_scales_the_deployment_on_a_pod_metric(docs: list[dict[str, Any]]) -> None:
    hpa = only(docs, "HorizontalPodAutoscaler")
    deployment = only(docs, "Deployment")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "relevance_inflight_pairs"
    assert metric["pods"]["target"]["type"] == "AverageValue"
    # The PDB lets one pod go; the HPA never goes below two, so one always serves.
    assert hpa["spec"]["minReplicas"] >= 2
    assert only(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    replicas = deployment["spec"]["replicas"]
    assert hpa["spec"]["minReplicas"] <= replicas <= hpa["spec"]["maxReplicas"]


def test_no_file_in_deploy_is_left_out_of_a_kustomization() -> None:
    """Every manifest under deploy/k8s is listed by some kustomization.yaml."""
    import yaml

    root = REPO / "deploy" / "k8s"
    listed: set[Path] = set()
    for kustomization in root.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for entry in spec.get("resources", []):
            listed.add((kustomization.parent / entry).resolve())
        for patch in spec.get("patches", []):
            listed.add((kustomization.parent / patch["path"]).resolve())
    manifests = {p.resolve() for p in root.rglob("*.yaml") if p.name != "kustomization.yaml"}
    assert manifests <= listed, sorted(str(p) for p in manifests - listed)
