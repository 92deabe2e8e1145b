#!/usr/bin/env bash
# Runs `ddpm bench` and the PyTorch peer back to back on the same preset, batch and thread
# count, ROUNDS times alternating (default 3: the host is shared and its speed drifts), prints
# every JSON line, the ratio of each round (ddpm img/s ÷ PyTorch img/s) and their median.
#   bench/compare.sh [PRESET] [BATCH] [MODE] [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
preset=${1:-mnist}; batch=${2:-64}; mode=${3:-train}; steps=${4:-5}
threads=${THREADS:-2}
rounds=${ROUNDS:-3}
bin=${DDPM_BIN:-target/release/ddpm}
[ -x "$bin" ] || cargo build --release
export RAYON_NUM_THREADS=$threads
lines=()
for ((r = 1; r <= rounds; r++)); do
  ours=$("$bin" bench --preset "$preset" --batch-size "$batch" --mode "$mode" --steps "$steps" --json)
  peer=$(python3 bench/torch_peer.py --preset "$preset" --batch-size "$batch" --mode "$mode" --steps "$steps" --threads "$threads")
  echo "round $r ddpm:    $ours"
  echo "round $r pytorch: $peer"
  lines+=("$ours" "$peer")
done
python3 - "${lines[@]}" <<'PY'
import json, statistics, sys
runs = [json.loads(s) for s in sys.argv[1:]]
pairs = list(zip(runs[0::2], runs[1::2]))
ratios = [a["img_per_s"] / b["img_per_s"] for a, b in pairs]
for i, ((a, b), r) in enumerate(zip(pairs, ratios), 1):
    print(f"round {i}: ddpm {a['img_per_s']:.1f} img/s, pytorch {b['img_per_s']:.1f} img/s, ratio {r:.2f}")
med = lambda k, xs: statistics.median(x[k] for x in xs)
print(f"median: ddpm {med('img_per_s', runs[0::2]):.1f} img/s ({med('ms_per_step', runs[0::2]):.0f} ms/step), "
      f"pytorch {med('img_per_s', runs[1::2]):.1f} img/s ({med('ms_per_step', runs[1::2]):.0f} ms/step)")
print(f"ratio (ddpm img/s ÷ pytorch img/s): median {statistics.median(ratios):.2f} over {len(ratios)} rounds "
      f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
PY
