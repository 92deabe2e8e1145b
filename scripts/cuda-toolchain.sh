#!/usr/bin/env bash
# Installs, without GitHub access, the LLVM 23 bundle that burn's cuda backend needs to build.
#
# burn 0.22's `cuda` feature pulls cubecl-llvm, whose build dependency tracel-llvm-bundler
# 23.1.0-4 downloads an LLVM 23 archive from GitHub unless
# $XDG_DATA_HOME/tracel/tracel-llvm-23.1.0-4/.tracel-llvm-installed exists. PyPI's
# mlc-llvm-static wheels carry a static LLVM 23.1 with the NVPTX target: this script downloads
# them from PyPI (the only registry a build machine may reach), unpacks them into one folder and
# points the bundler's directory at it. Run it once per machine, then:
#   cargo build --release --no-default-features --features cuda
# Idempotent: it does nothing when the bundle is already installed.
set -euo pipefail
version=23.1.1.post0
data=${XDG_DATA_HOME:-$HOME/.local/share}
dest=$data/tracel/tracel-llvm-23.1.0-4
if [ -f "$dest/.tracel-llvm-installed" ]; then
  echo "LLVM bundle already installed at $dest"
  exit 0
fi
store=${DDPM_LLVM_DIR:-$HOME/.cache/ddpm/mlc-llvm-static-$version}
mkdir -p "$store/wheels"
python3 -m pip download --quiet --no-deps -d "$store/wheels" \
  "mlc-llvm-static==$version" "mlc-llvm-static-extra-targets==$version"
for w in "$store"/wheels/*.whl; do
  python3 -m zipfile -e "$w" "$store/tree"
done
root=$store/tree/mlc_llvm_static/static
if [ ! -x "$root/bin/llvm-config" ]; then
  chmod +x "$root"/bin/* 2>/dev/null || true
fi
[ -x "$root/bin/llvm-config" ] || { echo "no bin/llvm-config in $root" >&2; exit 1; }
"$root/bin/llvm-config" --targets-built | grep -qw NVPTX ||
  { echo "$root: this LLVM has no NVPTX target" >&2; exit 1; }
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
ln -s "$root" "$dest"
touch "$dest/.tracel-llvm-installed"
echo "LLVM $("$root/bin/llvm-config" --version) installed for tracel-llvm-bundler at $dest"
