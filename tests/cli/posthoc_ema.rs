//! Post-hoc EMA from the command line: a run tracks power-function averages and snapshots
//! them, resumes bit-identically, and `ddpm ema reconstruct` gives back a tracked average and
//! any other width as a run that samples.

use std::path::Path;

use crate::common::{ddpm, ok, train_tiny, usage_error, write_idx, write_idx_labels};

fn train(spec: &str, out: &str, steps: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "--checkpoint-every",
        "6",
        "--posthoc-ema",
        "0.05,0.10",
        "--snapshot-every",
        "2",
    ];
    args.extend(extra);
    train_tiny(spec, out, steps, &args)
}

/// `ddpm ema reconstruct` of `run` at the widths `sigma_rel` into `out`.
fn reconstruct(run: &str, sigma_rel: &str, out: &Path) -> std::process::Output {
    let out = out.display().to_string();
    ddpm(&[
        "ema",
        "reconstruct",
        "--checkpoint",
        run,
        "--sigma-rel",
        sigma_rel,
        "--out",
        &out,
    ])
}

fn values(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    names
        .iter()
        .flat_map(|n| {
            st.tensor(n)
                .unwrap()
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn posthoc_ema_snapshots_resume_and_reconstruct() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    write_idx(&data, 16, 8, 9);
    let spec = format!("idx:{}", data.display());
    let whole = tmp.path().join("whole").display().to_string();
    ok(train(&spec, &whole, "12", &[]));
    let run = Path::new(&whole);
    for step in (2..=12).step_by(2) {
        for w in ["0.050", "0.100"] {
            let f = run.join(format!("posthoc/step-{step:08}/power-ema-{w}.safetensors"));
            assert!(f.is_file(), "{}", f.display());
        }
    }
    let ckpt = run.join("checkpoints/step-00000012");
    assert!(ckpt.join("power-ema-0.100.safetensors").is_file());

    // Six steps, then six more after a resume: the same averages and snapshots.
    let parts = tmp.path().join("parts").display().to_string();
    ok(train(&spec, &parts, "6", &[]));
    ok(train(&spec, &parts, "12", &["--resume"]));
    let o = train_tiny(&spec, &parts, "14", &["--posthoc-ema", "0.2", "--resume"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--posthoc-ema") && e.contains("cannot change"),
        "{e}"
    );
    for f in [
        "checkpoints/step-00000012/power-ema-0.050.safetensors",
        "checkpoints/step-00000012/ema.safetensors",
        "posthoc/step-00000010/power-ema-0.100.safetensors",
    ] {
        let (a, b) = (
            std::fs::read(run.join(f)),
            std::fs::read(Path::new(&parts).join(f)),
        );
        assert_eq!(a.unwrap(), b.unwrap(), "{f} differs after a resume");
    }

    // A tracked width is reconstructed as itself.
    let same = tmp.path().join("same");
    let o = ok(reconstruct(&whole, "0.10", &same));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("12 snapshots"),
        "{o:?}"
    );
    let got = values(&same.join("checkpoints/step-00000012/ema.safetensors"));
    let want = values(&ckpt.join("power-ema-0.100.safetensors"));
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-3, "largest relative difference {worst}");
    assert_eq!(
        std::fs::read(same.join("checkpoints/step-00000012/model.safetensors")).unwrap(),
        std::fs::read(ckpt.join("model.safetensors")).unwrap()
    );

    // Other widths, several at once; each is a run that samples.
    let sweep = tmp.path().join("sweep");
    ok(reconstruct(&whole, "0.07,0.2", &sweep));
    let between = values(&sweep.join("sigma-0.070/checkpoints/step-00000012/ema.safetensors"));
    assert_ne!(between, want);
    let s = tmp.path().join("s").display().to_string();
    ok(ddpm(&[
        "sample",
        "--quiet",
        "--checkpoint",
        &sweep.join("sigma-0.200").display().to_string(),
        "--n",
        "2",
        "--steps",
        "3",
        "--out",
        &s,
    ]));

    // The sweep: each width reconstructed, sampled and judged; its distance is the one
    // `eval fd` gives for the same samples written as PNGs.
    write_idx_labels(&data, &[0, 1, 2, 3].repeat(4));
    let judge = tmp.path().join("judge.safetensors").display().to_string();
    ok(ddpm(&[
        "eval",
        "judge-train",
        "--data",
        &spec,
        "--epochs",
        "1",
        "--out",
        &judge,
    ]));
    let swept = tmp.path().join("swept");
    let o = ok(ddpm(&[
        "ema",
        "sweep",
        "--checkpoint",
        &whole,
        "--sigma-rel",
        "0.07,0.2",
        "--judge",
        &judge,
        "--reference",
        &spec,
        "--n",
        "8",
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--json",
        "--out",
        &swept.display().to_string(),
    ]));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    let pngs = tmp.path().join("pngs").display().to_string();
    ok(ddpm(&[
        "sample",
        "--quiet",
        "--checkpoint",
        &swept.join("sigma-0.200").display().to_string(),
        "--n",
        "8",
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--out",
        &pngs,
    ]));
    let o = ok(ddpm(&[
        "eval",
        "fd",
        "--judge",
        &judge,
        "--samples",
        &format!("folder:{pngs}/images"),
        "--reference",
        &spec,
        "--json",
    ]));
    let fd: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (a, b) = (lines[1]["fd"].as_f64().unwrap(), fd["fd"].as_f64().unwrap());
    assert!(
        a.is_finite() && (a - b).abs() <= 1e-9 * (1.0 + b),
        "sweep {a}, eval fd {b}"
    );

    usage_error(
        reconstruct(&whole, "0.5", &tmp.path().join("bad")),
        "--sigma-rel",
    );
    usage_error(reconstruct(&whole, "0.1", &same), "exists");
    let plain = tmp.path().join("plain").display().to_string();
    ok(train_tiny(&spec, &plain, "2", &[]));
    usage_error(
        reconstruct(&plain, "0.1", &tmp.path().join("bad")),
        "--posthoc-ema",
    );
    usage_error(
        ddpm(&[
            "train",
            "--data",
            &spec,
            "--snapshot-every",
            "3",
            "--out",
            &plain,
            "--resume",
        ]),
        "--posthoc-ema",
    );
}
