#!/usr/bin/env bash
# The one prepared GPU measurement: run on the device machine, it builds nothing, measures the
# GPU route (burn's wgpu backend on Vulkan) and the PyTorch peer on CUDA, and writes everything
# under $OUT (results.jsonl, gpu.log, nvidia-smi.txt). Every command has its own timeout so the
# whole script ends inside about eight minutes, and a failure of one measurement is recorded, not
# fatal.
#
# Before the `run` call, on the development machine (about 25 minutes of building, no device time):
#   cargo build --release --features wgpu --target-dir target-gpu
#   strip target-gpu/release/ddpm
#   mkdir -p gpu && gzip -9 -c target-gpu/release/ddpm > gpu/ddpm-wgpu.gz   # ≈ 40 MB
#   and the Vulkan loader packages into .gl as /work/.library/device/README.md says.
# Then: run(command="bash bench/gpu.sh", carry=[".gl", "gpu"], timeout_s=540).
# On the development machine the same script smoke-tests itself on the CPU:
#   DEVICE=cpu DDPM_BIN=target/release/ddpm OUT=/tmp/gpu-out bash bench/gpu.sh
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
DEVICE=${DEVICE:-wgpu}
log="$OUT/gpu.log"
results="$OUT/results.jsonl"
: >"$results"
exec > >(tee -a "$log") 2>&1

echo "== $(date -u +%FT%TZ) on $(hostname), device route: $DEVICE"
if ls .gl/*.deb >/dev/null 2>&1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -f "$egl" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: not available"
ldconfig -p 2>/dev/null | grep -i libvulkan || echo "no libvulkan in ldconfig"

bin=${DDPM_BIN:-}
if [ -z "$bin" ]; then
  bin=/tmp/ddpm-wgpu
  if ! gzip -dc gpu/ddpm-wgpu.gz >"$bin" 2>/dev/null; then
    echo "no gpu/ddpm-wgpu.gz: build it first (see the top of this script)"
    exit 1
  fi
  chmod +x "$bin"
fi
"$bin" --version || true

# One measurement: a label, a timeout in seconds, the command. Its JSON line (if any) goes to
# results.jsonl with the label; its exit status is logged.
measure() {
  local label=$1 limit=$2
  shift 2
  echo "-- $label (timeout ${limit}s): $*"
  local start=$SECONDS line
  line=$(timeout "$limit" "$@" 2>"$OUT/stderr.tmp" | tail -n 1)
  local rc=$?
  tail -n 5 "$OUT/stderr.tmp"
  echo "   exit $rc after $((SECONDS - start)) s: $line"
  if [ -n "$line" ] && [ "${line:0:1}" = "{" ]; then
    python3 -c 'import json,sys; d=json.loads(sys.argv[2]); d["label"]=sys.argv[1]; print(json.dumps(d))' \
      "$label" "$line" >>"$results" || echo "{\"label\": \"$label\", \"raw\": \"unparsed\"}" >>"$results"
  else
    echo "{\"label\": \"$label\", \"failed\": $rc}" >>"$results"
  fi
}

ddpm() { measure "$1" "$2" "$bin" bench --device "$DEVICE" "${@:3}" --json; }
# Smoke first: does the route run at all (the first step compiles the kernels)?
ddpm "ddpm $DEVICE mnist train b64" 120 --preset mnist --batch-size 64 --mode train --steps 5
ddpm "ddpm $DEVICE cifar10 train b128" 200 --preset cifar10 --batch-size 128 --mode train --steps 10
ddpm "ddpm $DEVICE cifar10 sample b128" 90 --preset cifar10 --batch-size 128 --mode sample --steps 10
# Mixed precision (bf16 network, f32 master weights); WGSL has no bf16, so on wgpu this may fail.
ddpm "ddpm $DEVICE cifar10 train b128 bf16" 90 --preset cifar10 --batch-size 128 --mode train \
  --steps 10 --precision bf16
# The same binary's CPU route on this machine's cores, for the record.
measure "ddpm cpu mnist train b64 ($(nproc) threads)" 60 "$bin" bench --device cpu --preset mnist \
  --batch-size 64 --mode train --steps 5 --json

if [ "$DEVICE" != cpu ] && python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  peer() { measure "$1" "$2" python3 bench/torch_peer.py --device cuda "${@:3}"; }
  peer "pytorch cuda cifar10 train b128 fp32" 60 --preset cifar10 --batch-size 128 --mode train --steps 20
  peer "pytorch cuda cifar10 train b128 bf16" 60 --preset cifar10 --batch-size 128 --mode train --steps 20 --bf16
  peer "pytorch cuda cifar10 sample b128 bf16" 60 --preset cifar10 --batch-size 128 --mode sample --steps 20 --bf16
else
  echo "no CUDA PyTorch here: the peer's figures are the issue's (2150 img/s bf16 eager training)"
fi
rm -f "$OUT/stderr.tmp"
echo "== results"
cat "$results"
