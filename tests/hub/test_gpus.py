"""GPU assignment: one card per server, fewest servers first, released on stop."""

from __future__ import annotations

import pytest

from oraculo.hub.gpus import GpuAllocator, NoGpuAvailable, discover_gpus


def test_round_robin_over_least_loaded() -> None:
    gpus = GpuAllocator(gpu_ids=["0", "1", "2"])
    assert [gpus.assign(f"u{i}/") for i in range(5)] == ["0", "1", "2", "0", "1"]
    assert gpus.assign("u1/") == "1"  # the same server keeps its card
    gpus.release("u2/")
    assert gpus.assign("u5/") == "2"  # the card freed is now the least loaded


def test_configured_share_refuses_when_full() -> None:
    gpus = GpuAllocator(gpu_ids=["0", "1"], max_servers_per_gpu=1)
    assert gpus.assign("a/") == "0"
    assert gpus.assign("b/") == "1"
    with pytest.raises(NoGpuAvailable):
        gpus.assign("c/")
    gpus.release("a/")
    assert gpus.assign("c/") == "0"
    assert gpus.assignments() == {"b/": "1", "c/": "0"}


def test_no_gpus_means_cpu() -> None:
    gpus = GpuAllocator(gpu_ids=[])
    assert gpus.assign("a/") is None
    gpus.release("a/")  # harmless


def test_discovery_matches_this_machine() -> None:
    import shutil

    found = discover_gpus()
    if shutil.which("nvidia-smi") is None:
        assert found == []
    else:
        assert all(g.isdigit() for g in found)
