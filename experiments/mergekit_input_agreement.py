"""How far mergekit's tensors are from evomerge's, for every form of mergekit config evomerge reads.

    bash experiments/setup_mergekit.sh    # once: mergekit 0.1.5 in .mergekit-venv (or set MERGEKIT_YAML)
    python experiments/mergekit_input_agreement.py
    # prints; writes experiments/results/mergekit_input_agreement.json

Each config of tests/mergekit_agreement.py (linear with filters, task arithmetic with a global gradient
weight, TIES with a gradient, TIES per slice, breadcrumbs, breadcrumbs-TIES, DARE-TIES keeping everything and
at density 0.5, SLERP with mergekit's filtered gradients, Model Stock, a passthrough of one model, a
frankenmerge) over tiny random Llamas of two layers in float32 is merged by evomerge (`evomerge merge
CONFIG`), by mergekit (`mergekit-yaml CONFIG`) and by mergekit from the config evomerge exports of it
(`export --format mergekit`); the figures are the largest absolute difference of any tensor from evomerge's
merge.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
os.environ.update(TRANSFORMERS_VERBOSITY="error", HF_HUB_DISABLE_PROGRESS_BARS="1")  # before transformers

from conftest import save_tiny_llama  # noqa: E402
from mergekit_agreement import agreement, mergekit_python  # noqa: E402

RESULTS = ROOT / "experiments" / "results" / "mergekit_input_agreement.json"


def main() -> None:
    python = mergekit_python()
    if python is None:
        raise SystemExit("no mergekit: run experiments/setup_mergekit.sh (or set MERGEKIT_YAML)")
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        models = {
            name: save_tiny_llama(root / name, seed) for seed, name in enumerate(["base", "a", "b", "c"])
        }
        (root / "merges").mkdir()
        figures = agreement(models, root / "merges", python)
    for name, distances in figures.items():
        print(f"{name:18} mergekit {distances['mergekit']:.3g}   round trip {distances['round_trip']:.3g}")
    RESULTS.write_text(
        json.dumps(
            {
                "what": "max abs difference of any tensor from evomerge's merge of the same mergekit config: "
                "mergekit's merge of it, and mergekit's merge of the config evomerge exports",
                "models": "tiny random Llamas (2 layers, hidden 16), float32; weights about 0.02",
                "mergekit": "0.1.5",
                "torch": version("torch"),
                "figures": figures,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
