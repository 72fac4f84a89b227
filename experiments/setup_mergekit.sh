#!/usr/bin/env bash
# Install mergekit into its own virtual environment, for experiments/bench_merge.py to compare against.
#   bash experiments/setup_mergekit.sh [VENV_DIR]        (default: .mergekit-venv in the repository root)
# mergekit pins its own versions of transformers, accelerate, peft, ...; a separate venv keeps them away from
# evomerge's. torch is installed first at our pin so pip takes the CPU wheel already on disk and does not
# download a CUDA build.
set -euo pipefail
venv="${1:-$(cd "$(dirname "$0")/.." && pwd)/.mergekit-venv}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet torch==2.13.0
"$venv/bin/pip" install --quiet mergekit==0.1.5
"$venv/bin/mergekit-yaml" --help > /dev/null
echo "mergekit installed: $venv/bin/mergekit-yaml"
