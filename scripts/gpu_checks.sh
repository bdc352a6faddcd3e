#!/usr/bin/env bash
# Every GPU check in one call (BENCHMARKS.md "Still to measure"), for a lent GPU whose device
# time is short (15 minutes, start-up included): the real-CUDA test, the decoding benchmark on
# the embedded model and on random-weight Pythia shapes, and the per-pass prices, most needed
# first, each under its own time limit and all under one budget, so one slow step never costs
# the others. Needs only torch, transformers and pytest (no Hydra, pandas or lm-eval).
#
#     bash scripts/gpu_checks.sh OUTDIR        # on the device tool: bash scripts/gpu_checks.sh "$OUT"
#
# OUTDIR gets two files, rewritten after every step so a run cut short still returns what it
# finished: gpu-checks.log (each step's output and exit status) and gpu-results.tar.gz (the new
# JSONs under benchmarks/); and at the end gpu-summary.md (scripts/summarise_benchmark.py on
# the new benchmark JSONs). Unpack here with `tar -xzf OUTDIR/gpu-results.tar.gz`, then
# summarise in BENCHMARKS.md. Environment: GPU_CHECKS_BUDGET_S (default 540), PYTHON.
set -u
out=${1:?usage: bash scripts/gpu_checks.sh OUTDIR}
budget=${GPU_CHECKS_BUDGET_S:-540}
python=${PYTHON:-python3}
cd "$(dirname "$0")/.."
mkdir -p "$out" benchmarks/results benchmarks/profiles
log="$out/gpu-checks.log"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
stamp="$out/.started"
touch "$stamp"
: >"$log"
started=$SECONDS

pack() {  # the JSONs written since the start, as one file (the device returns at most 8)
    local files
    files=$(find benchmarks -name '*.json' -newer "$stamp" | sort)
    [ -n "$files" ] && tar -czf "$out/gpu-results.tar.gz" $files
}

step() {  # step NAME LIMIT_S COMMAND...: run under min(LIMIT_S, what the budget has left)
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$((budget - (SECONDS - started)))
    if ((left < 30)); then
        echo "== $name: skipped, ${left}s of the budget left" | tee -a "$log"
        return
    fi
    ((limit > left)) && limit=$left
    echo "== $name (limit ${limit}s): $*" | tee -a "$log"
    t0=$SECONDS
    timeout "$limit" "$@" >>"$log" 2>&1
    rc=$?
    echo "== $name: exit $rc after $((SECONDS - t0))s$([ $rc = 124 ] && echo ' (timed out)')" | tee -a "$log"
    pack
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$python" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__)"
} 2>&1 | tee -a "$log"

# Fewer samples than the CPU defaults: a GPU's timings scatter far less, and the budget is short.
# On the CPU these settings take 60 s on the embedded model (no graphs); CUDA times every mode twice.
bench="$python scripts/benchmark_decoding.py --device cuda --prompts 6 --repeats 2 --max-new-tokens 48"
step cuda-graph-test 60 "$python" -m pytest -x tests/model/test_graphs.py
# The lineup (transformers' generate, a draft model, prompt lookup) on the embedded model (its 2-layer
# draft) and on Pythia-410m's shape (a random pythia-70m draft: timing only, acceptance meaningless).
lineup="--baselines hf_generate,assisted,prompt_lookup"
step embedded 170 $bench --profile-repeats 20 $lineup
# Pythia-160m also at batch sizes 1..8 (full, every mode and transformers' batched generate; eager).
step pythia-160m 130 $bench --profile-repeats 15 --random-weights pythia-160m --dtype float16 \
    --prompts 8 --batch-sizes 1,2,4,8
step pythia-410m 120 $bench --profile-repeats 15 --random-weights pythia-410m --dtype float16 $lineup
step pythia-1.4b 120 $bench --profile-repeats 15 --random-weights pythia-1.4b --dtype float16
step price-passes 60 "$python" scripts/price_passes.py --device cuda --repeats 2
# The new benchmark JSONs as BENCHMARKS.md tables, ready to read when the call returns.
new=$(find benchmarks/results -name '*.json' ! -name 'passes-*' -newer "$stamp" | sort)
[ -n "$new" ] && "$python" scripts/summarise_benchmark.py $new >"$out/gpu-summary.md" 2>>"$log"
rm -f "$stamp"
echo "== done in $((SECONDS - started))s; results: $out/gpu-results.tar.gz" | tee -a "$log"
