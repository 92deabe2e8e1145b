//! Helpers shared by the command-line tests: running the binary and writing tiny IDX datasets.
#![allow(dead_code)] // each test binary uses its own subset

use std::path::Path;
use std::process::Output;

/// Runs the `ddpm` binary with `args`.
pub fn ddpm(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm")
}

/// `o`, after asserting that the command succeeded (its stderr otherwise).
pub fn ok(o: Output) -> Output {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    o
}

/// `ddpm train --quiet` of the tiny preset on `data` for `steps` steps at batch 4 into `out`,
/// with 4-image sample grids of 2 DDIM steps, and the `extra` flags.
pub fn train_tiny(data: &str, out: &str, steps: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--quiet",
        "--data",
        data,
        "--preset",
        "tiny",
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--sample-count",
        "4",
        "--sample-steps",
        "2",
        "--out",
        out,
    ];
    args.extend(extra);
    ddpm(&args)
}

/// Asserts a usage error (exit code 2) whose message contains `needle`.
pub fn usage_error(o: Output, needle: &str) {
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{needle}: {e}");
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
}

/// Writes `n` pseudo-random `size`×`size` images (a linear congruential stream from `seed`) as
/// a raw IDX3 `train-images-idx3-ubyte` in `dir`.
pub fn write_idx(dir: &Path, n: u32, size: u32, seed: u32) {
    let mut v = Vec::new();
    for x in [0x0803u32, n, size, size] {
        v.extend(x.to_be_bytes());
    }
    let mut s = seed;
    for _ in 0..n * size * size {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        v.push((s >> 16) as u8);
    }
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train-images-idx3-ubyte"), v).unwrap();
}

/// Writes `labels` as a raw IDX1 `train-labels-idx1-ubyte` in `dir`.
pub fn write_idx_labels(dir: &Path, labels: &[u8]) {
    let mut l = Vec::new();
    for x in [0x0801u32, labels.len() as u32] {
        l.extend(x.to_be_bytes());
    }
    l.extend(labels);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("train-labels-idx1-ubyte"), l).unwrap();
}
