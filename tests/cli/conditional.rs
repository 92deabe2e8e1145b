//! Class-conditional training and classifier-free guidance end to end on a toy mixture whose
//! class-conditional densities are known: 8-gaussians, class k = N(μ_k, 0.05² I) with μ_k on a
//! circle of radius 0.8 at angle 2πk/8.

use std::path::Path;

use crate::common::{ddpm, ok, write_idx_labels};

use ddpm::data::toy2d::{EIGHT_GAUSSIANS_SD, eight_gaussians_mean};

fn points(dir: &Path) -> Vec<[f64; 2]> {
    std::fs::read_to_string(dir.join("samples.csv"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: Vec<f64> = l.split(',').map(|x| x.parse().unwrap()).collect();
            [v[0], v[1]]
        })
        .collect()
}

/// log p(c | x) under the mixture of equal-weight isotropic Gaussians of standard deviation
/// `sd` at the 8-gaussians means.
fn log_posterior(x: [f64; 2], c: usize, sd: f64) -> f64 {
    let l: Vec<f64> = (0..8)
        .map(|k| {
            let m = eight_gaussians_mean(k);
            -((x[0] - m[0]).powi(2) + (x[1] - m[1]).powi(2)) / (2.0 * sd * sd)
        })
        .collect();
    let max = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    l[c] - (max + l.iter().map(|v| (v - max).exp()).sum::<f64>().ln())
}

/// `n` samples of `run`, every class in turn, with `(sampler, steps)`, classifier-free guidance
/// `w` and `seed`, written to `dir`: their points.
fn sample_classes(
    run: &str,
    dir: &Path,
    n: &str,
    (sampler, steps): (&str, &str),
    w: &str,
    seed: &str,
) -> Vec<[f64; 2]> {
    ok(ddpm(&[
        "sample",
        "--quiet",
        "--checkpoint",
        run,
        "--class",
        "all",
        "--n",
        n,
        "--sampler",
        sampler,
        "--steps",
        steps,
        "--guidance",
        w,
        "--seed",
        seed,
        "--out",
        dir.to_str().unwrap(),
    ]));
    points(dir)
}

/// A class-conditional MLP trained on the 8 Gaussians for 2000 steps at batch 256 into `run`,
/// with the `extra` flags.
fn train_eight_gaussians(run: &str, extra: &[&str]) {
    let mut args = vec![
        "train",
        "--quiet",
        "--data",
        "toy:8-gaussians",
        "--preset",
        "mlp",
        "--class-cond",
        "--steps",
        "2000",
        "--batch-size",
        "256",
        "--checkpoint-every",
        "2000",
        "--sample-count",
        "16",
        "--out",
        run,
    ];
    args.extend(extra);
    ok(ddpm(&args));
}

#[test]
fn conditional_samples_follow_their_class_and_guidance_sharpens_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run").display().to_string();
    train_eight_gaussians(&run, &[]);
    let cfg = std::fs::read_to_string(Path::new(&run).join("config.toml")).unwrap();
    assert!(cfg.contains("class_cond = true"), "{cfg}");
    assert!(
        cfg.contains("classes = ["),
        "the class names are stored: {cfg}"
    );
    let per_class = 150;
    let n = (8 * per_class).to_string();
    let sample = |out: &str, w: &str| {
        sample_classes(&run, &tmp.path().join(out), &n, ("ddpm", "100"), w, "3")
    };
    let plain = sample("w0", "0");
    each_class_on_its_mode(&plain, per_class, 0.97, 0.02);
    // Guidance moves samples toward higher p(c | x): under a smoothed classifier (components of
    // standard deviation 0.3, which overlap), the mean log-posterior of the requested class
    // rises with w, as the guided score (1 + w)∇log p(x|c) − w∇log p(x) says it must.
    let guided = sample("w3", "3");
    guidance_raises_the_posterior(&plain, &guided, per_class);
}

/// Each class's block of `per_class` samples: more than `own` of them nearest their own mode,
/// the mean within 4 standard errors (plus `bias`, the model's allowance) of μ_k, the spread
/// within a factor 2 of the class's standard deviation.
fn each_class_on_its_mode(points: &[[f64; 2]], per_class: usize, own: f64, bias: f64) {
    for k in 0..8 {
        let block = &points[k * per_class..(k + 1) * per_class];
        let m = eight_gaussians_mean(k);
        let mean = [0, 1].map(|d| block.iter().map(|p| p[d]).sum::<f64>() / per_class as f64);
        let se = EIGHT_GAUSSIANS_SD / (per_class as f64).sqrt();
        for d in 0..2 {
            assert!(
                (mean[d] - m[d]).abs() < 4.0 * se + bias,
                "class {k}: mean {mean:?}, expected {m:?}"
            );
        }
        let var = block
            .iter()
            .map(|p| (p[0] - mean[0]).powi(2) + (p[1] - mean[1]).powi(2))
            .sum::<f64>()
            / (2.0 * (per_class - 1) as f64);
        let sd = var.sqrt();
        eprintln!("class {k}: mean {mean:.3?} (μ {m:.3?}), sd {sd:.4}");
        assert!(
            (0.5 * EIGHT_GAUSSIANS_SD..2.0 * EIGHT_GAUSSIANS_SD).contains(&sd),
            "class {k}: standard deviation {sd}, expected {EIGHT_GAUSSIANS_SD}"
        );
        let on_mode = block
            .iter()
            .filter(|p| log_posterior(**p, k, EIGHT_GAUSSIANS_SD) > (0.5f64).ln())
            .count();
        assert!(
            on_mode as f64 > own * per_class as f64,
            "class {k}: {on_mode} of {per_class} on their mode"
        );
    }
}

/// The mean log-posterior of each sample's requested class under a smoothed classifier
/// (components of standard deviation 0.3) is higher with guidance than without.
fn guidance_raises_the_posterior(plain: &[[f64; 2]], guided: &[[f64; 2]], per_class: usize) {
    let mean_lp = |pts: &[[f64; 2]]| {
        pts.iter()
            .enumerate()
            .map(|(i, p)| log_posterior(*p, i / per_class, 0.3))
            .sum::<f64>()
            / pts.len() as f64
    };
    let (a, b) = (mean_lp(plain), mean_lp(guided));
    eprintln!("mean log p(c|x) under the smoothed classifier: w = 0 {a:.4}, w = 3 {b:.4}");
    assert!(b > a + 0.01, "mean log p(c|x): w = 0 {a}, w = 3 {b}");
}

#[test]
fn conditioning_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("u").display().to_string();
    let o = ddpm(&[
        "train",
        "--quiet",
        "--data",
        "toy:swiss-roll",
        "--preset",
        "mlp",
        "--class-cond",
        "--steps",
        "2",
        "--out",
        &run,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("has no labels"));
    ok(ddpm(&[
        "train",
        "--quiet",
        "--data",
        "toy:two-moons",
        "--preset",
        "mlp",
        "--steps",
        "2",
        "--sample-count",
        "4",
        "--out",
        &run,
    ]));
    let out = tmp.path().join("s").display().to_string();
    for (args, needle) in [
        (vec!["--class", "1"], "trained without classes"),
        (vec!["--guidance", "2"], "need --class"),
        (vec!["--guidance", "-1"], "--guidance"),
    ] {
        let mut a = vec![
            "sample",
            "--quiet",
            "--checkpoint",
            &run,
            "--n",
            "4",
            "--out",
            &out,
        ];
        a.extend(args);
        let o = ddpm(&a);
        assert_eq!(o.status.code(), Some(2));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(needle), "{needle}: {e}");
    }
    let cond = tmp.path().join("c").display().to_string();
    ok(ddpm(&[
        "train",
        "--quiet",
        "--data",
        "toy:two-moons",
        "--preset",
        "mlp",
        "--class-cond",
        "--steps",
        "2",
        "--sample-count",
        "4",
        "--out",
        &cond,
    ]));
    let o = ddpm(&[
        "sample",
        "--quiet",
        "--checkpoint",
        &cond,
        "--class",
        "2",
        "--n",
        "4",
        "--out",
        &out,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("classes 0..=1"));
    // The denoising chain is drawn for image models only.
    let chain = tmp.path().join("chain.png").display().to_string();
    let o = ddpm(&[
        "plot",
        "chain",
        "--checkpoint",
        &cond,
        "--steps",
        "3",
        "--out",
        &chain,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("image models"));
    // A resumed conditional run keeps its conditioning.
    let o = ddpm(&[
        "train",
        "--quiet",
        "--out",
        &cond,
        "--resume",
        "--steps",
        "3",
        "--cond-drop",
        "0.5",
    ]);
    assert!(String::from_utf8_lossy(&o.stderr).contains("--cond-drop cannot change"));
}

/// The guidance sweep end to end on a tiny 8×8 labelled set: a class-conditional U-Net, the
/// judging classifier, the table, the JSON lines and the trade-off plot.
#[test]
fn guidance_sweep_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    let n = 40u32;
    let mut img = Vec::new();
    for x in [0x0803u32, n, 8, 8] {
        img.extend(x.to_be_bytes());
    }
    let mut lab = Vec::new();
    for i in 0..n {
        // Class k: a bright k-th row.
        let k = (i % 10) as usize;
        img.extend((0..64).map(|p| if p / 8 == k % 8 { 250u8 } else { 5 }));
        lab.push(k as u8);
    }
    std::fs::write(data.join("train-images-idx3-ubyte"), img).unwrap();
    write_idx_labels(&data, &lab);
    let spec = format!("idx:{}", data.display());
    let run = tmp.path().join("r").display().to_string();
    ok(ddpm(&[
        "train",
        "--quiet",
        "--data",
        &spec,
        "--preset",
        "tiny",
        "--class-cond",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--timesteps",
        "50",
        "--sample-count",
        "10",
        "--sample-steps",
        "2",
        "--out",
        &run,
    ]));
    let clf = tmp.path().join("c.safetensors").display().to_string();
    ok(ddpm(&[
        "eval",
        "judge-train",
        "--data",
        &spec,
        "--out",
        &clf,
    ]));
    let plot = tmp.path().join("t.png");
    let o = ok(ddpm(&[
        "eval",
        "guidance",
        "--quiet",
        "--checkpoint",
        &run,
        "--judge",
        &clf,
        "--reference",
        &spec,
        "--guidance",
        "0,1.5",
        "--per-class",
        "2",
        "--steps",
        "2",
        "--json",
        "--plot",
        plot.to_str().unwrap(),
    ]));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["w"], 1.5);
    assert_eq!(lines[0]["n"], 20);
    for l in &lines {
        let acc = l["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc));
        assert!(l["fd"].as_f64().unwrap().is_finite());
    }
    // The weight is applied: the same noise gives other samples, so another distance.
    assert_ne!(lines[0]["fd"], lines[1]["fd"]);
    assert!(plot.is_file());
    // The chain of the conditional model, guided toward class 3.
    let chain = tmp.path().join("chain.png");
    ok(ddpm(&[
        "plot",
        "chain",
        "--checkpoint",
        &run,
        "--sampler",
        "ddim",
        "--steps",
        "3",
        "--n",
        "2",
        "--class",
        "3",
        "--guidance",
        "2",
        "--out",
        chain.to_str().unwrap(),
    ]));
    assert!(chain.is_file());
    let o = ddpm(&[
        "eval",
        "guidance",
        "--checkpoint",
        &run,
        "--judge",
        &clf,
        "--reference",
        &spec,
        "--guidance",
        "1,x",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--guidance: `x`"), "{e}");
}

/// An EDM run (`--objective edm`) of the same class-conditional MLP: Heun's samples of each
/// class lie on its own mode, and guidance raises the requested class's posterior, as for the
/// DDPM chain above.
#[test]
fn an_edm_run_conditions_on_classes_and_guidance_sharpens_them() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run").display().to_string();
    train_eight_gaussians(&run, &["--objective", "edm"]);
    let per_class = 100;
    let n = (8 * per_class).to_string();
    let sample = |out: &str, w: &str| {
        sample_classes(&run, &tmp.path().join(out), &n, ("heun", "18"), w, "5")
    };
    let plain = sample("w0", "0");
    each_class_on_its_mode(&plain, per_class, 0.95, 0.03);
    let guided = sample("w3", "3");
    guidance_raises_the_posterior(&plain, &guided, per_class);
}
