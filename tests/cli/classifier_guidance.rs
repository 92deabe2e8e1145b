//! Classifier guidance end to end on a tiny labelled image set (class k: a bright k-th row):
//! `ddpm train-classifier`, then `sample`, `plot chain` and `eval guidance` guided by it, and the
//! errors a user meets on the way.

use std::path::Path;

use crate::common::{ddpm, ok, usage_error, write_idx_labels};

/// `n` 8×8 images of `classes` classes (class k: row k bright) and their labels, in `dir`.
fn rows_dataset(dir: &Path, n: u32, classes: u32) -> String {
    std::fs::create_dir_all(dir).unwrap();
    let mut img = Vec::new();
    for x in [0x0803u32, n, 8, 8] {
        img.extend(x.to_be_bytes());
    }
    let mut lab = Vec::new();
    for i in 0..n {
        let k = (i % classes) as usize;
        img.extend((0..64).map(|p| if p / 8 == 2 * k { 250u8 } else { 5 }));
        lab.push(k as u8);
    }
    std::fs::write(dir.join("train-images-idx3-ubyte"), img).unwrap();
    write_idx_labels(dir, &lab);
    format!("idx:{}", dir.display())
}

fn train_tiny(spec: &str, run: &str, extra: &[&str]) {
    let mut a = vec![
        "train",
        "--quiet",
        "--data",
        spec,
        "--preset",
        "tiny",
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--timesteps",
        "50",
        "--sample-count",
        "4",
        "--sample-steps",
        "2",
        "--out",
        run,
    ];
    a.extend(extra);
    ok(ddpm(&a));
}

/// The losses a train-classifier run logged, in order.
fn logged_losses(stderr: &str) -> Vec<f64> {
    stderr
        .lines()
        .filter_map(|l| l.split("loss ").nth(1))
        .filter_map(|r| r.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn classifier_guidance_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = rows_dataset(&tmp.path().join("d"), 64, 4);
    let run = tmp.path().join("r").display().to_string();
    train_tiny(&spec, &run, &[]);
    let clf = tmp.path().join("clf").display().to_string();
    let o = ok(ddpm(&[
        "train-classifier",
        "--like",
        &run,
        "--steps",
        "120",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--warmup-steps",
        "10",
        "--log-every",
        "20",
        "--out",
        &clf,
    ]));
    // It learns: the noisy-batch cross-entropy falls well below chance (ln 4 = 1.39).
    let losses = logged_losses(&String::from_utf8_lossy(&o.stderr));
    assert_eq!(losses.len(), 6, "{losses:?}");
    assert!(losses[0] > 1.2, "{losses:?}");
    assert!(losses[5] < 0.9 * losses[0], "{losses:?}");
    let toml = std::fs::read_to_string(Path::new(&clf).join("classifier.toml")).unwrap();
    assert!(toml.contains("timesteps = 50"), "{toml}");
    assert!(toml.contains(r#"classes = ["0", "1", "2", "3"]"#), "{toml}");
    // A second run into the same directory is refused: nothing written is lost.
    let o = ddpm(&[
        "train-classifier",
        "--like",
        &run,
        "--steps",
        "1",
        "--out",
        &clf,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already there"));

    // Guided sampling, one grid row per class, with every sampler.
    for sampler in ["ddim", "ddpm", "dpmpp2m"] {
        let out = tmp.path().join(format!("s-{sampler}"));
        ok(ddpm(&[
            "sample",
            "--quiet",
            "--checkpoint",
            &run,
            "--guide-classifier",
            &clf,
            "--classifier-scale",
            "3",
            "--class",
            "all",
            "--n",
            "8",
            "--sampler",
            sampler,
            "--steps",
            "5",
            "--out",
            &out.display().to_string(),
        ]));
        // One sub-directory per class, two images each.
        for k in 0..4 {
            let class = out.join("images").join(k.to_string());
            assert_eq!(std::fs::read_dir(&class).unwrap().count(), 2, "{class:?}");
        }
        assert!(out.join("grid.png").exists());
    }
    // A second call into the same --out would mix its images with these: refused.
    let again = ddpm(&[
        "sample",
        "--quiet",
        "--checkpoint",
        &run,
        "--n",
        "2",
        "--steps",
        "2",
        "--out",
        &tmp.path().join("s-ddim").display().to_string(),
    ]);
    usage_error(again, "already holds images");
    // Per-class Fréchet distances of those samples against the data's classes.
    let judge = tmp.path().join("judge.safetensors").display().to_string();
    ok(ddpm(&[
        "eval",
        "classifier-train",
        "--data",
        &spec,
        "--out",
        &judge,
    ]));
    let images = format!(
        "folder:{}",
        tmp.path().join("s-ddim").join("images").display()
    );
    let o = ok(ddpm(&[
        "eval",
        "fd",
        "--judge",
        &judge,
        "--samples",
        &images,
        "--reference",
        &spec,
        "--per-class",
        "--json",
    ]));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let rows = j["per_class"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{j}");
    for (k, r) in rows.iter().enumerate() {
        assert_eq!(r["class"], k.to_string());
        assert_eq!(r["n_samples"], 2);
        assert_eq!(r["n_reference"], 16);
        assert!(r["fd"].as_f64().unwrap().is_finite());
    }
    assert_eq!(j["n_samples"], 8);
    // Samples without classes cannot be compared class by class.
    let plain = tmp.path().join("plain");
    ok(ddpm(&[
        "sample",
        "--quiet",
        "--checkpoint",
        &run,
        "--n",
        "3",
        "--steps",
        "2",
        "--out",
        &plain.display().to_string(),
    ]));
    let o = ddpm(&[
        "eval",
        "fd",
        "--classifier",
        &judge,
        "--samples",
        &format!("folder:{}", plain.join("images").display()),
        "--reference",
        &spec,
        "--per-class",
    ]);
    usage_error(o, "no classes");
    let chain = tmp.path().join("chain.png");
    ok(ddpm(&[
        "plot",
        "chain",
        "--checkpoint",
        &run,
        "--guide-classifier",
        &clf,
        "--class",
        "1",
        "--n",
        "2",
        "--steps",
        "5",
        "--out",
        &chain.display().to_string(),
    ]));
    assert!(chain.exists());

    // The scale sweep of an unconditional model, judged by the reference classifier.
    let plot = tmp.path().join("t.png");
    let o = ok(ddpm(&[
        "eval",
        "guidance",
        "--quiet",
        "--checkpoint",
        &run,
        "--guide-classifier",
        &clf,
        "--classifier-scale",
        "0,2",
        "--classifier",
        &judge,
        "--reference",
        &spec,
        "--per-class",
        "2",
        "--steps",
        "3",
        "--json",
        "--plot",
        &plot.display().to_string(),
    ]));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    for (r, s) in rows.iter().zip([0.0, 2.0]) {
        assert_eq!(r["classifier_scale"].as_f64(), Some(s));
        assert_eq!(r["w"].as_f64(), Some(0.0));
        assert_eq!(r["n"].as_u64(), Some(8));
    }
    assert!(plot.exists());
}

#[test]
fn classifier_guidance_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = rows_dataset(&tmp.path().join("d"), 16, 2);
    let run = tmp.path().join("r").display().to_string();
    train_tiny(&spec, &run, &[]);
    let clf = tmp.path().join("clf").display().to_string();
    ok(ddpm(&[
        "train-classifier",
        "--like",
        &run,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--out",
        &clf,
    ]));
    let out = tmp.path().join("s").display().to_string();
    let sample = |extra: &[&str]| {
        let mut a = vec![
            "sample",
            "--quiet",
            "--checkpoint",
            &run,
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            &out,
        ];
        a.extend(extra);
        ddpm(&a)
    };
    usage_error(sample(&["--classifier", &clf]), "need --class");
    usage_error(
        sample(&["--class", "0"]),
        "guide it with --guide-classifier",
    );
    usage_error(
        sample(&["--classifier", &clf, "--class", "0", "--guidance", "1"]),
        "need a class-conditional model",
    );
    usage_error(
        sample(&["--classifier", &clf, "--class", "2"]),
        "classes 0..=1",
    );
    usage_error(
        sample(&[
            "--classifier",
            &clf,
            "--class",
            "0",
            "--classifier-scale",
            "-1",
        ]),
        "--classifier-scale",
    );
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    usage_error(
        sample(&["--classifier", &empty.display().to_string(), "--class", "0"]),
        "classifier.toml",
    );
    // A classifier of another schedule would see other noise levels at the same t.
    let other = tmp.path().join("clf60").display().to_string();
    ok(ddpm(&[
        "train-classifier",
        "--like",
        &run,
        "--timesteps",
        "60",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--out",
        &other,
    ]));
    usage_error(
        sample(&["--classifier", &other, "--class", "0"]),
        "not the model's schedule",
    );
    // A class-conditional model guided by a classifier of other classes.
    let spec3 = rows_dataset(&tmp.path().join("d3"), 12, 3);
    let cond = tmp.path().join("c").display().to_string();
    train_tiny(&spec3, &cond, &["--class-cond"]);
    let o = ddpm(&[
        "sample",
        "--quiet",
        "--checkpoint",
        &cond,
        "--classifier",
        &clf,
        "--class",
        "0",
        "--n",
        "2",
        "--steps",
        "2",
        "--out",
        &out,
    ]);
    usage_error(o, "are not the model's");
    // Data without labels, or not images.
    for (data, needle) in [
        ("toy:swiss-roll", "no labels"),
        ("toy:two-moons", "square images"),
    ] {
        let o = ddpm(&[
            "train-classifier",
            "--data",
            data,
            "--out",
            &tmp.path().join("x").display().to_string(),
        ]);
        usage_error(o, needle);
    }
}
