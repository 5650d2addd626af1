"""deploy/kubernetes/ against the real kube-apiserver of the test services, with kubectl.

``kubectl kustomize`` renders both overlays into the objects each should hold; a server-side
dry-run apply accepts every object; and after a real apply of only the RBAC objects, ``kubectl
auth can-i --as=system:serviceaccount:<ns>:sevpipe`` says yes to each verb of the action
catalogue, as the least-privilege table of docs/security.md lists them (parsed here: the one
list the docs and this test share), and no to Secrets, to another namespace, to anything the
table does not list and to cluster-wide writes; and the ConfigMap's in-cluster kubeconfig,
loaded as sevpipe loads it with a token of that ServiceAccount, reads what the Role grants and
gets 403 elsewhere. Each test works in namespaces of its own (the manifests' namespaces
renamed) and deletes them, and the cluster-scoped objects it made.
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from services import Services, unique_name

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
SECURITY_DOC = ROOT / "docs" / "security.md"
OVERLAYS = ("embedded", "production")
STAGES = ("ingest", "classify", "act", "notify")
TIMEOUT = 30.0

# The manifests' namespaces: where sevpipe runs, the application it acts on, the ingress
# controller whose ConfigMap block_ip patches. The tests rename them to fresh ones.
APP_NS, TARGET_NS, INGRESS_NS = "sevpipe", "origin-production", "ingress-nginx"
ACCOUNT = "sevpipe"
SECRET = "sevpipe-secrets"
PORT = 9095
# The ConfigMaps patch_configmap and block_ip may touch (the base's inventory.yaml).
TARGET_CONFIGMAP, INGRESS_CONFIGMAP = "origin-backend-config", "ingress-nginx-controller"
RBAC_KINDS = {"ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}
CLUSTER_KINDS = {"ClusterRole", "ClusterRoleBinding"}
BASE_KINDS = RBAC_KINDS | {"ConfigMap"}
KINDS = {
    "embedded": BASE_KINDS | {"Deployment", "PersistentVolumeClaim", "Service"},
    "production": BASE_KINDS
    | {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"},
}


@dataclass(frozen=True, order=True)
class Grant:
    """One verb on one resource (``pods/log``: a subresource), maybe only on named objects."""

    group: str
    resource: str
    verb: str
    named: bool = False  # only on the inventory's ConfigMaps (resourceNames)
    cluster: bool = False  # cluster-scoped (granted by the ClusterRole)

    def can_i_args(self, name: str = "") -> list[str]:
        resource, _, sub = self.resource.partition("/")
        what = f"{resource}.{self.group}" if self.group else resource
        if name:
            what += f"/{name}"
        return [self.verb, what] + ([f"--subresource={sub}"] if sub else [])


def catalogue() -> list[Grant]:
    """The least-privilege table of docs/security.md ("### Kubernetes"), one Grant a verb."""
    text = SECURITY_DOC.read_text()
    section = text.split("### Kubernetes", 1)[1].split("\n### ", 1)[0]
    grants: list[Grant] = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 4 or not cells[0].startswith("`"):
            continue
        group = cells[0].strip("`").strip('"')
        cluster = "cluster-scoped" in cells[1]
        resources = re.findall(r"`([^`]+)`", re.sub(r"\(.*?\)", "", cells[1]))
        for part in cells[2].split(";"):
            named = "resourceNames" in part
            verbs = [v.strip() for v in re.sub(r"\(.*?\)", "", part).split(",") if v.strip()]
            grants += [
                Grant(group, r, v, named=named, cluster=cluster) for r in resources for v in verbs
            ]
    return sorted(set(grants))


CATALOGUE = catalogue()


def check_catalogue_parsed() -> None:
    """The parser reads the table the docs hold: the usual verbs are in it, and no more."""
    got = {(g.group, g.resource, g.verb) for g in CATALOGUE}
    for expected in [
        ("apps", "deployments", "patch"),
        ("apps", "deployments/scale", "patch"),
        ("autoscaling", "horizontalpodautoscalers", "create"),
        ("", "pods/log", "get"),
        ("", "pods", "list"),
        ("", "services", "list"),
        ("networking.k8s.io", "ingresses", "list"),
        ("apps", "replicasets", "list"),
        ("", "events", "list"),
        ("metrics.k8s.io", "nodes", "list"),
    ]:
        assert expected in got, expected
    assert Grant("", "configmaps", "patch", named=True) in CATALOGUE
    assert [g for g in CATALOGUE if g.cluster] == [
        Grant("metrics.k8s.io", "nodes", "list", cluster=True)
    ]
    assert not {g.verb for g in CATALOGUE} & {"delete", "update", "watch", "deletecollection"}
    assert not [g for g in CATALOGUE if "secret" in g.resource]


# -- kubectl ----------------------------------------------------------------------------------


def kubectl_path() -> str:
    path = shutil.which("kubectl")
    assert path, "kubectl is missing: scripts/test-services up installs it (Debian's kubectl)"
    return path


def kubectl(
    *args: str, kubeconfig: str = "", stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [kubectl_path(), *([f"--kubeconfig={kubeconfig}"] if kubeconfig else []), *args]
    done = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
    return done


def render(overlay: str) -> list[dict[str, Any]]:
    out = kubectl("kustomize", str(DEPLOY / "overlays" / overlay)).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


# -- what the overlays render -------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def pod_spec(dep: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = dep["spec"]["template"]["spec"]
    return spec


def check_pod(dep: dict[str, Any], configmap: str) -> tuple[dict[str, Any], list[str]]:
    """What every sevpipe pod holds; returns its container and its args."""
    spec = pod_spec(dep)
    name = dep["metadata"]["name"]
    assert spec["serviceAccountName"] == ACCOUNT, name
    sc = spec["securityContext"]
    assert sc["runAsNonRoot"] is True, name
    assert sc["runAsUser"] != 0, name
    [c] = spec["containers"]
    assert c["image"] == "sevpipe:latest", name
    csc = c["securityContext"]
    assert csc["readOnlyRootFilesystem"] is True, name
    assert csc["allowPrivilegeEscalation"] is False, name
    assert csc["capabilities"]["drop"] == ["ALL"], name
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", name
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", name
    assert {p["containerPort"] for p in c["ports"]} == {PORT}, name
    assert c["resources"]["requests"]["cpu"], name
    assert c["resources"]["requests"]["memory"], name
    assert c["resources"]["limits"]["memory"], name
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], name  # noqa: S108 - the pod's path, not ours
    assert volumes[mounts["/etc/sevpipe"]]["configMap"]["name"] == configmap, name
    assert "/var/lib/sevpipe" in mounts, name
    args = c["args"]
    assert args[1:] == ["--config", "/etc/sevpipe/sevpipe.yaml"], name
    # Tokens only by reference to the Secret, never a literal value.
    for env in c.get("env", []):
        assert "value" not in env, (name, env["name"])
        assert env["valueFrom"]["secretKeyRef"]["name"] == SECRET, (name, env["name"])
    return c, args


def env_names(container: dict[str, Any]) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def selects(selector: dict[str, str], dep: dict[str, Any]) -> bool:
    labels = dep["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector.items())


def check_config(objs: list[dict[str, Any]], tmp_path: Path) -> str:
    """The one ConfigMap: settings sevpipe's own model accepts, a valid inventory, a kubeconfig."""
    from sevpipe.settings import Settings

    [cm] = of_kind(objs, "ConfigMap")
    data = cm["data"]
    assert set(data) == {"sevpipe.yaml", "kubeconfig", "inventory.yaml"}
    raw = yaml.safe_load(data["sevpipe.yaml"])
    # Secrets come from the Secret, through the environment: none in the ConfigMap.
    assert not {k for k in raw if re.search("token|password|dsn|redis_url|secret", k)}, raw
    settings = Settings.model_validate(raw)  # the model alone: no environment read
    assert str(settings.kubeconfig) == "/etc/sevpipe/kubeconfig"
    assert str(settings.inventory_file) == "/etc/sevpipe/inventory.yaml"
    assert settings.port == PORT
    assert settings.host == "0.0.0.0"
    assert settings.actions_mode == "dry_run"
    kubeconfig = yaml.safe_load(data["kubeconfig"])
    assert kubeconfig["users"][0]["user"]["tokenFile"].startswith(
        "/var/run/secrets/kubernetes.io/serviceaccount/"
    )
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(data["inventory.yaml"])
    sevpipe = ROOT / ".venv" / "bin" / "sevpipe"
    done = subprocess.run(
        [str(sevpipe), "check-config", str(inventory)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    namespaces = yaml.safe_load(data["inventory.yaml"])["namespaces"]
    assert set(namespaces[TARGET_NS]["configmaps"]) == {TARGET_CONFIGMAP}
    assert set(namespaces[INGRESS_NS]["configmaps"]) == {INGRESS_CONFIGMAP}
    name: str = cm["metadata"]["name"]
    return name


def test_embedded_renders(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    objs = rendered["embedded"]
    assert {o["kind"] for o in objs} == KINDS["embedded"]
    assert not of_kind(objs, "Secret")
    cm = check_config(objs, tmp_path)
    [dep] = of_kind(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    container, args = check_pod(dep, cm)
    assert args[0] == "run"
    assert pod_spec(dep)["automountServiceAccountToken"] is True  # it acts
    assert "SEVPIPE_AUTH_TOKEN" in env_names(container)
    [pvc] = of_kind(objs, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod_spec(dep)["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claim = volumes[mounts["/var/lib/sevpipe"]]["persistentVolumeClaim"]["claimName"]
    assert claim == pvc["metadata"]["name"]
    [svc] = of_kind(objs, "Service")
    assert selects(svc["spec"]["selector"], dep)
    assert [p["port"] for p in svc["spec"]["ports"]] == [PORT]


def test_production_renders(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    objs = rendered["production"]
    assert {o["kind"] for o in objs} == KINDS["production"]
    assert not of_kind(objs, "Secret")
    cm = check_config(objs, tmp_path)
    settings = yaml.safe_load(of_kind(objs, "ConfigMap")[0]["data"]["sevpipe.yaml"])
    assert settings["kafka_bootstrap"]
    assert settings["kafka_replication"] >= 3
    deps = {d["metadata"]["name"]: d for d in of_kind(objs, "Deployment")}
    assert set(deps) == {f"sevpipe-{s}" for s in STAGES}
    for stage in STAGES:
        dep = deps[f"sevpipe-{stage}"]
        container, args = check_pod(dep, cm)
        assert args[0] == stage
        assert {"SEVPIPE_POSTGRES_DSN", "SEVPIPE_REDIS_URL"} <= env_names(container)
        # The Alertmanager credential only on the edge; a token to the apiserver only on act.
        assert ("SEVPIPE_AUTH_TOKEN" in env_names(container)) == (stage == "ingest")
        assert pod_spec(dep)["automountServiceAccountToken"] is (stage == "act")
        assert "persistentVolumeClaim" not in str(pod_spec(dep)["volumes"])
    [svc] = of_kind(objs, "Service")
    assert [d for d in deps.values() if selects(svc["spec"]["selector"], d)] == [
        deps["sevpipe-ingest"]
    ]
    assert [p["port"] for p in svc["spec"]["ports"]] == [PORT]
    [hpa] = of_kind(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "sevpipe-ingest"
    assert 1 < hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb_targets = sorted(
        name
        for pdb in of_kind(objs, "PodDisruptionBudget")
        for name, d in deps.items()
        if selects(pdb["spec"]["selector"]["matchLabels"], d)
    )
    assert pdb_targets == sorted(deps)
    check_network_policies(of_kind(objs, "NetworkPolicy"), list(deps.values()))


def check_network_policies(policies: list[dict[str, Any]], deps: list[dict[str, Any]]) -> None:
    """Every pod is under a policy with both directions; ingress only to the HTTP port;
    egress to DNS, Kafka, PostgreSQL and Redis for all, the apiserver for act."""
    egress: dict[str, set[int]] = {}
    for dep in deps:
        mine = [p for p in policies if selects(p["spec"]["podSelector"]["matchLabels"], dep)]
        name = dep["metadata"]["name"]
        assert {"Ingress", "Egress"} <= {t for p in mine for t in p["spec"]["policyTypes"]}, name
        ingress = [rule for p in mine for rule in p["spec"].get("ingress", [])]
        assert ingress, name
        for rule in ingress:
            assert [port["port"] for port in rule["ports"]] == [PORT], name
        egress[name] = {
            port["port"]
            for p in mine
            for rule in p["spec"].get("egress", [])
            for port in rule["ports"]
        }
        assert {53, 9092, 5432, 6379} <= egress[name], name
    assert {443, 6443} <= egress["sevpipe-act"]
    assert 443 not in egress["sevpipe-ingest"]
    assert 443 not in egress["sevpipe-classify"]


def expand(rules: list[dict[str, Any]], cluster: bool) -> set[tuple[Grant, tuple[str, ...]]]:
    return {
        (
            Grant(g, r, v, named=bool(rule.get("resourceNames")), cluster=cluster),
            tuple(rule.get("resourceNames", ())),
        )
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_roles_hold_exactly_the_catalogue(
    rendered: dict[str, list[dict[str, Any]]], overlay: str
) -> None:
    check_catalogue_parsed()
    objs = rendered[overlay]
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in of_kind(objs, "Role")}
    assert {ns for ns, _ in roles} == {TARGET_NS, INGRESS_NS}
    target = expand(next(r for (ns, _), r in roles.items() if ns == TARGET_NS)["rules"], False)
    ingress = expand(next(r for (ns, _), r in roles.items() if ns == INGRESS_NS)["rules"], False)
    [cluster_role] = of_kind(objs, "ClusterRole")
    cluster = expand(cluster_role["rules"], True)
    expected = {(g, (TARGET_CONFIGMAP,) if g.named else ()) for g in CATALOGUE if not g.cluster}
    assert target == expected
    assert ingress == {(g, (INGRESS_CONFIGMAP,)) for g in CATALOGUE if g.named}
    assert cluster == {(g, ()) for g in CATALOGUE if g.cluster}
    # Every binding names the one ServiceAccount, in sevpipe's namespace, and a role above.
    bindings = of_kind(objs, "RoleBinding") + of_kind(objs, "ClusterRoleBinding")
    assert len(bindings) == 3
    for b in bindings:
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": APP_NS}]
    [sa] = of_kind(objs, "ServiceAccount")
    assert (sa["metadata"]["namespace"], sa["metadata"]["name"]) == (APP_NS, ACCOUNT)


# -- against the kube-apiserver -------------------------------------------------------------------


@dataclass(frozen=True)
class Place:
    """Fresh names for the manifests' namespaces and cluster-scoped objects."""

    app: str
    target: str
    ingress: str
    other: str
    suffix: str

    @property
    def namespaces(self) -> dict[str, str]:
        return {APP_NS: self.app, TARGET_NS: self.target, INGRESS_NS: self.ingress}


@pytest.fixture
def place(services: Services) -> Iterator[Place]:
    suffix = unique_name("t").removeprefix("t-")
    spot = Place(
        app=f"sevpipe-{suffix}",
        target=f"origin-{suffix}",
        ingress=f"ingress-{suffix}",
        other=f"other-{suffix}",
        suffix=suffix,
    )
    names = [spot.app, spot.target, spot.ingress, spot.other]
    try:
        for ns in names:
            kubectl("create", "namespace", ns, kubeconfig=services.kubeconfig)
        yield spot
    finally:
        kubectl(
            "delete",
            "namespace",
            *names,
            "--wait=false",
            "--ignore-not-found",
            kubeconfig=services.kubeconfig,
            check=False,
        )
        for kind in sorted(CLUSTER_KINDS):
            kubectl(
                "delete",
                kind.lower(),
                "-l",
                f"sevpipe-test={suffix}",
                "--ignore-not-found",
                kubeconfig=services.kubeconfig,
                check=False,
            )


def relocate(objs: list[dict[str, Any]], spot: Place) -> list[dict[str, Any]]:
    """The objects with the test's namespaces and unique cluster-scoped names."""
    out = []
    for obj in yaml.safe_load(yaml.safe_dump(objs)):
        meta = obj["metadata"]
        if obj["kind"] in CLUSTER_KINDS:
            assert "namespace" not in meta, obj["kind"]
            meta["name"] += f"-{spot.suffix}"
            meta.setdefault("labels", {})["sevpipe-test"] = spot.suffix
            if obj["kind"] == "ClusterRoleBinding":
                obj["roleRef"]["name"] += f"-{spot.suffix}"
        else:
            meta["namespace"] = spot.namespaces[meta["namespace"]]
        for subject in obj.get("subjects", []):
            subject["namespace"] = spot.namespaces[subject["namespace"]]
        out.append(obj)
    return out


def as_list(objs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objs})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_side_dry_run_accepts_every_object(
    services: Services, place: Place, overlay: str
) -> None:
    objs = relocate(render(overlay), place)
    done = kubectl(
        "apply",
        "--dry-run=server",
        "-o",
        "name",
        "-f",
        "-",
        kubeconfig=services.kubeconfig,
        stdin=as_list(objs),
    )
    accepted = sorted(done.stdout.split())
    assert len(accepted) == len(objs), done.stdout
    assert {a.split("/")[0].split(".")[0] for a in accepted} == {o["kind"].lower() for o in objs}
    # A dry run writes nothing.
    left = kubectl(
        "get",
        "deployments,configmaps,roles",
        "-n",
        place.app,
        "-o",
        "name",
        kubeconfig=services.kubeconfig,
    )
    assert "sevpipe" not in left.stdout


# Groups this apiserver does not serve (no metrics-server): `kubectl auth can-i` resolves a
# resource through discovery and, failing that, asks about "nodes.metrics.k8s.io" in the core
# group. For them the same question goes as the SelfSubjectAccessReview can-i sends, with the
# group spelled out, created as the ServiceAccount.
UNSERVED_GROUPS = ("metrics.k8s.io",)


def can_i(services: Services, ns: str, args: list[str], spot: Place) -> bool:
    who = f"--as=system:serviceaccount:{spot.app}:{ACCOUNT}"
    verb, what, *rest = args
    resource, _, group = what.partition("/")[0].partition(".")
    if group in UNSERVED_GROUPS and not rest:
        attrs = {"verb": verb, "group": group, "resource": resource}
        if ns:
            attrs["namespace"] = ns
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": attrs},
        }
        done = kubectl(
            "create",
            who,
            "--validate=false",
            "-o",
            "jsonpath={.status.allowed}",
            "-f",
            "-",
            kubeconfig=services.kubeconfig,
            stdin=yaml.safe_dump(review),
        )
        return done.stdout.strip() == "true"
    done = kubectl(
        "auth",
        "can-i",
        *args,
        *(["-n", ns] if ns else []),
        who,
        kubeconfig=services.kubeconfig,
        check=False,
    )
    answer = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert answer in ("yes", "no"), done.stdout + done.stderr
    return answer == "yes"


def test_service_account_may_do_exactly_the_catalogue(services: Services, place: Place) -> None:
    check_catalogue_parsed()
    rbac = [o for o in relocate(render("production"), place) if o["kind"] in RBAC_KINDS]
    assert {o["kind"] for o in rbac} == RBAC_KINDS
    kubectl("apply", "-f", "-", kubeconfig=services.kubeconfig, stdin=as_list(rbac))

    yes: list[tuple[str, list[str]]] = []
    no: list[tuple[str, list[str]]] = []
    for g in CATALOGUE:
        if g.cluster:
            yes.append(("", g.can_i_args()))
            continue
        if g.named:
            yes.append((place.target, g.can_i_args(TARGET_CONFIGMAP)))
            yes.append((place.ingress, g.can_i_args(INGRESS_CONFIGMAP)))
            no.append((place.target, g.can_i_args("some-other-config")))
            no.append((place.target, g.can_i_args(INGRESS_CONFIGMAP)))
            no.append((place.ingress, g.can_i_args(TARGET_CONFIGMAP)))
        else:
            yes.append((place.target, g.can_i_args()))
            no.append((place.ingress, g.can_i_args()))
        # Another namespace, and sevpipe's own: nothing of the catalogue.
        no.append((place.other, g.can_i_args(TARGET_CONFIGMAP if g.named else "")))
        no.append((place.app, g.can_i_args(TARGET_CONFIGMAP if g.named else "")))
    for ns in (place.target, place.ingress, place.app, place.other):
        for verb in ("get", "list", "watch", "create"):
            no.append((ns, [verb, "secrets"]))
    for verb in ("delete", "update", "watch", "create"):
        no.append((place.target, [verb, "deployments.apps"]))
    no += [
        (place.target, ["delete", "pods"]),
        (place.target, ["create", "pods", "--subresource=exec"]),
        (place.target, ["update", "deployments.apps", "--subresource=scale"]),
        (place.target, ["delete", "horizontalpodautoscalers.autoscaling"]),
        (place.target, ["create", "configmaps"]),
        (place.target, ["get", "configmaps"]),  # any name: only the inventory's
        (place.target, ["create", "rolebindings.rbac.authorization.k8s.io"]),
        ("", ["create", "clusterroles.rbac.authorization.k8s.io"]),
        ("", ["create", "clusterrolebindings.rbac.authorization.k8s.io"]),
        ("", ["delete", "nodes"]),
        ("", ["patch", "nodes"]),
        ("", ["list", "nodes"]),
        ("", ["create", "namespaces"]),
        ("", ["list", "secrets", "--all-namespaces"]),
        ("", ["list", "pods", "--all-namespaces"]),
        ("", ["patch", "deployments.apps", "--all-namespaces"]),
    ]
    checks = [(ns, args, True) for ns, args in yes] + [(ns, args, False) for ns, args in no]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda c: can_i(services, c[0], c[1], place), checks))
    wrong = [
        f"{' '.join(args)} -n {ns or '(cluster)'}: {'yes' if got else 'no'}"
        for (ns, args, want), got in zip(checks, answers, strict=True)
        if got != want
    ]
    assert not wrong, "\n".join(wrong)
    assert len(yes) == len(CATALOGUE) + sum(g.named for g in CATALOGUE)


def service_account_kubeconfig(services: Services, place: Place, tmp_path: Path) -> Path:
    """The RBAC objects applied, and the ConfigMap's kubeconfig pointed at the test apiserver
    with a token of the ServiceAccount in its token file."""
    objs = relocate(render("production"), place)
    rbac = [o for o in objs if o["kind"] in RBAC_KINDS]
    kubectl("apply", "-f", "-", kubeconfig=services.kubeconfig, stdin=as_list(rbac))
    [cm] = of_kind(objs, "ConfigMap")
    kubeconfig = yaml.safe_load(cm["data"]["kubeconfig"])
    admin = yaml.safe_load(Path(services.kubeconfig).read_text())["clusters"][0]["cluster"]
    token = kubectl(
        "create",
        "token",
        ACCOUNT,
        "-n",
        place.app,
        "--duration=10m",
        kubeconfig=services.kubeconfig,
    ).stdout.strip()
    token_file, ca_file = tmp_path / "token", tmp_path / "ca.crt"
    token_file.write_text(token)
    ca_file.write_bytes(base64.b64decode(admin["certificate-authority-data"]))
    [user] = kubeconfig["users"]
    assert user["user"] == {"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}
    user["user"]["tokenFile"] = str(token_file)
    [cluster] = kubeconfig["clusters"]
    assert cluster["cluster"]["server"] == "https://kubernetes.default.svc"
    cluster["cluster"] = {"server": admin["server"], "certificate-authority": str(ca_file)}
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    return path


async def test_the_in_cluster_kubeconfig_works_as_the_service_account(
    services: Services, place: Place, tmp_path: Path
) -> None:
    """The ConfigMap's kubeconfig, as sevpipe loads it (``new_client_from_config``), with a
    token of the ServiceAccount in its token file: the server and CA point at the test
    apiserver instead of kubernetes.default.svc. It reads pods where the Role grants it and
    gets 403 on Secrets and in another namespace."""
    path = service_account_kubeconfig(services, place, tmp_path)
    api = await config.new_client_from_config(config_file=str(path))
    async with api:
        core = client.CoreV1Api(api)
        pods = await core.list_namespaced_pod(place.target)
        assert pods.items == []
        with pytest.raises(ApiException) as refused:
            await core.list_namespaced_secret(place.target)
        assert refused.value.status == 403
        with pytest.raises(ApiException) as refused:
            await core.list_namespaced_pod(place.other)
        assert refused.value.status == 403
