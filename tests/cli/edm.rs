//! EDM's samplers on a trained DDPM model from the command line: Heun takes 2N − 1 network
//! evaluations, Euler N, churn draws other images; the settings are checked by name.

use crate::common::{ddpm, ok, train_tiny, usage_error, write_idx};

#[test]
fn heun_and_euler_sample_a_ddpm_run_and_bad_settings_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    write_idx(&data, 16, 8, 3);
    let spec = format!("idx:{}", data.display());
    let run = tmp.path().join("run").display().to_string();
    ok(train_tiny(&spec, &run, "2", &[]));
    let sample = |name: &str, extra: &[&str]| {
        let out = tmp.path().join(name).display().to_string();
        let mut args = vec![
            "sample",
            "--quiet",
            "--checkpoint",
            &run,
            "--n",
            "3",
            "--steps",
            "6",
            "--seed",
            "4",
            "--safetensors",
            "--out",
            &out,
        ];
        args.extend(extra);
        let o = ok(ddpm(&args));
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        let bytes = std::fs::read(tmp.path().join(name).join("samples.safetensors")).unwrap();
        (stdout, bytes)
    };
    let (heun, heun_images) = sample("heun", &["--sampler", "heun"]);
    assert!(heun.contains("(11 network evaluations)"), "{heun}");
    let (euler, euler_images) = sample("euler", &["--sampler", "euler"]);
    assert!(euler.contains("(6 network evaluations)"), "{euler}");
    assert_ne!(heun_images, euler_images);
    let (_, again) = sample("heun2", &["--sampler", "heun"]);
    assert_eq!(again, heun_images, "a seed gives the same images");
    let (_, churned) = sample("churn", &["--sampler", "heun", "--churn", "20"]);
    assert_ne!(churned, heun_images);
    let fails = |extra: &[&str], needle: &str| {
        let mut args = vec![
            "sample",
            "--checkpoint",
            &run,
            "--n",
            "2",
            "--sampler",
            "heun",
        ];
        args.extend(extra);
        let out = tmp.path().join("bad").display().to_string();
        args.extend(["--out", &out]);
        usage_error(ddpm(&args), needle);
    };
    fails(&["--rho", "0"], "--rho");
    fails(&["--sigma-min", "100"], "--sigma-min");
    fails(&["--churn", "-1"], "--churn");
}
