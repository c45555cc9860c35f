"""torchrun on CPU (gloo): two processes train exactly what one process trains."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from tests.dist_worker import main as worker

REPO = Path(__file__).resolve().parents[1]


def _torchrun(*args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("method,micro", [("grpo", ""), ("dppo", ""), ("dppo", "2"), ("nft", "2")])
def test_two_processes_train_what_one_process_trains(tiny_path, tmp_path, method, micro):
    """micro "2": each process accumulates its share of a mini-batch in micro-batches, DDP
    averaging once at the last backward. nft: the forward-process seam (every rank prepares the
    whole batch's old velocities, trains its share)."""
    r = _torchrun("tests/dist_worker.py", str(tmp_path / "two"), tiny_path, method, micro)
    assert r.returncode == 0, r.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        worker(str(tmp_path / "one"), tiny_path, method, micro)
    finally:
        torch.set_num_threads(threads)
    two = json.loads((tmp_path / "two.json").read_text())
    one = json.loads((tmp_path / "one.json").read_text())
    assert two["world"] == 2 and one["world"] == 1
    for e1, e2 in zip(one["epochs"], two["epochs"]):
        # the same groups: rewards and advantages over complete groups
        assert e2["rewards"] == pytest.approx(e1["rewards"], abs=1e-6)
        assert e2["advantages"] == pytest.approx(e1["advantages"], abs=1e-4)
        m1, m2 = e1["metrics"], e2["metrics"]
        assert m2["loss"] == pytest.approx(m1["loss"], rel=1e-4, abs=1e-9)
        assert m2["grad_norm"] == pytest.approx(m1["grad_norm"], rel=1e-4)
        shared = [k for k in m1 if k.endswith(("ratio_mean", "kl_mean", "trust_frac", "kl_ref",
                                                "v_change_mean"))]
        assert shared and all(m2[k] == pytest.approx(m1[k], rel=1e-3, abs=1e-9) for k in shared)
    w1, w2 = load_file(str(tmp_path / "one.safetensors")), load_file(str(tmp_path / "two.safetensors"))
    assert w1.keys() == w2.keys()
    # float32 sums in another order, through eight AdamW steps: equal to ~1e-5 of the weights' scale
    # (nft: ~1e-4, AdamW's g/√v magnifying the rounding of its near-zero gradient components)
    worst = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert worst < (3e-4 if method == "nft" else 1e-4), worst


def test_bench_run_nproc_2_matches_one_process(tiny_path, tmp_path):
    args = ["run", "--preset", "smoke", "--methods", "grpo", "--seeds", "1", "--epochs", "1",
            "--model-path", tiny_path]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    two = subprocess.run([sys.executable, "-m", "flowarena.harness", *args, "--nproc", "2", "--out",
                          str(tmp_path / "two")], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("full tables:") == 1  # rank 0 prints, the other rank is quiet
    one = subprocess.run([sys.executable, "-m", "flowarena.harness", *args, "--out", str(tmp_path / "one")],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["processes"] == 2 and manifest["status"] == "done"
    t1 = pd.read_csv(tmp_path / "one" / "report" / "tables.csv").drop(columns="wall_min")
    t2 = pd.read_csv(tmp_path / "two" / "report" / "tables.csv").drop(columns="wall_min")
    pd.testing.assert_frame_equal(t1, t2, check_exact=False, rtol=1e-3)
