#!/usr/bin/env python3
"""Per-kernel device time of one step of the GPU route, from CubeCL's profiling log.

CubeCL times every kernel when its profiling logger is on, and writes a summary table (name,
duration, launches, share) each time it syncs; `ddpm bench` syncs once per step, so the last
table is one steady step. This prints that table grouped by kernel family (the name without its
hash: convolutions, matrix products, fused element-wise kernels, reductions, copies), then the
slowest kernels.

    CUBECL_DEBUG_LOG=/tmp/p.log CUBECL_DEBUG_OPTION=profile \\
      ddpm bench --device cuda --preset cifar10 --mode train --batch-size 128 --warmup 1 --steps 2
    python3 bench/cubecl_profile.py /tmp/p.log [TOP]
"""

import re
import sys
from collections import defaultdict

UNITS = {"s": 1e3, "ms": 1.0, "µs": 1e-3, "us": 1e-3, "ns": 1e-6}


def millis(text):
    """A Rust `Duration` as `{:?}` prints it (1.2ms, 35.1µs, 2.03s, 880ns), in milliseconds."""
    m = re.fullmatch(r"([0-9.]+)(s|ms|µs|us|ns)", text.strip())
    if not m:
        return None
    return float(m.group(1)) * UNITS[m.group(2)]


def last_summary(lines):
    """The rows (name, ms, launches) of the last summary table in the log."""
    tables, rows, inside = [], [], False
    for line in lines:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and cells[-3:] == ["Duration", "Num Computed", "Ratio"]:
            inside, rows = True, []
            continue
        if not inside or len(cells) < 4:
            continue
        name = " | ".join(cells[:-3])
        if name == "Total":
            tables.append(rows)
            inside = False
            continue
        ms, launches = millis(cells[-3]), cells[-2]
        if ms is not None and launches.isdigit():
            rows.append((name, ms, int(launches)))
    return tables[-1] if tables else []


def family(name):
    """A kernel's family: its first name segment without the hash suffix."""
    return re.sub(r"_[0-9a-f]{8}$", "", name.split(" | ")[0])


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    top = int(sys.argv[2]) if len(sys.argv) > 2 else 15
    with open(sys.argv[1], encoding="utf-8", errors="replace") as f:
        rows = last_summary(f)
    if not rows:
        sys.exit(f"{sys.argv[1]}: no CubeCL profiling summary (CUBECL_DEBUG_OPTION=profile?)")
    total = sum(r[1] for r in rows)
    launches = sum(r[2] for r in rows)
    print(f"one step: {total:.2f} ms of kernel time in {launches} launches, {len(rows)} kernels")
    groups = defaultdict(lambda: [0.0, 0])
    for name, ms, n in rows:
        groups[family(name)][0] += ms
        groups[family(name)][1] += n
    print(f"\n{'family':<40} {'ms':>9} {'launches':>9} {'share':>6}")
    for fam, (ms, n) in sorted(groups.items(), key=lambda g: -g[1][0]):
        print(f"{fam[:40]:<40} {ms:9.2f} {n:9d} {100 * ms / total:5.1f}%")
    print(f"\nslowest {top} kernels")
    for name, ms, n in sorted(rows, key=lambda r: -r[1])[:top]:
        print(f"{ms:9.2f} ms {n:6d}×  {name[:110]}")


if __name__ == "__main__":
    main()
