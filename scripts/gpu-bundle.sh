#!/usr/bin/env bash
# Prepares, on the development machine, everything bench/gpu.sh needs on the GPU machine (which
# has no internet and builds nothing), in gpu/ (about 50 MB, inside the device's 64 MiB carry):
#   gpu/ddpm-cuda.gz        the release binary with the CPU and cuda backends, stripped
#   gpu/gpu_parity.gz       the GPU-against-CPU test binary (tests/gpu_parity.rs), stripped
#   gpu/libdevice.10.bc     NVIDIA's libdevice, which the cuda route links kernels against at
#                           run time ($CUDA_PATH/nvvm/libdevice/), from PyPI's nvidia-nvvm wheel
# It builds in target-gpu/ (about 30 minutes on 2 cores the first time) so the CPU build in
# target/ stays as it is. Then: run(command="bash bench/gpu.sh", carry=["gpu"], timeout_s=540).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/cuda-toolchain.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target-gpu}
mkdir -p gpu
cargo build --release --features cuda
strip -o gpu/ddpm-cuda "$CARGO_TARGET_DIR/release/ddpm"
test_bin=$(cargo test --release --features cuda --no-run --test gpu_parity --message-format=json |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu_parity":
        print(m["executable"])')
strip -o gpu/gpu_parity "$test_bin"
gzip -9 -f gpu/ddpm-cuda gpu/gpu_parity
if [ ! -f gpu/libdevice.10.bc ]; then
  wheels=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$wheels" "nvidia-nvvm==13.5.37"
  python3 - "$wheels"/*.whl <<'PY'
import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
name = next(n for n in z.namelist() if n.endswith("nvvm/libdevice/libdevice.10.bc"))
open("gpu/libdevice.10.bc", "wb").write(z.read(name))
PY
  rm -rf "$wheels"
fi
du -ch gpu/ddpm-cuda.gz gpu/gpu_parity.gz gpu/libdevice.10.bc
total=$(du -cb gpu/ddpm-cuda.gz gpu/gpu_parity.gz gpu/libdevice.10.bc | tail -1 | cut -f1)
if [ "$total" -gt $((62 << 20)) ]; then
  echo "gpu/ holds $total bytes: over the device's 64 MiB carry; leave out gpu_parity.gz" >&2
fi
