//! `ddpm bench`: the JSON line, the per-kernel profile and its errors, on the `tiny` preset.

use std::process::Command;

use serde_json::Value;

fn ddpm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm")
}

#[test]
fn json_line_and_kernel_profile() {
    let out = ddpm(&[
        "bench",
        "--preset",
        "tiny",
        "--batch-size",
        "4",
        "--steps",
        "2",
        "--json",
        "--profile",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "one JSON line on stdout: {stdout}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["preset"], "tiny");
    assert_eq!(v["batch_size"], 4);
    let ms = v["ms_per_step"].as_f64().unwrap();
    assert!(ms > 0.0 && v["img_per_s"].as_f64().unwrap() > 0.0);
    // The profile goes to standard error with --json: the tiny U-Net's 3×3 convolutions (8×8
    // images), its GroupNorms and its attention block, forward and backward, per step.
    assert!(stderr.contains("kernels:"), "{stderr}");
    for op in [
        "conv2d 3×3/1 8→8 8×8 backward",
        "group_norm+silu",
        "attention",
        "forward",
    ] {
        assert!(stderr.contains(op), "no `{op}` in the profile:\n{stderr}");
    }
    // The step's phases, then each kernel row: ms per step, calls per step, share of the step.
    assert!(stderr.starts_with("step: "), "{stderr}");
    for phase in ["forward", "backward", "optimizer"] {
        assert!(stderr.lines().next().unwrap().contains(phase), "{stderr}");
    }
    let header = stderr.lines().position(|l| l.contains("ms/step")).unwrap();
    let rows: Vec<Vec<&str>> = stderr
        .lines()
        .skip(header + 1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(!rows.is_empty());
    for r in &rows {
        let ms: f64 = r[0].parse().unwrap();
        let calls: f64 = r[1].parse().unwrap();
        assert!(ms >= 0.0 && calls > 0.0, "{r:?}");
        assert!(r[2].ends_with('%'), "{r:?}");
    }
}

#[test]
fn bad_flags_are_named() {
    let out = ddpm(&["bench", "--preset", "tiny", "--mode", "fast"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--mode") && err.contains("fast"), "{err}");
    let out = ddpm(&["bench", "--preset", "huge"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--preset") && err.contains("huge"), "{err}");
}
