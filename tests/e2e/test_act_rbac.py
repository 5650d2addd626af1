"""``sevpipe act`` as a ServiceAccount whose Role lets it restart Deployments in one namespace
only: a SEV-0 outage there is restarted; one in a namespace where it may only read is refused
by the API (403), reported as ``action.failed`` naming the refusal, and never retried: one
PATCH attempt in the audit log, the Deployment's generation unchanged."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes_asyncio import client, config

from . import act_support
from .act_support import (
    Cluster,
    Playbooks,
    act_settings,
    action_events,
    audit_entries,
    codes,
    deployment_patches,
    finished,
    outage,
    playbooks,
    post_alerts,
)
from .backends import Backend
from .harness import Launcher, until_caught_up

pytestmark = pytest.mark.e2e

ACCOUNT = "sevpipe"
DEADLINE = 90.0
RBAC_DEADLINE = 30.0
TOKEN_SECONDS = 3600
READ = ("get", "list", "watch")


production = act_support.production
cluster = act_support.cluster


def role(name: str, *, patch: bool) -> Any:  # the API takes a plain dict as well
    """Read anything in the namespace (the playbook's reads: state, history, top, the plans
    and checks); with ``patch``, patch Deployments and their scale too."""
    rules = [{"apiGroups": ["*"], "resources": ["*"], "verbs": list(READ)}]
    if patch:
        writes = ["deployments", "deployments/scale"]
        rules.append({"apiGroups": ["apps"], "resources": writes, "verbs": ["patch"]})
    return {"metadata": {"name": name}, "rules": rules}


def binding(name: str, account_ns: str) -> Any:
    return {
        "metadata": {"name": name},
        "subjects": [{"kind": "ServiceAccount", "name": ACCOUNT, "namespace": account_ns}],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
    }


async def grant(api: client.ApiClient, own: str, read_only: str) -> str:
    """ServiceAccount sevpipe in ``own``, which may read and patch there and only read in
    ``read_only``; its user name, once the authorizer says so."""
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    sa: Any = {"metadata": {"name": ACCOUNT}}
    await core.create_namespaced_service_account(own, sa)
    await rbac.create_namespaced_role(own, role("sevpipe-remediate", patch=True))
    await rbac.create_namespaced_role_binding(own, binding("sevpipe-remediate", own))
    await rbac.create_namespaced_role(read_only, role("sevpipe-read", patch=False))
    await rbac.create_namespaced_role_binding(read_only, binding("sevpipe-read", own))
    user = f"system:serviceaccount:{own}:{ACCOUNT}"
    expected = {
        ("patch", own): True,
        ("list", own): True,
        ("get", read_only): True,
        ("list", read_only): True,
        ("patch", read_only): False,
    }
    authz = client.AuthorizationV1Api(api)

    async def decisions() -> dict[tuple[str, str], bool]:
        found = {}
        for verb, ns in expected:
            attrs = client.V1ResourceAttributes(
                group="apps", resource="deployments", verb=verb, namespace=ns
            )
            review = client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(user=user, resource_attributes=attrs)
            )
            answer = await authz.create_subject_access_review(review)
            found[verb, ns] = bool(answer.status.allowed)
        return found

    # The RBAC authorizer learns of new Roles from its informers: wait until it knows these.
    async with asyncio.timeout(RBAC_DEADLINE):
        while True:
            if await decisions() == expected:
                return user
            await asyncio.sleep(0.2)


async def token_kubeconfig(api: client.ApiClient, admin: str, ns: str, path: Path) -> None:
    """A kubeconfig at ``path``: the admin's server and CA, with a TokenRequest token of the
    ServiceAccount sevpipe of ``ns`` in place of the admin's."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=TOKEN_SECONDS)
    )
    token = await client.CoreV1Api(api).create_namespaced_service_account_token(
        ACCOUNT, ns, request
    )
    kube = yaml.safe_load(await asyncio.to_thread(Path(admin).read_text))
    for user in kube["users"]:
        user["user"] = {"token": token.status.token}
    await asyncio.to_thread(path.write_text, yaml.safe_dump(kube))
    await asyncio.to_thread(path.chmod, 0o600)
    # The token is the one the apiserver takes for the ServiceAccount (not system:anonymous).
    async with await config.new_client_from_config(config_file=str(path)) as sa_api:
        review = await client.AuthenticationV1Api(sa_api).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
    assert review.status.user_info.username == f"system:serviceaccount:{ns}:{ACCOUNT}"


async def settled(data: Path, backend: Backend, namespaces: list[str]) -> Playbooks:
    async with asyncio.timeout(DEADLINE):
        while True:
            runs = playbooks(await action_events(data, backend))
            if finished(runs, namespaces):
                return runs
            await asyncio.sleep(0.5)


async def test_a_restart_rbac_refuses_is_reported_failed_and_never_retried(
    production: Backend, cluster: Cluster, launcher: Launcher, tmp_path: Path
) -> None:
    allowed = await cluster.namespace("rbac-own")
    refused = await cluster.namespace("rbac-other")
    user = await grant(cluster.api, allowed, refused)
    kubeconfig = tmp_path / "sevpipe.kubeconfig"
    await token_kubeconfig(cluster.api, cluster.kubeconfig, allowed, kubeconfig)
    args = act_settings(tmp_path, [allowed, refused], str(kubeconfig))
    env = production.env
    start = launcher.start
    ingest = await asyncio.to_thread(start, tmp_path / "i", *args, env=env, command="ingest")
    await asyncio.to_thread(start, tmp_path / "c", *args, env=env, command="classify")
    act = await asyncio.to_thread(start, tmp_path / "a", *args, env=env, command="act")
    await post_alerts(ingest.alerts_url, [outage(allowed), outage(refused)])
    runs = await settled(tmp_path / "a", production, [allowed, refused])

    # Allowed: restarted once.
    assert runs[allowed]["restart"] == ["planned", "started", "succeeded"], runs
    assert runs[allowed]["status"] == ["planned", "started", "succeeded"], runs
    assert await cluster.generation(allowed) == 2

    # Refused: reported as failed, naming the refusal; the rest of the playbook goes on.
    assert runs[refused]["restart"] == ["planned", "started", "failed"], runs
    assert runs[refused]["state"] == ["planned", "started", "succeeded"], runs  # it may read
    failed = [
        e
        for e in await action_events(tmp_path / "a", production)
        if e["type"] == "action.failed" and e["data"]["target"]["namespace"] == refused
    ]
    assert [e["data"]["step"] for e in failed] == ["restart"]
    reason = failed[0]["data"]["reason"]
    assert f"forbidden: patch deployments in namespace {refused}" in reason, reason
    assert await cluster.generation(refused) == 1

    # A new process over the same log and ledger (the old one killed -9) finds both done.
    act.kill()
    again = await asyncio.to_thread(start, tmp_path / "a2", *args, env=env, command="act")
    async with aiohttp.ClientSession() as session:
        await until_caught_up(session, again.base_url, groups=1)

    # The apiserver's own record, raw: one PATCH each, 403 where the Role does not reach.
    entries = await asyncio.to_thread(audit_entries, cluster.audit_log)
    assert codes(deployment_patches(entries, allowed, user=user)) == [200]
    assert codes(deployment_patches(entries, refused, user=user)) == [403]
    assert deployment_patches(entries, refused) == deployment_patches(entries, refused, user=user)
    assert await cluster.generation(refused) == 1
    assert playbooks(await action_events(tmp_path / "a2", production)) == runs
