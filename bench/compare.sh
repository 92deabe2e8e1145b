#!/usr/bin/env bash
# Runs `ddpm bench` and the PyTorch peer back to back on the same preset, batch and thread
# count, and prints both JSON lines and the ratio (ddpm / PyTorch img/s).
#   bench/compare.sh [PRESET] [BATCH] [MODE] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-mnist}; batch=${2:-64}; mode=${3:-train}; steps=${4:-5}
threads=${THREADS:-2}
bin=${DDPM_BIN:-target/release/ddpm}
[ -x "$bin" ] || cargo build --release
export RAYON_NUM_THREADS=$threads
ours=$("$bin" bench --preset "$preset" --batch-size "$batch" --mode "$mode" --steps "$steps" --json)
peer=$(python3 bench/torch_peer.py --preset "$preset" --batch-size "$batch" --mode "$mode" --steps "$steps" --threads "$threads")
echo "ddpm:    $ours"
echo "pytorch: $peer"
python3 - "$ours" "$peer" <<'PY'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"ratio (ddpm img/s ÷ pytorch img/s): {a['img_per_s'] / b['img_per_s']:.2f}")
PY
