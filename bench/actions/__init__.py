"""Actions benchmark (not a test): the actions stage, ``ActionsStage`` on ``StageRuntime`` as
``sevpipe/actions_wiring.py`` builds it (batch 50, live), on both backend sets:

- embedded: EmbeddedLog + EmbeddedStore + EmbeddedEffectsLedger + LocalCoordinator in a temp
  dir, one set shared by the stage and the bench, as in ``sevpipe run``;
- production: KafkaLog + PostgresStore + PostgresEffectsLedger + RedisCoordinator on
  ``SEVPIPE_KAFKA_BOOTSTRAP``, ``SEVPIPE_POSTGRES_DSN`` and ``SEVPIPE_REDIS_URL``; each part gets
  a topic and consumer-group prefix, a database and a Redis key prefix of its own, removed
  after; the stage (each replica) and the bench have clients of their own, as processes would.

Incidents are written as the classifier leaves them: the incident and its alert into the store
(``restore``), then ``incident.opened`` appended to ``sevpipe.incidents``. The alert's
``namespace`` and ``deployment`` labels choose the target among the inventory's Deployments;
the playbook's first (only) step restarts it in mode ``auto``. The action is a bench-local
``bench.restart`` (mutating) that counts its runs, raw, per action id (``ACTION_ID``) and per
target, tracks how many run at once and awaits ``--delay``; its check finds a run it counted.

1. Latency, typical: ``--incidents`` (200) incidents one at a time (each waits for the one
   before to be done), from just before the append of ``incident.opened`` to its first
   ``action.started`` seen on ``sevpipe.actions`` by a consumer of the bench's own, p50/p99.
   Baseline, interleaved incident by incident on the same log: a trivial stage on the same
   runtime (batch 50) that decodes each incident event of a bench topic and appends one event
   to another, seen by the same consumer. Ratio = stage / baseline. With
   ``SEVPIPE_KUBECONFIG`` also the realistic case: the catalogue's own
   ``kubernetes.rollout_restart`` (counted the same way) on ``--kube-incidents`` (50)
   Deployments of a temp namespace of the real kube-apiserver, each checked at the apiserver
   afterwards: restarted exactly once (generation 2, carrying its own action's mark).
2. Storm, the worst case: ``--storm`` (1,000) incidents appended in ONE batch over
   ``--targets`` (200) Deployments, with limits that bind: ``--rate`` (50) restarts an hour,
   ``--max-in-flight`` (1), and the default 10 min cooldown per (action, target). The time
   until every action is decided (succeeded, failed or skipped), against the trivial stage
   taking a batch of the same size. Checked from raw counts, and printed: the runs in any hour
   are within the hourly limit, never more in flight than the limit, no target run twice
   within its cooldown, no action id run twice, every action that did not run skipped with
   the guard's reason (cooldown, rate, in flight, already running), none failed, every action
   decided; and the actions book (what the API shows) says succeeded of each action that ran.
   On production the storm runs twice more with ``--replicas`` (2) stage runtimes in one
   consumer group, each with clients of its own: started together (the partitions split), and
   with the second joining once a fifth of the rate limit has run (a scale-out under load:
   the partitions move, and what the first had fetched but not committed is handed to the
   second). Nothing may run twice across them.

A broken limit, an action run twice, an unexplained skip, a failure or an undecided action is
a VIOLATION, and the run exits 1 (so does a part that cannot be measured). Oddities that are
not unsafe (an action that ran also said skipped by the other replica; the book disagreeing
with what ran) are printed as NOTE. No timing is asserted.

    scripts/with-services .venv/bin/python -m bench.actions          # both backends, ~2 min
    .venv/bin/python -m bench.actions --backend embedded             # no services needed
    scripts/with-services .venv/bin/python -m bench.actions --incidents 50 --storm 300
"""

from __future__ import annotations

# The parts, by what they do: scenario (playbooks, inventory, incidents), counting (the
# counting action), backends (embedded / production installs), stages (the actions stage and
# the trivial baseline), watcher (what the bench sees), kube (Deployments on the apiserver),
# latency (1.), storm (2., and its judge), report (results and their printing), cli (the run:
# ``python -m bench.actions``).
from bench.actions.backends import SERVICES, Clients, Install
from bench.actions.counting import NoParams, Runs, counted, counting_action
from bench.actions.kube import check_restarts, kube_deployments
from bench.actions.latency import latency, latency_part
from bench.actions.report import BackendRun, Latency, Storm, summary
from bench.actions.scenario import deployment_names, inventory, opened, playbooks
from bench.actions.stages import Echo, Running, actions_runtime, echo_runtime
from bench.actions.storm import check_book, judge, storm
from bench.actions.watcher import DECIDED, Seen, Watcher, warm_up

__all__ = [
    "DECIDED",
    "SERVICES",
    "BackendRun",
    "Clients",
    "Echo",
    "Install",
    "Latency",
    "NoParams",
    "Running",
    "Runs",
    "Seen",
    "Storm",
    "Watcher",
    "actions_runtime",
    "check_book",
    "check_restarts",
    "counted",
    "counting_action",
    "deployment_names",
    "echo_runtime",
    "inventory",
    "judge",
    "kube_deployments",
    "latency",
    "latency_part",
    "opened",
    "playbooks",
    "storm",
    "summary",
    "warm_up",
]
