"""The inventory: targets come only from it, labels choose among its entries, errors name
file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from actions.inventory import Inventory, InventoryError, Refusal, TargetRef, load_inventory
from schemas.actions import Target

INVENTORY = """\
default_namespace: origin-production
namespaces:
  origin-production:
    deployments:
      origin-backend:
        max_replicas: 20
        hpa: {min: 3, max: 20}
        emergency_image: registry.example/origin-backend:stable
      origin-frontend: {max_replicas: 10}
    configmaps:
      origin-backend-config: {keys: [DB_POOL_MAX]}
    pods:
      origin-backend: {app: origin-backend}
  origin-staging:
    deployments:
      origin-backend: {max_replicas: 4}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def inventory(tmp_path: Path) -> Inventory:
    return load_inventory(write(tmp_path, INVENTORY))


def ref(**kwargs: object) -> TargetRef:
    return TargetRef.model_validate(kwargs)


def test_a_fixed_target_resolves_in_the_default_namespace(inventory: Inventory) -> None:
    got = inventory.resolve(ref(kind="Deployment", name="origin-backend"), {})
    assert got == Target(kind="Deployment", namespace="origin-production", name="origin-backend")
    entry = inventory.deployment(got)
    assert entry is not None
    assert entry.max_replicas == 20
    assert inventory.resolve(ref(kind="Namespace"), {}) == Target(
        kind="Namespace", namespace="origin-production"
    )


def test_a_label_chooses_among_inventory_entries(inventory: Inventory) -> None:
    step = ref(kind="Deployment", name_from_label="deployment", namespace_from_label="namespace")
    labels = {"deployment": "origin-backend", "namespace": "origin-staging"}
    assert inventory.resolve(step, labels) == Target(
        kind="Deployment", namespace="origin-staging", name="origin-backend"
    )
    labels = {"deployment": "origin-frontend"}
    got = inventory.resolve(step, labels)
    assert isinstance(got, Target)
    assert got.name == "origin-frontend"


def test_a_forged_label_naming_a_deployment_outside_the_inventory_is_refused(
    inventory: Inventory,
) -> None:
    step = ref(kind="Deployment", name_from_label="deployment", namespace_from_label="namespace")
    got = inventory.resolve(step, {"deployment": "evil", "namespace": "origin-production"})
    assert got == Refusal("Deployment origin-production/evil is not in the inventory")
    # The fixed name is a fallback for a missing label, never for a forged one.
    step = ref(kind="Deployment", name_from_label="deployment", name="origin-backend")
    assert inventory.resolve(step, {"deployment": "evil"}) == Refusal(
        "Deployment origin-production/evil is not in the inventory"
    )
    got = inventory.resolve(step, {})
    assert isinstance(got, Target)
    assert got.name == "origin-backend"
    forged_ns = inventory.resolve(
        ref(kind="Namespace", namespace_from_label="namespace"), {"namespace": "kube-system"}
    )
    assert forged_ns == Refusal("namespace kube-system is not in the inventory")


def test_a_missing_label_without_a_fallback_is_refused(inventory: Inventory) -> None:
    got = inventory.resolve(ref(kind="Deployment", name_from_label="deployment"), {})
    assert got == Refusal("no alert label deployment to choose a Deployment")


def test_configmaps_and_pod_groups(inventory: Inventory) -> None:
    cm = inventory.resolve(ref(kind="ConfigMap", name="origin-backend-config"), {})
    assert isinstance(cm, Target)
    entry = inventory.configmap(cm)
    assert entry is not None
    assert entry.keys == ("DB_POOL_MAX",)
    pods = inventory.resolve(ref(kind="Pods", name="origin-backend"), {})
    assert pods == Target(
        kind="Pods", namespace="origin-production", selector={"app": "origin-backend"}
    )
    assert inventory.resolve(ref(kind="Pods", selector={"app": "origin-backend"}), {}) == pods
    wide = inventory.resolve(ref(kind="Pods", selector={"tier": "db"}), {})
    assert wide == Refusal("pods selector tier=db in origin-production is not in the inventory")
    assert isinstance(pods, Target)
    assert inventory.contains(pods)
    assert not inventory.contains(Target(kind="Deployment", namespace="x", name="origin-backend"))


def test_an_empty_inventory_resolves_nothing() -> None:
    got = Inventory().resolve(ref(kind="Deployment", name="origin-backend"), {})
    assert got == Refusal("no namespace for the Deployment target, and no default_namespace")


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("namespaces:\n  p:\n    deployments:\n      a: {max_replica: 3}\n", 4, "unknown key"),
        (
            "namespaces:\n  p:\n    deployments:\n      a:\n        max_replicas: 3\n"
            "        hpa: {min: 1, max: 5}\n",
            6,
            "hpa max 5 is above max_replicas 3",
        ),
        ("default_namespace: q\nnamespaces:\n  p: {}\n", 1, "namespace q is not in namespaces"),
        ("namespaces:\n  p:\n    configmaps:\n      c: {keys: []}\n", 4, "keys"),
        ("namespaces:\n  p:\n    pods:\n      g: {}\n", 4, "needs a label selector"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(InventoryError) as info:
        load_inventory(path)
    assert f"{path}:{line}:" in str(info.value)
    assert message in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "Namespace", "name": "x"}, "takes no name"),
        ({"kind": "Deployment"}, "needs name or name_from_label"),
        ({"kind": "Deployment", "name": "a", "selector": {"a": "b"}}, "takes no selector"),
        ({"kind": "Pods"}, "group name"),
        ({"kind": "Service", "name": "a"}, "Input should be"),
    ],
)
def test_a_target_ref_fits_its_kind(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TargetRef.model_validate(kwargs)


SERVICES = """\
aws:
  rds: {origin-db: {identifier: origin-db-prod, failover: true}}
  cloudfront: {origin-cdn: {distribution_id: E2EXAMPLE, paths: ["/static/*"]}}
databases:
  origin-db: {dsn_file: /run/secrets/origin-db-dsn, idle_after: 10m}
redis:
  origin-cache: {url_file: /run/secrets/redis-url}
probes:
  http: {origin-health: {url: "https://origin.example.com/healthz"}}
prometheus:
  main: {url: "http://prometheus:9090", queries: {rate: "sum(rate(x[5m]))"}}
"""


def test_targets_beyond_kubernetes_have_a_name_and_no_namespace(tmp_path: Path) -> None:
    inventory = load_inventory(write(tmp_path, SERVICES))
    ref = TargetRef(kind="Database", name_from_label="database", name="origin-db")
    assert inventory.resolve(ref, {}) == Target(kind="Database", name="origin-db")
    forged = inventory.resolve(ref, {"database": "billing-db"})
    assert forged == Refusal("Database billing-db is not in the inventory")
    assert inventory.resolve(TargetRef(kind="RdsInstance", name="origin-db"), {}) == Target(
        kind="RdsInstance", name="origin-db"
    )
    # The same name in another section is another kind's.
    assert isinstance(inventory.resolve(TargetRef(kind="Redis", name="origin-db"), {}), Refusal)
    entry = inventory.entry("Database", "origin-db")
    assert entry is not None
    assert entry.idle_after.total_seconds() == 600  # type: ignore[attr-defined]
    assert inventory.contains(Target(kind="Prometheus", name="main"))
    assert not inventory.contains(Target(kind="Prometheus", namespace="x", name="main"))


def test_a_service_target_takes_no_namespace() -> None:
    with pytest.raises(ValueError, match="a Redis target has no namespace"):
        TargetRef(kind="Redis", name="c", namespace="ns")
    with pytest.raises(ValueError, match="a Database target needs name or name_from_label"):
        TargetRef(kind="Database")


def test_service_errors_name_file_and_line(tmp_path: Path) -> None:
    text = SERVICES.replace("idle_after: 10m", "idle_after: soon")
    with pytest.raises(InventoryError, match=r"inventory\.yaml:5: .*idle_after"):
        load_inventory(write(tmp_path, text))
    text = (
        "aws:\n  elasticache:\n"
        "    c: {replication_group_id: a, emergency: {replication_group_id: a}}\n"
    )
    with pytest.raises(InventoryError, match="must be another group"):
        load_inventory(write(tmp_path, text))
