"""Run several mergekit merges in one process (mergekit-yaml imports torch and transformers for each run).

Runs inside mergekit's own virtual environment (experiments/setup_mergekit.sh); tests/mergekit_agreement.py
calls it:

    MERGEKIT_VENV/bin/python tests/mergekit_batch.py CONFIG.yaml OUT_DIR [CONFIG.yaml OUT_DIR ...]

Each CONFIG is merged into OUT_DIR as `mergekit-yaml CONFIG OUT_DIR` does, on the CPU.
"""

from __future__ import annotations

import sys

import yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions


def main(arguments: list[str]) -> None:
    if not arguments or len(arguments) % 2:
        raise SystemExit(__doc__)
    for config, out in zip(arguments[::2], arguments[1::2]):
        with open(config, encoding="utf-8") as file:
            merge = MergeConfiguration.model_validate(yaml.safe_load(file))
        run_merge(merge, out, MergeOptions(device="cpu", quiet=True))


if __name__ == "__main__":
    main(sys.argv[1:])
