"""Which actions the settings make possible."""

from __future__ import annotations

from pathlib import Path

from actions.inventory import Inventory
from sevpipe.actions_wiring import catalogue_of
from sevpipe.settings import Settings


def test_probes_always_kubernetes_and_aws_when_configured(tmp_path: Path) -> None:
    inventory = Inventory()
    bare = catalogue_of(Settings(data_dir=tmp_path), inventory).names()
    assert "probe.http" in bare
    assert "prometheus.query" in bare
    assert {"postgres.terminate_idle", "redis.flushdb"} <= set(bare)
    assert not [n for n in bare if n.startswith(("kubernetes.", "aws."))]

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
    settings = Settings(
        data_dir=tmp_path,
        kubeconfig=kubeconfig,
        aws={"region": "eu-west-1", "endpoint_url": "http://127.0.0.1:1"},
    )
    full = catalogue_of(settings, inventory).names()
    assert {"kubernetes.rollout_restart", "aws.cloudfront_invalidate", "aws.rds_start"} <= set(full)
