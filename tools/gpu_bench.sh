#!/bin/bash
# One GPU run of the project's own model next to its PyTorch twin, same shapes, with the ratios.
#
#   tools/gpu_bench.sh BIN [PRESET] [BATCH] [SEQ] [BACKEND]
#
# BIN: a release `coupled-grpo` built with `--features cuda` (or `cuda-autotune`); it loads
# libcuda and libnvrtc at run time, so it can be built on a machine without a GPU. Defaults:
# qwen2.5-0.5b, batch 4, seq 512, backend cuda. Every command runs under `timeout` (TIMEOUT,
# default 300 s) and prints progress to stderr as it goes, so a cut-off run still shows where it
# was. KERNEL_CACHE (default /tmp/coupled-grpo-kernels) keeps compiled kernels between runs.
# PROFILE=K (default 12; 0 = off) adds where the time goes: the torch steps profile one extra
# step and print their top K kernels per phase, and one more burn train-step runs under CubeCL's
# kernel profiler (`--kernel-profile`; slower, since every kernel is waited for) and
# tools/kernel_profile.py prints the top K kernels of its last step, per phase and in all, and
# their sum against the unprofiled step (the rest is the device waiting on the host).
# GRPO7B=1 adds the issue-7 micro-step after the comparisons: one coupled-GRPO update of the
# diffucoder-7b shape in bf16 (balanced checkpointing, 1 row of 512 + 256 tokens, μ = 1, β = 0),
# first with bf16 Adam state (about 8 bytes per parameter: 61 GB), then with f32 master weights
# (about 16 bytes per parameter: 122 GB before activations, which may not fit in 141 GB).
# LORA7B=1 adds issue 18's micro-step: the same 7B update with LoRA r = 128 (α = 256) on a frozen
# bf16 base, μ = 2 and β = 0.04 with the reference = the base (d1's setting), lean scoring,
# without checkpointing, printed beside `coupled-grpo plan` for the same shape.
set -u
BIN=${1:?usage: tools/gpu_bench.sh BIN [PRESET] [BATCH] [SEQ] [BACKEND]}
PRESET=${2:-qwen2.5-0.5b}
BATCH=${3:-4}
SEQ=${4:-512}
BACKEND=${5:-cuda}
T=${TIMEOUT:-300}
CACHE=${KERNEL_CACHE:-/tmp/coupled-grpo-kernels}
PROFILE=${PROFILE:-12}
HERE=$(cd "$(dirname "$0")" && pwd)
LOG=$(mktemp -d)
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
step() { # LABEL FILE CMD...: run, keep stdout in FILE, show everything
  local label=$1 file=$2
  shift 2
  echo "=== $label: $*"
  timeout -k 5 "$T" "$@" 2>&1 | tee "$LOG/$file"
}
ms() { grep -oE "^$2: [0-9.]+ ms" "$LOG/$1" | grep -oE "[0-9.]+" | head -1; }

COMMON=(--preset "$PRESET" --batch "$BATCH" --seq "$SEQ" --dtype bf16)
step "torch train-step" torch_train python3 "$HERE/torch_bench.py" "${COMMON[@]}" --steps 10 --device cuda \
  --profile "$PROFILE"
step "torch rollout" torch_roll python3 "$HERE/torch_bench.py" --mode rollout "${COMMON[@]}" --steps 10 --device cuda \
  --profile "$PROFILE"
step "burn train-step" burn_train "$BIN" bench train-step "${COMMON[@]}" --steps 10 --backend "$BACKEND" \
  --watchdog 15 --kernel-cache "$CACHE"
step "burn rollout" burn_roll "$BIN" bench rollout "${COMMON[@]}" --steps 10 --backend "$BACKEND" \
  --watchdog 15 --kernel-cache "$CACHE"

ratio() { # LABEL TORCH_MS BURN_MS
  if [ -n "$2" ] && [ -n "$3" ]; then
    python3 -c "print(f'$1: torch {float($2):.1f} ms, burn {float($3):.1f} ms, burn/torch = {float($3)/float($2):.2f}x')"
  else
    echo "$1: missing figure (torch '${2}', burn '${3}')"
  fi
}
echo "=== ratios ($PRESET, batch $BATCH x seq $SEQ, bf16, backend $BACKEND)"
ratio "train step" "$(ms torch_train step)" "$(ms burn_train step)"
ratio "rollout pass" "$(ms torch_roll pass)" "$(ms burn_roll pass)"

if [ "$PROFILE" -gt 0 ]; then
  step "burn train-step under CubeCL's kernel profiler" burn_prof "$BIN" bench train-step "${COMMON[@]}" \
    --steps 1 --backend "$BACKEND" --watchdog 15 --kernel-cache "$CACHE" --kernel-profile "$LOG/kernels.txt"
  STEP_MS=$(ms burn_train step)
  python3 "$HERE/kernel_profile.py" "$LOG/kernels.txt" --bench train-step --top "$PROFILE" ${STEP_MS:+--step-ms "$STEP_MS"}
fi

if [ "${GRPO7B:-0}" = 1 ]; then
  for master in false true; do
    step "burn grpo-step diffucoder-7b, master weights $master" "burn_grpo7b_$master" "$BIN" bench \
      grpo-step --preset diffucoder-7b --batch 1 --seq 768 --completion-len 256 --steps 1 \
      --dtype bf16 --backend "$BACKEND" --checkpointing --set grpo.num_iterations=1 \
      --set grpo.beta=0 --set optimizer.master_weights=$master --watchdog 15 --kernel-cache "$CACHE"
  done
fi

if [ "${LORA7B:-0}" = 1 ]; then
  step "plan diffucoder-7b LoRA r=128" plan_lora7b "$BIN" plan --preset diffucoder-7b --lora-r 128 \
    --dtype bf16 --micro-batch-rows 1 --seq 768 --completion-len 256 --no-reference
  step "burn grpo-step diffucoder-7b LoRA r=128" burn_lora7b "$BIN" bench grpo-step \
    --preset diffucoder-7b --batch 1 --seq 768 --completion-len 256 --steps 1 --dtype bf16 \
    --backend "$BACKEND" --set lora.r=128 --set lora.alpha=256 --set grpo.num_iterations=2 \
    --set grpo.beta=0.04 --set grpo.sync_ref_model=false --watchdog 15 --kernel-cache "$CACHE"
fi
