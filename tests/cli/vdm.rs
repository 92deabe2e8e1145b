//! VDM runs end to end on tiny 8×8 images: a learned schedule trains, resumes bit-identically,
//! samples with every sampler, is evaluated and printed; fixed VDM schedules and discrete time;
//! the errors a user meets.

use std::path::Path;
use std::process::Output;

use crate::common::{ddpm, ok, usage_error, write_idx};

fn train_args<'a>(spec: &'a str, run: &'a str, steps: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--quiet",
        "--data",
        spec,
        "--preset",
        "tiny",
        "--steps",
        steps,
        "--batch-size",
        "4",
        "--checkpoint-every",
        "2",
        "--sample-count",
        "4",
        "--sample-steps",
        "3",
        "--out",
        run,
    ]
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn dataset(dir: &Path) -> String {
    write_idx(dir, 32, 8, 7);
    format!("idx:{}", dir.display())
}

#[test]
fn a_learned_schedule_trains_resumes_samples_and_evaluates() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = dataset(&tmp.path().join("d"));
    let straight = tmp.path().join("a").display().to_string();
    let resumed = tmp.path().join("b").display().to_string();
    let mut a = train_args(&spec, &straight, "4");
    a.extend(["--schedule", "learned", "--schedule-lr", "0.01"]);
    ok(ddpm(&a));
    let mut b = train_args(&spec, &resumed, "2");
    b.extend(["--schedule", "learned", "--schedule-lr", "0.01"]);
    ok(ddpm(&b));
    let mut b = train_args(&spec, &resumed, "4");
    b.extend(["--resume"]);
    ok(ddpm(&b));
    let step = |run: &str, f: &str| {
        std::fs::read(Path::new(run).join("checkpoints/step-00000004").join(f)).unwrap()
    };
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "schedule.safetensors",
    ] {
        assert!(
            step(&straight, f) == step(&resumed, f),
            "{f} differs after resuming"
        );
    }
    let cfg = std::fs::read_to_string(Path::new(&straight).join("config.toml")).unwrap();
    assert!(cfg.contains("schedule = \"learned\""), "{cfg}");

    // The schedule moved from its linear start and is still increasing in t.
    let o = ok(ddpm(&[
        "schedule",
        "--checkpoint",
        &straight,
        "--timesteps",
        "50",
        "--format",
        "json",
    ]));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("γ(0) = ") && stderr.contains("t = (i + 1)/50"),
        "{stderr}"
    );
    let s = json(&o);
    let ab: Vec<f64> = s["alphas_cumprod"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(ab.len(), 50);
    assert!(ab.windows(2).all(|w| w[1] < w[0]), "{ab:?}");
    let linear_start = 1.0 / (1.0 + (-(-13.3f64 + 18.3 / 50.0)).exp());
    assert!(ab[0] != linear_start);

    for (sampler, steps) in [("ddpm", "20"), ("ddim", "5"), ("dpmpp2m", "5")] {
        let out = tmp.path().join(format!("s-{sampler}"));
        let o = ok(ddpm(&[
            "sample",
            "--checkpoint",
            &straight,
            "--n",
            "3",
            "--sampler",
            sampler,
            "--steps",
            steps,
            "--out",
            &out.display().to_string(),
        ]));
        assert!(out.join("grid.png").is_file(), "{o:?}");
        assert_eq!(std::fs::read_dir(out.join("images")).unwrap().count(), 3);
    }

    // The bound: finite, positive, its parts adding up; more t-samples, a smaller error.
    let nll = |k: &str| {
        json(&ok(ddpm(&[
            "eval",
            "nll",
            "--checkpoint",
            &straight,
            "--data",
            &spec,
            "--limit",
            "16",
            "--t-samples",
            k,
            "--json",
            "--quiet",
        ])))
    };
    let (one, eight) = (nll("1"), nll("8"));
    for r in [&one, &eight] {
        let bpd = r["bpd"].as_f64().unwrap();
        assert!(bpd.is_finite() && bpd > 0.0, "{r}");
        assert!(r["prior_bpd"].as_f64().unwrap() >= 0.0);
        assert!(r["decoder_bpd"].as_f64().unwrap() > 0.0);
        assert_eq!(r["n"], 16);
    }
    assert!(
        eight["bpd_stderr"].as_f64().unwrap() < one["bpd_stderr"].as_f64().unwrap(),
        "{one} {eight}"
    );

    let png = tmp.path().join("schedules.png");
    ok(ddpm(&[
        "plot",
        "schedules",
        "--run",
        &straight,
        "--out",
        &png.display().to_string(),
    ]));
    assert!(png.is_file());

    // What a learned schedule cannot be used with.
    usage_error(
        ddpm(&[
            "export",
            "diffusers",
            "--checkpoint",
            &straight,
            "--out",
            &tmp.path().join("hf").display().to_string(),
        ]),
        "VDM run",
    );
    assert!(!tmp.path().join("hf").exists());
    let clf = tmp.path().join("clf").display().to_string();
    usage_error(
        ddpm(&["train-classifier", "--like", &straight, "--out", &clf]),
        "VDM time",
    );
    std::fs::remove_file(
        Path::new(&straight).join("checkpoints/step-00000004/schedule.safetensors"),
    )
    .unwrap();
    let o = ddpm(&[
        "sample",
        "--checkpoint",
        &straight,
        "--n",
        "1",
        "--out",
        &tmp.path().join("s-missing").display().to_string(),
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("schedule.safetensors"), "{e}");
}

#[test]
fn fixed_vdm_schedules_and_discrete_time_train_and_sample() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = dataset(&tmp.path().join("d"));
    for (name, extra) in [
        (
            "lin",
            vec![
                "--time",
                "continuous",
                "--schedule",
                "vdm-linear",
                "--gamma-min",
                "-10",
                "--gamma-max",
                "6",
            ],
        ),
        (
            "cos",
            vec![
                "--time",
                "continuous",
                "--schedule",
                "cosine",
                "--no-antithetic-time",
            ],
        ),
        (
            "disc",
            vec!["--time", "discrete:10", "--schedule", "learned"],
        ),
    ] {
        let run = tmp.path().join(name).display().to_string();
        let mut a = train_args(&spec, &run, "2");
        a.extend(extra.iter().copied());
        ok(ddpm(&a));
        let o = ok(ddpm(&[
            "schedule",
            "--checkpoint",
            &run,
            "--format",
            "json",
        ]));
        let s = json(&o);
        let ab: Vec<f64> = s["alphas_cumprod"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        match name {
            // The chain of a continuous run has --timesteps (1000) steps; its last ᾱ is
            // sigmoid(−γ(1)).
            "lin" => {
                assert_eq!(ab.len(), 1000);
                let want = 1.0 / (1.0 + 6f64.exp());
                assert!((ab[999] - want).abs() < 1e-12, "{} vs {want}", ab[999]);
            }
            "cos" => assert_eq!(ab.len(), 1000),
            // A discrete:T run samples on its own T steps.
            _ => assert_eq!(ab.len(), 10),
        }
        let out = tmp.path().join(format!("s-{name}"));
        ok(ddpm(&[
            "sample",
            "--checkpoint",
            &run,
            "--n",
            "2",
            "--steps",
            "4",
            "--out",
            &out.display().to_string(),
        ]));
        let r = json(&ok(ddpm(&[
            "eval",
            "nll",
            "--checkpoint",
            &run,
            "--data",
            &spec,
            "--limit",
            "8",
            "--json",
            "--quiet",
        ])));
        assert!(r["bpd"].as_f64().unwrap().is_finite(), "{r}");
    }
}

#[test]
fn the_sampled_bound_of_a_ddpm_chain_agrees_with_the_full_sum() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = dataset(&tmp.path().join("d"));
    let run = tmp.path().join("r").display().to_string();
    let mut a = train_args(&spec, &run, "2");
    a.extend(["--timesteps", "40"]);
    ok(ddpm(&a));
    let nll = |extra: &[&str]| {
        let mut a = vec![
            "eval",
            "nll",
            "--checkpoint",
            &run,
            "--data",
            &spec,
            "--limit",
            "32",
            "--json",
            "--quiet",
        ];
        a.extend(extra);
        json(&ok(ddpm(&a)))
    };
    let full = nll(&[]);
    let sampled = nll(&["--t-samples", "20"]);
    let (f, s) = (
        full["bpd"].as_f64().unwrap(),
        sampled["bpd"].as_f64().unwrap(),
    );
    // Unbiased: the same images, t drawn instead of summed; the sampled estimate's standard
    // error over images bounds its t-sampling error too.
    let se = sampled["bpd_stderr"].as_f64().unwrap();
    assert!((f - s).abs() < 4.0 * se, "full {f} vs sampled {s} ± {se}");
    // L_T and L_0 are computed exactly in both.
    let close = |k: &str| {
        let (a, b) = (full[k].as_f64().unwrap(), sampled[k].as_f64().unwrap());
        assert!((a - b).abs() < 0.1 * a.abs().max(1e-3), "{k}: {a} vs {b}");
    };
    close("prior_bpd");
    close("decoder_bpd");
}

#[test]
fn vdm_options_are_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = dataset(&tmp.path().join("d"));
    let run = tmp.path().join("r").display().to_string();
    for (extra, needle) in [
        (
            vec!["--schedule", "learned", "--time", "discrete"],
            "--time continuous",
        ),
        (
            vec!["--time", "continuous", "--schedule", "linear"],
            "vdm-linear, cosine or learned",
        ),
        (
            vec![
                "--time",
                "continuous",
                "--schedule",
                "cosine",
                "--parameterization",
                "v",
            ],
            "ε-prediction",
        ),
        (
            vec![
                "--time",
                "continuous",
                "--schedule",
                "cosine",
                "--variance",
                "learned",
                "--loss",
                "hybrid",
            ],
            "fixed-small",
        ),
        (
            vec![
                "--time",
                "continuous",
                "--schedule",
                "cosine",
                "--weighting",
                "min-snr",
            ],
            "--weighting",
        ),
        (vec!["--time", "sometimes"], "--time"),
        (
            vec!["--time", "discrete:0", "--schedule", "learned"],
            "discrete:0",
        ),
        (
            vec![
                "--schedule",
                "learned",
                "--gamma-min",
                "5",
                "--gamma-max",
                "1",
            ],
            "--gamma-min",
        ),
        (vec!["--schedule-lr", "0.1"], "--schedule-lr"),
        (
            vec!["--schedule", "learned", "--schedule-lr", "-1"],
            "--schedule-lr",
        ),
    ] {
        let mut a = train_args(&spec, &run, "1");
        a.extend(extra.iter().copied());
        usage_error(ddpm(&a), needle);
        assert!(!Path::new(&run).exists(), "{extra:?} left a run behind");
    }
    usage_error(ddpm(&["schedule", "--schedule", "learned"]), "--checkpoint");
}
