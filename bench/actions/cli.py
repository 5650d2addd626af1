"""The run: every part on each backend asked for, the summary, and the exit status."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import uvloop

import bench.actions
from bench.actions.backends import SERVICES
from bench.actions.latency import latency_part
from bench.actions.report import DESCRIBED, BackendRun, say, summary
from bench.actions.storm import storm


async def run_backend(
    backend: str, workdir: Path, args: argparse.Namespace, kubeconfig: str | None
) -> BackendRun:
    print(f"{backend}: {DESCRIBED[backend]}", flush=True)
    out = BackendRun(backend)
    try:
        if args.incidents:
            out.latencies = await latency_part(backend, workdir, args, kubeconfig)
        if args.storm:
            variants = [(1, False)]
            if backend == "production" and args.replicas > 1:
                variants += [(args.replicas, False), (args.replicas, True)]
            for replicas, join in variants:
                result = await storm(
                    backend,
                    workdir,
                    incidents=args.storm,
                    targets=args.targets,
                    rate=args.rate,
                    max_in_flight=args.max_in_flight,
                    replicas=replicas,
                    join=join,
                    delay=args.delay,
                )
                say(result.lines())
                out.storms.append(result)
    except Exception as exc:  # noqa: BLE001 - reported, and the run exits 1
        out.error = f"{type(exc).__name__}: {exc}"
        print(f"  {backend}: not measured: {out.error}", flush=True)
    return out


async def run_all(
    args: argparse.Namespace, backends: Sequence[str], kubeconfig: str | None
) -> list[BackendRun]:
    with tempfile.TemporaryDirectory(prefix="sevpipe-bench-actions-") as tmp:
        return [await run_backend(b, Path(tmp), args, kubeconfig) for b in backends]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.actions",
        description=bench.actions.__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "--backend", choices=("both", "embedded", "production"), default="both", help="(both)"
    )
    p.add_argument("--incidents", type=int, default=200, help="incidents for latency (200)")
    p.add_argument(
        "--kube-incidents",
        type=int,
        default=50,
        help="incidents for latency on the kube-apiserver (50; 0: none), if SEVPIPE_KUBECONFIG",
    )
    p.add_argument("--storm", type=int, default=1000, help="incidents of the storm (1,000)")
    p.add_argument("--targets", type=int, default=200, help="Deployments the storm hits (200)")
    p.add_argument("--rate", type=int, default=50, help="restarts per hour allowed (50)")
    p.add_argument("--max-in-flight", type=int, default=1, help="mutations at once (1)")
    p.add_argument("--replicas", type=int, default=2, help="stage replicas, production (2)")
    p.add_argument("--delay", type=float, default=0.005, help="the action's await, s (0.005)")
    args = p.parse_args(argv)
    backends = ["embedded", "production"] if args.backend == "both" else [args.backend]
    missing = [name for name in SERVICES if not os.environ.get(name)]
    if "production" in backends and missing:
        print(
            f"set {', '.join(missing)} (scripts/with-services does), or --backend embedded",
            file=sys.stderr,
        )
        return 2
    kubeconfig = os.environ.get("SEVPIPE_KUBECONFIG") or None
    if not args.kube_incidents:
        kubeconfig = None
    print(
        f"actions stage, live: {args.incidents} incidents one at a time"
        f"{f' (+{args.kube_incidents} on the kube-apiserver)' if kubeconfig else ''};"
        f" storm of {args.storm:,} over {args.targets} targets, {args.rate}/h,"
        f" {args.max_in_flight} in flight, cooldown 10 min",
        flush=True,
    )
    outcomes = uvloop.run(run_all(args, backends, kubeconfig))
    summary(outcomes)
    failed = [v for o in outcomes for v in o.violations]
    errors = [f"{o.backend}: {o.error}" for o in outcomes if o.error]
    for line in failed + errors:
        print(f"FAILED: {line}")
    return 1 if failed or errors else 0
