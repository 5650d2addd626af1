"""Which actions the settings make possible."""

from __future__ import annotations

from pathlib import Path

from actions.catalogue import Catalogue
from actions.inventory import Inventory
from actions.playbooks import default_playbooks
from sevpipe.actions_wiring import catalogue_of
from sevpipe.settings import Settings


def test_probes_always_kubernetes_and_aws_when_configured(tmp_path: Path) -> None:
    inventory = Inventory()
    # Explicit: the environment may name a kubeconfig (scripts/with-services does).
    bare = catalogue_of(Settings(data_dir=tmp_path, kubeconfig=None, aws=None), inventory).names()
    assert "probe.http" in bare
    assert "prometheus.query" in bare
    assert {"postgres.terminate_idle", "redis.flushdb", "people.credential_rotation"} <= set(bare)
    assert not [n for n in bare if n.startswith(("kubernetes.", "aws."))]

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    settings = Settings(
        data_dir=tmp_path,
        kubeconfig=kubeconfig,
        aws={"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:1"},
    )
    full = catalogue_of(settings, inventory).names()
    wanted = {"kubernetes.rollout_restart", "evidence.collect", "aws.cloudfront_invalidate"}
    assert wanted <= set(full)


def full_catalogue() -> Catalogue:
    """Every action sevpipe has (a kubeconfig and aws named; neither is reached here)."""
    settings = Settings(kubeconfig=Path("/nonexistent/kubeconfig"), aws={"region": "eu-west-1"})
    return catalogue_of(settings, Inventory())


def test_the_default_playbooks_check_against_every_action() -> None:
    """Each action the runbook's playbooks name exists, takes their params and target kind,
    and none that is destructive runs automatically (checked at load with the catalogue)."""
    cat = full_catalogue()
    books = default_playbooks(cat)
    used = {step.action for book in books.playbooks for step in book.steps}
    assert used <= set(cat.names())
    areas = {name.split(".")[0] for name in used}
    assert areas == {
        "kubernetes",
        "aws",
        "postgres",
        "redis",
        "probe",
        "prometheus",
        "people",
        "evidence",
    }
    for book in books.playbooks:
        if book.match.min_severity in ("SEV-0", "SEV-1"):
            assert book.steps[-1].action == "evidence.collect", book.name


def test_default_modes_are_conservative() -> None:
    cat = full_catalogue()
    automatic = set()
    for book in default_playbooks(cat).playbooks:
        for step in book.steps:
            risk = cat.get(step.action).risk
            if risk == "destructive":
                assert step.mode in ("approve", "never"), (book.name, step.id)
            if risk == "mutating" and step.mode == "auto":
                automatic.add((book.name, step.id))
    # The runbook's first moves, each reversible or harmless, each still under the guard.
    assert automatic == {
        ("sev0-outage", "restart"),  # only when the pods are not ready
        ("sev0-outage", "database-start"),  # acts only on a stopped instance
        ("sev1-db-connectivity", "terminate-idle"),  # idle past the inventory's bound
        ("sev0-security-breach", "rotate"),  # a task for people
    }
    restart = next(
        s
        for b in default_playbooks().playbooks
        for s in b.steps
        if (b.name, s.id) == ("sev0-outage", "restart")
    )
    assert restart.when is not None
    assert restart.when.equals == {"ready": False}
