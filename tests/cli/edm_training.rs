//! EDM training from the command line (`--objective edm`): the run records its `[edm]`
//! settings, resumes bit-identically, samples with every sampler, has a bound, and refuses what
//! does not apply to it.

use std::path::Path;

use crate::common::{ddpm, ok, train_tiny, usage_error, write_idx};

fn train(spec: &str, out: &str, steps: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--objective", "edm", "--checkpoint-every", "2"];
    args.extend(extra);
    train_tiny(spec, out, steps, &args)
}

#[test]
fn an_edm_run_trains_resumes_samples_and_refuses_what_does_not_apply() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    write_idx(&data, 16, 8, 5);
    let spec = format!("idx:{}", data.display());
    let whole = tmp.path().join("whole").display().to_string();
    ok(train(
        &spec,
        &whole,
        "4",
        &["--p-mean", "-1.0", "--sigma-data", "0.6"],
    ));
    let cfg = std::fs::read_to_string(Path::new(&whole).join("config.toml")).unwrap();
    assert!(
        cfg.contains("[edm]") && cfg.contains("sigma_data = 0.6"),
        "{cfg}"
    );
    assert!(cfg.contains("p_mean = -1.0"), "{cfg}");
    let log = std::fs::read_to_string(Path::new(&whole).join("log.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let loss = first["loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{first}");

    // Two steps, then two more after a resume: the same weights as four at once.
    let parts = tmp.path().join("parts").display().to_string();
    let edm = ["--p-mean", "-1.0", "--sigma-data", "0.6"];
    ok(train(&spec, &parts, "2", &edm));
    let mut resumed = edm.to_vec();
    resumed.push("--resume");
    ok(train(&spec, &parts, "4", &resumed));
    // The objective is the run's: another is refused by name.
    let o = train_tiny(&spec, &parts, "6", &["--objective", "ddpm", "--resume"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--objective edm") && e.contains("cannot change"),
        "{e}"
    );
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        let a = std::fs::read(Path::new(&whole).join("checkpoints/step-00000004").join(f));
        let b = std::fs::read(Path::new(&parts).join("checkpoints/step-00000004").join(f));
        assert_eq!(a.unwrap(), b.unwrap(), "{f} differs after a resume");
    }

    for (sampler, steps) in [
        ("heun", "5"),
        ("ddim", "6"),
        ("dpmpp2m", "6"),
        ("ddpm", "1000"),
    ] {
        let out = tmp.path().join(sampler).display().to_string();
        let o = ok(ddpm(&[
            "sample",
            "--quiet",
            "--checkpoint",
            &whole,
            "--n",
            "3",
            "--sampler",
            sampler,
            "--steps",
            steps,
            "--out",
            &out,
        ]));
        assert!(
            Path::new(&out).join("grid.png").is_file(),
            "{sampler}: {o:?}"
        );
    }
    let o = ok(ddpm(&[
        "eval",
        "nll",
        "--checkpoint",
        &whole,
        "--data",
        &spec,
        "--limit",
        "4",
        "--json",
        "--quiet",
    ]));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let bpd = r["bpd"].as_f64().unwrap();
    assert!(bpd.is_finite() && bpd > 0.0, "{r}");

    // Mixed precision: the network in bfloat16 inside the f32 preconditioning.
    let bf16 = tmp.path().join("bf16").display().to_string();
    ok(train(&spec, &bf16, "2", &["--precision", "bf16"]));
    let log = std::fs::read_to_string(Path::new(&bf16).join("log.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert!(last["loss"].as_f64().unwrap().is_finite(), "{last}");

    let hf = tmp.path().join("hf").display().to_string();
    usage_error(
        ddpm(&["export", "diffusers", "--checkpoint", &whole, "--out", &hf]),
        "EDM run",
    );
    let bad = tmp.path().join("bad").display().to_string();
    usage_error(train(&spec, &bad, "2", &["--loss", "hybrid"]), "--loss");
    usage_error(
        train(&spec, &bad, "2", &["--parameterization", "v"]),
        "--parameterization",
    );
    usage_error(train(&spec, &bad, "2", &["--p-std", "0"]), "--p-std");
    usage_error(
        ddpm(&[
            "train", "--data", &spec, "--preset", "tiny", "--p-std", "1", "--out", &bad,
        ]),
        "--objective edm",
    );
    assert!(!Path::new(&bad).exists());
}
