#!/usr/bin/env bash
# Samplers at equal network evaluations on a DDPM run and an EDM run (README, "EDM"): trains the
# `mnist` preset for 2000 steps at batch 64 on the real MNIST training set twice — L_simple on
# the DDPM chain, and `--objective edm` — and a judging classifier, then draws 2,000 samples from
# each with DDIM, DPM-Solver++(2M) and EDM's Heun at 35, 19 and 11 network evaluations and judges
# each against the 10,000 test images. About 80 minutes on 2 cores.
# Usage: bash bench/samplers-mnist.sh [WORKDIR] (MNIST from ../shared/data/mnist or $MNIST).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
D=$repo/target/release/ddpm
M=${MNIST:-$repo/../shared/data/mnist}
W=${1:-$repo/runs/samplers-mnist}
mkdir -p "$W" && cd "$W"
[ -x "$D" ] || (cd "$repo" && cargo build --release)
[ -f judge.safetensors ] || $D eval judge-train --data "idx:$M" --epochs 1 --out judge.safetensors
# run directory, sample prefix, extra training flags
# (The EDM run also tracks post-hoc EMA averages, for bench/posthoc-ema-mnist.sh.)
for arm in "run s" "run-edm e --objective edm --posthoc-ema 0.05,0.10 --snapshot-every 50"; do
    set -- $arm
    run=$1 prefix=$2
    shift 2
    [ -d "$run/checkpoints" ] || $D train --quiet --preset mnist --data "idx:$M" --steps 2000 \
        --batch-size 64 --sample-every 0 --out "$run" "$@"
    for spec in "ddim 35" "dpmpp2m 35" "heun 18" "ddim 19" "dpmpp2m 19" "heun 10" \
        "ddim 11" "dpmpp2m 11" "heun 6"; do
        set -- $spec
        name=$prefix-$1-$2
        [ -f "$name/grid.png" ] || $D sample --quiet --checkpoint "$run" --sampler "$1" \
            --steps "$2" --n 2000 --batch-size 200 --seed 0 --out "$name"
        echo "$run $1 $2: $($D eval fd --judge judge.safetensors --samples "folder:$name/images" \
            --reference "idx:$M" --reference-split test)"
    done
done
