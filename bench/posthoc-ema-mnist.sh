#!/usr/bin/env bash
# Post-hoc EMA on real MNIST (README, "EDM"): from the EDM run of bench/samplers-mnist.sh
# (2000 steps, power-function averages σ_rel 0.05 and 0.10 snapshotted every 50 steps),
# reconstructs the averages of several widths at step 2000, draws 2,000 samples from each with
# Heun at 35 network evaluations (and from the raw weights), and judges each against the 10,000
# test images. About 20 minutes on 2 cores after bench/samplers-mnist.sh.
# Usage: bash bench/posthoc-ema-mnist.sh [WORKDIR] (the same WORKDIR as bench/samplers-mnist.sh).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
D=$repo/target/release/ddpm
M=${MNIST:-$repo/../shared/data/mnist}
W=${1:-$repo/runs/samplers-mnist}
cd "$W"
[ -d run-edm/posthoc ] || { echo "run bench/samplers-mnist.sh $W first" >&2; exit 1; }
widths="0.02 0.05 0.10 0.15 0.25"
[ -d ema-sweep ] || $D ema reconstruct --checkpoint run-edm --sigma-rel "${widths// /,}" \
    --out ema-sweep
fd() {
    echo "$1: $($D eval fd --judge judge.safetensors --samples "folder:$2/images" \
        --reference "idx:$M" --reference-split test)"
}
[ -f raw-heun-18/grid.png ] || $D sample --quiet --checkpoint run-edm --no-ema --sampler heun \
    --steps 18 --n 2000 --batch-size 200 --seed 0 --out raw-heun-18
fd "raw weights" raw-heun-18
for s in $widths; do
    dir=ema-sweep/sigma-$(printf %.3f "$s")
    [ -f "p-$s/grid.png" ] || $D sample --quiet --checkpoint "$dir" --sampler heun --steps 18 \
        --n 2000 --batch-size 200 --seed 0 --out "p-$s"
    fd "σ_rel $s" "p-$s"
done
