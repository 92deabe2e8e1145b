#!/usr/bin/env bash
# The one prepared GPU measurement. On the device machine it builds nothing: it runs the carried
# cuda binary and test binary, and the PyTorch peer on the same card, and writes everything under
# $OUT: results.jsonl, gpu.log, cubecl.log.gz (the compiler and autotuner log of the first
# training run), kernels-autotune.bundle (the card's tuning results) and
# extras.tar.gz (nvidia-smi.txt, cubecl-summary.txt, kernels.txt, the per-kernel profiles of a
# cifar10 training step, the 200-step run's sample grid).
# Every measurement has its own timeout and the whole script keeps to a deadline (DEADLINE
# seconds, default 480): what does not fit is skipped, most important first. A failure of one
# measurement is recorded, not fatal.
#
# Before the `run` call, on the development machine (no device time):
#   bash scripts/gpu-bundle.sh      # gpu/ddpm-cuda.gz, gpu/gpu_parity.gz, gpu/libdevice.10.bc
# Then: run(command="bash bench/gpu.sh", carry=["gpu"], timeout_s=540).
# The wgpu route instead: DEVICE=wgpu with gpu/ddpm-wgpu.gz (cargo build --release --features
# wgpu) and the Vulkan loader packages in .gl (carry ".gl" too; /work/.library/device/README.md).
# On the development machine the script smoke-tests itself on the CPU:
#   DEVICE=cpu DDPM_BIN=target/release/ddpm OUT=/tmp/gpu-out DEADLINE=300 bash bench/gpu.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
DEADLINE=${DEADLINE:-480}
log="$OUT/gpu.log"
results="$OUT/results.jsonl"
: >"$results"
exec > >(tee -a "$log") 2>&1

echo "== $(date -u +%FT%TZ) on $(hostname), device route: $DEVICE, deadline ${DEADLINE}s"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available"
if ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
fi
# The cuda route links its kernels against libdevice at run time.
if [ -f gpu/libdevice.10.bc ]; then
  export CUDA_PATH=${CUDA_PATH:-/tmp/ddpm-cuda}
  mkdir -p "$CUDA_PATH/nvvm/libdevice"
  cp gpu/libdevice.10.bc "$CUDA_PATH/nvvm/libdevice/"
fi
# Compiled kernels and autotune results persist between the processes below (ddpm's kernel
# cache, in directories of this script's own, removed at the end). The cifar10 measurements get
# a fresh one (below), so their first step is the cold first step and the rerun the warm one.
export DDPM_KERNEL_CACHE
DDPM_KERNEL_CACHE=$(mktemp -d /tmp/ddpm-kernels.XXXXXX)
caches=("$DDPM_KERNEL_CACHE")
trap 'rm -rf "${caches[@]}"' EXIT

unpack() { # gzipped carried binary → executable path
  local gz=$1 dest=$2
  [ -f "$gz" ] || return 1
  gzip -dc "$gz" >"$dest" && chmod +x "$dest"
}
bin=${DDPM_BIN:-}
if [ -z "$bin" ]; then
  bin=/tmp/ddpm-$DEVICE
  unpack "gpu/ddpm-$DEVICE.gz" "$bin" || {
    echo "no gpu/ddpm-$DEVICE.gz: run scripts/gpu-bundle.sh first"
    exit 1
  }
fi
"$bin" --version || true

left() { echo $((DEADLINE - SECONDS)); }

# One measurement: a label, a timeout in seconds, the command. Its JSON line (if any) goes to
# results.jsonl with the label and its wall time; its exit status is logged. Skipped when the
# deadline leaves less than 15 s; the timeout shrinks to what is left.
measure() {
  local label=$1 limit=$2
  shift 2
  local room=$(($(left) - 5))
  if [ "$room" -lt 15 ]; then
    echo "-- $label: skipped (deadline)"
    echo "{\"label\": \"$label\", \"skipped\": \"deadline\"}" >>"$results"
    return
  fi
  [ "$limit" -gt "$room" ] && limit=$room
  echo "-- $label (timeout ${limit}s): $*"
  local start=$SECONDS line
  line=$(timeout "$limit" "$@" 2>"$OUT/stderr.tmp" | tail -n 1)
  local rc=$?
  local took=$((SECONDS - start))
  tail -n 8 "$OUT/stderr.tmp"
  echo "   exit $rc after $took s: $line"
  if [ -n "$line" ] && [ "${line:0:1}" = "{" ]; then
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; d["wall_s"]=int(sys.argv[3]); print(json.dumps(d))' \
      "$label" "$line" "$took" >>"$results" || echo "{\"label\": \"$label\", \"raw\": \"unparsed\"}" >>"$results"
  else
    echo "{\"label\": \"$label\", \"failed\": $rc, \"wall_s\": $took}" >>"$results"
  fi
}

ddpm() { measure "$1" "$2" "$bin" bench --device "$DEVICE" "${@:3}" --json; }
peer() { measure "$1" "$2" python3 bench/torch_peer.py --device cuda "${@:3}"; }
have_peer=0
if [ "$DEVICE" != cpu ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  have_peer=1
fi

# 1. Correctness on the GPU: forward and gradients against the CPU (tiny and mnist U-Nets).
if unpack gpu/gpu_parity.gz /tmp/gpu_parity; then
  echo "-- gpu_parity"
  timeout 90 /tmp/gpu_parity --nocapture 2>&1 | tail -n 12
  echo "   gpu_parity exit ${PIPESTATUS[0]}"
fi

# 2. Does training reach its timed steps, and what does the first step cost? The compiler and
#    autotuner log of this run is kept (counts and the slowest lines) to see where it goes.
CUBECL_DEBUG_LOG="$OUT/cubecl.log" ddpm "ddpm $DEVICE mnist train b128" 150 --preset mnist \
  --batch-size 128 --mode train --warmup 3 --steps 10
if [ -f "$OUT/cubecl.log" ]; then
  {
    echo "lines: $(wc -l <"$OUT/cubecl.log")"
    echo "compilations: $(grep -ci 'compil' "$OUT/cubecl.log")"
    echo "autotune lines: $(grep -ci 'tun' "$OUT/cubecl.log")"
    head -n 40 "$OUT/cubecl.log"
    echo ...
    tail -n 40 "$OUT/cubecl.log"
  } >"$OUT/cubecl-summary.txt"
  # The whole log comes back too, compressed and cut to fit the 16 MiB a file may have.
  gzip -9 -c "$OUT/cubecl.log" | head -c $((15 << 20)) >"$OUT/cubecl.log.gz"
  rm -f "$OUT/cubecl.log"
fi
[ $have_peer = 1 ] && peer "pytorch cuda mnist train b128 fp32" 40 --preset mnist --batch-size 128 \
  --mode train --warmup 3 --steps 20

# 3. The issue's table: cifar10 at batch 128, training f32 and bf16, sampling; an empty kernel
#    cache of their own.
DDPM_KERNEL_CACHE=$(mktemp -d /tmp/ddpm-kernels.XXXXXX)
caches+=("$DDPM_KERNEL_CACHE")
ddpm "ddpm $DEVICE cifar10 train b128" 150 --preset cifar10 --batch-size 128 --mode train \
  --warmup 3 --steps 10
# The same in a new process: its first warm-up step is the first step with a warm kernel cache.
ddpm "ddpm $DEVICE cifar10 train b128 warm cache" 60 --preset cifar10 --batch-size 128 \
  --mode train --warmup 1 --steps 3
[ $have_peer = 1 ] && peer "pytorch cuda cifar10 train b128 fp32" 40 --preset cifar10 \
  --batch-size 128 --mode train --warmup 3 --steps 20
ddpm "ddpm $DEVICE cifar10 sample b128" 60 --preset cifar10 --batch-size 128 --mode sample \
  --warmup 3 --steps 10
[ $have_peer = 1 ] && peer "pytorch cuda cifar10 sample b128 fp32" 30 --preset cifar10 \
  --batch-size 128 --mode sample --warmup 3 --steps 20
ddpm "ddpm $DEVICE cifar10 train b128 bf16" 100 --preset cifar10 --batch-size 128 --mode train \
  --warmup 3 --steps 10 --precision bf16
[ $have_peer = 1 ] && peer "pytorch cuda cifar10 train b128 bf16" 40 --preset cifar10 \
  --batch-size 128 --mode train --warmup 3 --steps 20 --bf16

# 3b. Where one cifar10 training step spends its device time, kernel by kernel, on both sides:
#     CubeCL's profiler (every kernel timed; the step itself runs slower) and torch.profiler.
rm -f /tmp/ddpm-profile.log
CUBECL_DEBUG_LOG=/tmp/ddpm-profile.log CUBECL_DEBUG_OPTION=profile ddpm \
  "ddpm $DEVICE cifar10 train b128 profiled" 60 --preset cifar10 --batch-size 128 --mode train \
  --warmup 1 --steps 2
[ -f /tmp/ddpm-profile.log ] &&
  python3 bench/cubecl_profile.py /tmp/ddpm-profile.log 30 >"$OUT/profile-ddpm.txt" 2>&1
[ $have_peer = 1 ] && peer "pytorch cuda cifar10 train b128 fp32 profiled" 40 --preset cifar10 \
  --batch-size 128 --mode train --warmup 3 --steps 3 --profile "$OUT/profile-pytorch.txt"

# 3c. What this crate's CubeCL kernels (src/kernels/cube/: GroupNorm + shift + SiLU) buy: the
#     same training step through burn's composed operations.
ddpm "ddpm $DEVICE cifar10 train b128 no-kernels" 60 --preset cifar10 --batch-size 128 \
  --mode train --warmup 2 --steps 5 --no-kernels

# 4. A real run: 200 steps of the mnist U-Net on the bundled digits, and its sample grid.
measure "ddpm $DEVICE train 200 steps mnist b128" 120 "$bin" train --quiet --device "$DEVICE" \
  --preset mnist --batch-size 128 --steps 200 --log-every 50 --checkpoint-every 200 \
  --out "$OUT/run-200"
tail -n 1 "$OUT/run-200/log.jsonl" 2>/dev/null
rm -rf "$OUT/run-200/checkpoints"

rm -f "$OUT/stderr.tmp"
# The kernel cache: what it holds, and its tuning results as a bundle to ship for this card.
"$bin" kernels show >"$OUT/kernels.txt" 2>&1
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1 | tr -c 'A-Za-z0-9\n' '-')
rm -f "$OUT/kernels-autotune.bundle"
"$bin" kernels export "$OUT/kernels-autotune.bundle" --only autotune --name "${card:-$DEVICE}" \
  >>"$OUT/kernels.txt" 2>&1
# At most 8 files come back from the device machine: everything but the results, the log and the
# bundle goes into one archive.
extras=(nvidia-smi.txt cubecl-summary.txt kernels.txt profile-ddpm.txt profile-pytorch.txt run-200)
tar -czf "$OUT/extras.tar.gz" -C "$OUT" $(cd "$OUT" && ls -d "${extras[@]}" 2>/dev/null) &&
  (cd "$OUT" && rm -rf "${extras[@]}")
echo "== results ($(left) s of the deadline left)"
cat "$results"
