#!/usr/bin/env bash
# Builds and runs tests/outside: a separate cargo project that depends on ddpm by path and uses
# only its crate-root API (train on its own images, sample, bits/dim). Shares this repository's
# target directory and dependency versions, so it compiles little beyond ddpm itself.
set -euo pipefail
cd "$(dirname "$0")/.."
cp Cargo.lock tests/outside/Cargo.lock
CARGO_TARGET_DIR="$PWD/target" cargo run --release --quiet --manifest-path tests/outside/Cargo.toml
rm -f tests/outside/Cargo.lock
