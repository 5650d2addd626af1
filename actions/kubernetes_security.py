"""``kubernetes.block_ip`` (registered by ``kubernetes_catalogue``): block a client address at
the ingress controller, by adding it to a ConfigMap key holding a comma-separated CIDR list
(ingress-nginx: ConfigMap ``ingress-nginx-controller``, key ``block-cidrs``). The inventory
must list that key among the ConfigMap's patchable ``keys``: the guard refuses any other.

Params: ``cidr`` (an address, ``203.0.113.7``, or a network, ``203.0.113.0/24``; kept in its
normal form, ``203.0.113.7/32``) and ``key`` (default ``block-cidrs``). Refused, with the
reason, before any request is made (``check_cidr``; the params model refuses them, and the
action checks again before it reads anything): what is not an address or a network, a
network with host bits set (which one was meant?), ``0.0.0.0/0`` and ``::/0``, anything
broader than /16 (IPv4) or /48 (IPv6), and anything touching loopback or link-local space
(IPv4-mapped forms included): blocking those cuts the node's own and the cloud's metadata
traffic, never an attacker's.

``execute`` reads the ConfigMap and, unless an entry of the list already covers the CIDR
(``203.0.113.0/24`` covers ``203.0.113.7/32``), appends it, keeping every other entry as it
was, in a strategic-merge PATCH carrying the ``resourceVersion`` it read: the apiserver
refuses it with 409 if the ConfigMap changed meanwhile (the ingress controller's own
operators edit it too). A conflict is re-read and tried again, ``CONFLICT_ATTEMPTS`` times in
all; then it is retriable (``KubernetesUnavailable``): the stage tries later, checking first.
The outcome keeps the key's previous value (for a person to put it back). A list longer than
``MAX_VALUE_CHARS`` is refused rather than written: the action's events carry it.

``plan`` is the PATCH ``execute`` would send now (none when the CIDR is covered already);
``check``: the CIDR is covered by an entry of the list.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Final

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import BaseModel, ConfigDict, Field, field_validator

from actions.catalogue import Outcome
from actions.kubernetes_reads import (
    REQUEST_TIMEOUT,
    ApiClientFactory,
    KubernetesError,
    KubernetesRefused,
    KubernetesUnavailable,
    call,
    namespace_of,
)
from schemas.actions import ApiRequest, Target

STRATEGIC: Final = "application/strategic-merge-patch+json"
DEFAULT_KEY: Final = "block-cidrs"
MAX_PREFIX: Final = {4: 16, 6: 48}
"""The broadest network each IP version may block: /16 is 65536 IPv4 addresses, /48 one
site's IPv6 allocation."""
CONFLICT_ATTEMPTS: Final = 3
MAX_VALUE_CHARS: Final = 32 * 1024
"""The longest list written: the outcome holds it and its previous value, the event both."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_LOOPBACK: Final = "loopback (the node's own traffic: health checks, local proxies)"
_LINK_LOCAL: Final = "link-local (node-local and cloud metadata traffic)"
_NEVER: Final[tuple[tuple[Network, str], ...]] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("127.0.0.0/8", _LOOPBACK),
        ("::1/128", _LOOPBACK),
        ("::ffff:127.0.0.0/104", _LOOPBACK),
        ("169.254.0.0/16", _LINK_LOCAL),
        ("fe80::/10", _LINK_LOCAL),
        ("::ffff:169.254.0.0/112", _LINK_LOCAL),
    )
)
_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")


def check_cidr(value: str) -> Network:
    """The network VALUE names, or ValueError saying why it may not be blocked. Pure."""
    text = value.strip()
    try:
        network = ipaddress.ip_network(text)
    except ValueError:
        try:
            loose = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"cidr {value!r} is not an IP address or CIDR") from None
        host = ipaddress.ip_interface(text).ip
        raise ValueError(
            f"cidr {text} has host bits set: write {loose} for the network, or "
            f"{host}/{loose.max_prefixlen} for the one address"
        ) from None
    if network.prefixlen == 0:
        raise ValueError(f"cidr {text} would block every IPv{network.version} client")
    broadest = MAX_PREFIX[network.version]
    if network.prefixlen < broadest:
        many = f" ({network.num_addresses} addresses)" if network.version == 4 else ""
        raise ValueError(
            f"cidr {text} is broader than /{broadest} for IPv{network.version}{many}: "
            "block narrower networks"
        )
    for never, why in _NEVER:
        if network.version == never.version and network.overlaps(never):
            raise ValueError(f"cidr {text} overlaps {never}, {why}: never a client to block")
    if network.num_addresses == 1 and network.network_address.is_unspecified:
        raise ValueError(f"cidr {text} is the unspecified address: no client has it")
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        mapped = network.network_address.ipv4_mapped
        raise ValueError(
            f"cidr {text} is IPv4-mapped: write it as {mapped}/{network.prefixlen - 96}"
        )
    return network


class BlockIpParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cidr: str = Field(description="an IP address or network, e.g. 203.0.113.7 or 198.51.100.0/24")
    key: str = Field(DEFAULT_KEY, min_length=1, description="the ConfigMap key of the list")

    @field_validator("cidr")
    @classmethod
    def _blockable(cls, value: str) -> str:
        return str(check_cidr(value))


def entries(value: str | None) -> list[str]:
    """The list's entries, stripped, empty ones dropped. Pure."""
    return [e.strip() for e in (value or "").split(",") if e.strip()]


def covering(value: str | None, network: Network) -> str | None:
    """The entry of the list VALUE that covers NETWORK (itself or a broader one), or None.
    Entries that are not networks are kept in the list but cover nothing. Pure."""
    for entry in entries(value):
        try:
            listed = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue
        if listed.version == network.version and network.subnet_of(listed):  # type: ignore[arg-type]
            return entry
    return None


def appended(value: str | None, cidr: str) -> str:
    """VALUE with CIDR added at its end, the other entries as they were written. Pure."""
    base = (value or "").strip().rstrip(",").rstrip()
    return f"{base},{cidr}" if base else cidr


@dataclass(frozen=True)
class _Read:
    data: dict[str, str]
    resource_version: str


def _conflict(exc: KubernetesError) -> bool:
    cause = exc.__cause__
    return isinstance(cause, ApiException) and cause.status == 409


class BlockIp:
    """block_ip on clients from FACTORY."""

    def __init__(self, factory: ApiClientFactory) -> None:
        self.factory = factory

    @staticmethod
    def _where(target: Target, params: BlockIpParams) -> tuple[str, str, Network]:
        # Checked again here, whatever built the params: nothing is read for a refused CIDR.
        try:
            network = check_cidr(params.cidr)
        except ValueError as exc:
            raise KubernetesRefused(str(exc)) from None
        if not target.name:
            raise KubernetesError(f"target {target.key()} names no ConfigMap")
        return namespace_of(target), target.name, network

    @staticmethod
    def _path(ns: str, name: str) -> str:
        return f"/api/v1/namespaces/{ns}/configmaps/{name}"

    async def _read(self, api: client.ApiClient, ns: str, name: str) -> _Read:
        cm = await call(
            "get",
            "configmaps",
            ns,
            client.CoreV1Api(api).read_namespaced_config_map(
                name, ns, _request_timeout=REQUEST_TIMEOUT
            ),
        )
        return _Read(dict(cm.data or {}), cm.metadata.resource_version or "")

    def _request(
        self, ns: str, name: str, params: BlockIpParams, network: Network, read: _Read
    ) -> ApiRequest | None:
        """The PATCH adding NETWORK to what was READ, or None when it is covered already."""
        previous = read.data.get(params.key)
        if covering(previous, network) is not None:
            return None
        value = appended(previous, str(network))
        if len(value) > MAX_VALUE_CHARS:
            raise KubernetesRefused(
                f"{params.key} of configmap {name} in namespace {ns} would hold {len(value)} "
                f"characters, more than sevpipe writes ({MAX_VALUE_CHARS}): a block list this "
                "long needs a person (or a WAF)"
            )
        return ApiRequest(
            method="PATCH",
            path=self._path(ns, name),
            body={
                "metadata": {"resourceVersion": read.resource_version},
                "data": {params.key: value},
            },
            content_type=STRATEGIC,
        )

    async def plan(self, target: Target, params: BlockIpParams) -> tuple[ApiRequest, ...]:
        ns, name, network = self._where(target, params)
        async with await self.factory() as api:
            read = await self._read(api, ns, name)
        request = self._request(ns, name, params, network, read)
        return () if request is None else (request,)

    async def block(self, target: Target, params: BlockIpParams, token: int) -> Outcome:
        ns, name, network = self._where(target, params)
        conflicts = 0
        async with await self.factory() as api:
            core = client.CoreV1Api(api)
            while True:
                read = await self._read(api, ns, name)
                previous = read.data.get(params.key)
                covered = covering(previous, network)
                request = self._request(ns, name, params, network, read)
                if request is None:
                    return self._outcome(
                        params,
                        network,
                        previous,
                        request=None,
                        covered_by=covered,
                        conflicts=conflicts,
                    )
                try:
                    await call(
                        "patch",
                        "configmaps",
                        ns,
                        core.patch_namespaced_config_map(
                            name, ns, request.body, _request_timeout=REQUEST_TIMEOUT
                        ),
                    )
                except KubernetesUnavailable as exc:
                    if not _conflict(exc):
                        raise
                    conflicts += 1
                    if conflicts >= CONFLICT_ATTEMPTS:
                        raise KubernetesUnavailable(
                            f"configmap {name} in namespace {ns} changed while being written, "
                            f"{conflicts} times (409 Conflict): tried again later"
                        ) from exc
                    continue
                return self._outcome(
                    params, network, previous, request=request, covered_by=None, conflicts=conflicts
                )

    @staticmethod
    def _outcome(
        params: BlockIpParams,
        network: Network,
        previous: str | None,
        *,
        request: ApiRequest | None,
        covered_by: str | None,
        conflicts: int,
    ) -> dict[str, Any]:
        return {
            "cidr": str(network),
            "key": params.key,
            "added": request is not None,
            "covered_by": covered_by,
            "previous_value": previous,
            "value": request.body["data"][params.key] if request is not None else previous,
            "conflicts": conflicts,
            "request": request.model_dump(mode="json") if request is not None else None,
        }

    async def blocked(self, target: Target, params: BlockIpParams) -> Outcome | None:
        ns, name, network = self._where(target, params)
        async with await self.factory() as api:
            read = await self._read(api, ns, name)
        entry = covering(read.data.get(params.key), network)
        if entry is None:
            return None
        return {"cidr": str(network), "key": params.key, "covered_by": entry}
