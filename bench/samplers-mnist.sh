#!/usr/bin/env bash
# Samplers at equal network evaluations on one DDPM run (README, "EDM's samplers"): trains the
# `mnist` preset for 2000 steps on the real MNIST training set, a judging classifier, then draws
# 2,000 samples with DDIM, DPM-Solver++(2M) and EDM's Heun at 35 and 11 evaluations and judges
# each against the 10,000 test images. About 40 minutes on 2 cores.
# Usage: bash bench/samplers-mnist.sh [WORKDIR] (MNIST from ../shared/data/mnist or $MNIST).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
D=$repo/target/release/ddpm
M=${MNIST:-$repo/../shared/data/mnist}
W=${1:-$repo/runs/samplers-mnist}
mkdir -p "$W" && cd "$W"
[ -x "$D" ] || (cd "$repo" && cargo build --release)
[ -d run/checkpoints ] || $D train --quiet --preset mnist --data "idx:$M" --steps 2000 \
    --batch-size 64 --sample-every 0 --out run
[ -f judge.safetensors ] || $D eval judge-train --data "idx:$M" --epochs 1 --out judge.safetensors
for spec in "ddim 35" "dpmpp2m 35" "heun 18" "ddim 11" "dpmpp2m 11" "heun 6"; do
    set -- $spec
    name=$1-$2
    [ -f "s-$name/grid.png" ] || $D sample --quiet --checkpoint run --sampler "$1" --steps "$2" \
        --n 2000 --batch-size 200 --seed 0 --out "s-$name"
    echo "$name: $($D eval fd --judge judge.safetensors --samples "folder:s-$name/images" \
        --reference "idx:$M" --reference-split test)"
done
