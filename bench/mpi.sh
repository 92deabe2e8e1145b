#!/usr/bin/env bash
# Data parallelism on this machine: the gradient all-reduce of the mnist and cifar10 presets
# between 2 ranks, and mnist training throughput of 2 ranks × 1 thread against 1 rank × 2
# threads (alternating rounds; medians). Needs a build with --features mpi and mpirun.
# Usage: bash bench/mpi.sh [DATA] [ROUNDS]   (DATA: idx:DIR of MNIST; default ../shared/data/mnist)
set -euo pipefail
cd "$(dirname "$0")/.."
B=${DDPM:-target/release/ddpm}
DATA=${1:-idx:../shared/data/mnist}
ROUNDS=${2:-3}
STEPS=${STEPS:-60}
MPIRUN=(mpirun --oversubscribe --bind-to none)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_btl_vader_single_copy_mechanism=none
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
echo "## all-reduce between 2 ranks (median of 20)"
for p in mnist cifar10; do
    "${MPIRUN[@]}" -np 2 "$B" bench --preset "$p" --mode allreduce --steps 20 --warmup 2 --json
done
# img/s and all-reduce seconds per step of the last logged window of a run (steps 11..STEPS).
window() {
    python3 - "$1" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
last = [l for l in lines if l["step"] > 10]
ips = sum(l["img_per_s"] for l in last) / len(last)
ar = [l.get("allreduce_s", 0.0) for l in last]
print(f"{ips:.2f} {sum(ar) / len(ar) * 1000:.1f}")
PY
}
echo "## mnist training, batch 64, $STEPS steps, img/s and all-reduce ms/step (steps 11..$STEPS)"
for r in $(seq 1 "$ROUNDS"); do
    for mode in 1x2 2x1; do
        out="$TMP/$mode-$r"
        args=(train --quiet --preset mnist --data "$DATA" --steps "$STEPS" --batch-size 64
              --log-every 10 --sample-every 0 --sample-count 4 --sample-steps 2
              --checkpoint-every 0 --out "$out")
        if [ "$mode" = 1x2 ]; then
            RAYON_NUM_THREADS=2 "$B" "${args[@]}" > /dev/null
        else
            "${MPIRUN[@]}" -np 2 -x RAYON_NUM_THREADS=1 "$B" "${args[@]}" > /dev/null
        fi
        echo "round $r $mode $(window "$out/log.jsonl")"
    done
done
