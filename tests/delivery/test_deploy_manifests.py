"""deploy/: the Kubernetes manifests pass the Kubernetes API schemas (kubernetes-validate,
offline), the `ray up` config passes Ray's own schema, and the replicas layout of
docker-compose is stateless with read-only bundles."""

from __future__ import annotations

import copy
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bulk.__main__ import build_parser
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
# the oldest Kubernetes still commonly run and the newest the validator knows
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _by_kind(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in docs}


def _validate(doc: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(doc, version, strict=True)


def test_service_manifests_pass_the_kubernetes_schemas() -> None:
    docs = _docs(DEPLOY / "k8s" / "service.yaml")
    for doc in docs:
        _validate(doc)
    kinds = _by_kind(docs)
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(kinds)


def test_the_validator_refuses_a_broken_manifest() -> None:
    """The check above can fail: a probe with a misspelt field and a replica count as text."""
    deployment = _by_kind(_docs(DEPLOY / "k8s" / "service.yaml"))["Deployment"]
    for breaks in (
        lambda d: d["spec"].update(replicas="two"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(
            httpGett={"path": "/readyz", "port": 8000}
        ),
    ):
        broken = copy.deepcopy(deployment)
        breaks(broken)
        with pytest.raises(kubernetes_validate.ValidationError):
            _validate(broken)


def test_deployment_probes_service_and_autoscaler_fit_together() -> None:
    kinds = _by_kind(_docs(DEPLOY / "k8s" / "service.yaml"))
    deployment, service, hpa = (
        kinds["Deployment"],
        kinds["Service"],
        kinds["HorizontalPodAutoscaler"],
    )
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port_names = {p["name"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in port_names
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert container["resources"]["requests"]["cpu"]  # the HPA's utilisation needs a request
    # stateless: read-only root and bundles, the only writable place a scratch emptyDir
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        assert mount.get("readOnly") is True or "emptyDir" in volume, mount
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert _mount_path(container, "bundles") == env["AUSCULT_ARTIFACTS_DIR"]


def _mount_path(container: dict[str, Any], volume: str) -> str:
    (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume]
    return str(path)


def test_rayjob_pods_pass_the_schemas_and_run_the_bulk_command() -> None:
    """KubeRay's RayJob is a custom resource the validator has no schema for: its pod
    templates are checked as Kubernetes PodTemplates, its entrypoint by bulk's parser."""
    (job,) = _docs(DEPLOY / "k8s" / "bulk-rayjob.yaml")
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    images = set()
    for group in groups:
        template = group["template"]
        _validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "t"},
                "template": template,
            }
        )
        volumes = {v["name"] for v in template["spec"]["volumes"]}
        for container in template["spec"]["containers"]:
            images.add(container["image"])
            assert {m["name"] for m in container["volumeMounts"]} <= volumes
    assert len(images) == 1  # head and workers run the same code
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "bulk"]
    args = build_parser().parse_args(argv[3:])
    assert args.address == "auto"
    mounts = {
        m["mountPath"]: m
        for m in cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert str(args.model).startswith(tuple(p for p, m in mounts.items() if m.get("readOnly")))
    assert str(args.out).startswith(tuple(p for p, m in mounts.items() if not m.get("readOnly")))


def test_ray_up_config_passes_rays_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((DEPLOY / "ray-cluster.yaml").read_text())
    validate_config(prepare_config(copy.deepcopy(config)))
    with pytest.raises(Exception, match="min_worker"):
        validate_config(prepare_config({**config, "min_worker": 3}))


class _ComposeLoader(yaml.SafeLoader):
    """YAML with Compose's `!reset` tag (the value it resets to)."""


_ComposeLoader.add_constructor(
    "!reset",
    lambda loader, node: loader.construct_sequence(node),  # type: ignore[arg-type]
)


# as the README runs it; Compose resolves every relative path of every file against the
# project directory, by default the folder of the FIRST file
REPLICAS_COMMAND = ["docker-compose.yml", "deploy/compose.replicas.yml"]


def _compose_host_path(volume: str, project_dir: Path) -> Path | None:
    """The host side of a short-syntax bind mount as Compose resolves it (None for a named
    volume or one from a variable)."""
    source = volume.split(":")[0]
    if source.startswith("$") or not source.startswith((".", "/", "~")):
        return None
    return (project_dir / source).resolve()


def test_compose_replicas_mounts_resolve_from_the_project_directory() -> None:
    project_dir = (REPO / REPLICAS_COMMAND[0]).parent
    checked = 0
    for name in REPLICAS_COMMAND:
        doc = yaml.load((REPO / name).read_text(), Loader=_ComposeLoader)
        for svc in doc["services"].values():
            for volume in svc.get("volumes", []):
                host = _compose_host_path(volume, project_dir)
                if host is not None:
                    checked += 1
                    # a missing file would be created as an empty folder and mounted
                    assert host.is_file() or host.is_dir(), f"{name}: {volume} → {host}"
    assert checked >= 1  # the nginx template at least


def test_compose_replicas_layout_is_stateless_with_read_only_bundles() -> None:
    base = yaml.load((REPO / "docker-compose.yml").read_text(), Loader=_ComposeLoader)
    over = yaml.load((DEPLOY / "compose.replicas.yml").read_text(), Loader=_ComposeLoader)
    svc = base["services"]["auscult"]
    assert "container_name" not in svc  # a fixed name allows one container only
    assert svc["read_only"] is True
    for volume in svc["volumes"]:
        # bundles read-only; the one writable mount is the fit jobs' spool, a named
        # volume the trainer shares
        assert volume.endswith(":ro") or volume.startswith("jobs:/app/jobs"), volume
    assert svc["environment"]["AUSCULT_ARTIFACTS_DIR"] == "/app/artifacts"
    assert svc["environment"]["AUSCULT_JOBS_DIR"] == "/app/jobs"
    trainer = base["services"]["trainer"]
    assert "profiles" not in trainer  # `docker compose up` starts it beside the service
    assert trainer["command"][:1] == ["worker"]
    assert "jobs:/app/jobs" in trainer["volumes"] and "jobs" in base["volumes"]
    # the replicas publish no host port (N containers cannot share one); the balancer does
    assert over["services"]["auscult"]["ports"] == []
    lb = over["services"]["lb"]
    assert lb["depends_on"]["auscult"]["condition"] == "service_healthy"
    (published,) = lb["ports"]
    assert published.endswith(":8080")
    (conf_mount,) = lb["volumes"]
    conf = (REPO / conf_mount.split(":")[0]).read_text()  # the project directory's
    assert "listen 8080;" in conf
    assert "set $auscult http://auscult:${AUSCULT_PORT};" in conf and "resolver " in conf
