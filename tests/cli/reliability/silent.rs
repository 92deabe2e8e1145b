//! Round 2, item 5: states and files that would give a silent wrong answer are refused by
//! name: training states no run can reach, bytes changed inside a checkpoint, a guiding
//! classifier of another image size, an edited chain length, a second writer of one --out.

use super::*;

/// `state.json` of the run's checkpoint at `step` with `edit` applied; the resume's error.
fn resume_with_state(f: &Fixture, edit: impl Fn(&mut serde_json::Value)) -> String {
    let r = f.path("r");
    let _ = std::fs::remove_dir_all(&r);
    ok(f.train(&r, "2", &[]));
    let p = ckpt(&r, 2).join("state.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
    fails_with(
        ddpm(&["train", "--quiet", "--out", &r, "--resume", "--steps", "3"]),
        "state.json",
    )
}

#[test]
fn training_states_that_no_run_reaches_are_refused() {
    let f = Fixture::new();
    let e = resume_with_state(&f, |v| v["rng_t"]["s"] = serde_json::json!([0, 0, 0, 0]));
    assert!(e.contains("rng_t") && e.contains("all-zero"), "{e}");
    let e = resume_with_state(&f, |v| {
        v["rng_noise"]["s"] = serde_json::json!([0, 0, 0, 0])
    });
    assert!(e.contains("rng_noise"), "{e}");
    let e = resume_with_state(&f, |v| v["adam_step"] = serde_json::json!(0));
    assert!(e.contains("adam_step 0"), "{e}");
    let e = resume_with_state(&f, |v| v["data"]["epoch"] = serde_json::json!(u64::MAX));
    assert!(e.contains("epoch"), "{e}");
}

#[test]
fn changed_bytes_in_a_checkpoint_are_found() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "2", &[]));
    let state = std::fs::read_to_string(ckpt(&r, 2).join("state.json")).unwrap();
    assert!(state.contains("\"checksums\""), "{state}");
    for (file, cmd) in [
        ("ema.safetensors", "sample"),
        ("model.safetensors", "resume"),
    ] {
        let p = ckpt(&r, 2).join(file);
        let good = std::fs::read(&p).unwrap();
        let mut bad = good.clone();
        // A bit of the last value's mantissa: still a finite weight, so only the checksum can
        // tell.
        let last = bad.len() - 2;
        bad[last] ^= 0x01;
        std::fs::write(&p, &bad).unwrap();
        let o = match cmd {
            "sample" => ddpm(&[
                "sample",
                "--checkpoint",
                &r,
                "--n",
                "1",
                "--out",
                &f.path("s"),
            ]),
            _ => ddpm(&["train", "--quiet", "--out", &r, "--resume", "--steps", "3"]),
        };
        let e = fails_with(o, file);
        assert!(e.contains("CRC-32"), "{e}");
        std::fs::write(&p, &good).unwrap();
    }
    ok(ddpm(&[
        "train", "--quiet", "--out", &r, "--resume", "--steps", "3",
    ]));
}

#[test]
fn an_edited_chain_length_is_refused_by_sample_too() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    let cfg = Path::new(&r).join("config.toml");
    replace_in(&cfg, "timesteps = 50", "timesteps = 60");
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &r,
            "--n",
            "1",
            "--out",
            &f.path("s"),
        ]),
        "config.toml",
    );
    assert!(e.contains("60 steps") && e.contains("trained on 50"), "{e}");
}

#[test]
#[cfg(target_os = "linux")]
fn one_writer_per_sample_folder() {
    use std::os::fd::AsRawFd;
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    let out = f.path("s");
    std::fs::create_dir_all(&out).unwrap();
    // Another process's lock on the folder, as a running `sample` holds it.
    let lock = std::fs::File::create(Path::new(&out).join(".lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let o = ddpm(&["sample", "--checkpoint", &r, "--n", "1", "--out", &out]);
    assert_eq!(o.status.code(), Some(2));
    let e = fails_with(o, "--out");
    assert!(e.contains("another ddpm process"), "{e}");
    drop(lock);
    ok(ddpm(&[
        "sample",
        "--checkpoint",
        &r,
        "--n",
        "2",
        "--steps",
        "2",
        "--quiet",
        "--out",
        &out,
    ]));
    // A temporary left by a killed writer does not stop `eval fd` from reading the folder.
    std::fs::write(Path::new(&out).join("images/.00007.png.tmp99999"), b"half").unwrap();
    let clf = f.path("judge.safetensors");
    f.add_labels();
    ok(ddpm(&[
        "eval",
        "classifier-train",
        "--data",
        &f.data,
        "--out",
        &clf,
    ]));
    let samples = format!("folder:{out}/images");
    ok(ddpm(&[
        "eval",
        "fd",
        "--classifier",
        &clf,
        "--samples",
        &samples,
        "--reference",
        &f.data,
    ]));
}

/// A diffusers scheduler whose steps_offset reaches T used to put every step on the last one
/// while printing the requested count; the count printed is now the count that ran.
#[test]
fn scheduler_offsets_and_step_counts_are_what_runs() {
    let f = Fixture::new();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/tiny-pipeline");
    let d = f.root.join("pipe");
    copy_dir(&src, &d);
    let sched = d.join("scheduler/scheduler_config.json");
    replace_in(&sched, "\"steps_offset\": 0", "\"steps_offset\": 1000");
    let dir = d.display().to_string();
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &dir,
            "--n",
            "1",
            "--steps",
            "3",
            "--out",
            &f.path("a"),
        ]),
        "steps_offset",
    );
    assert!(e.contains("1000"), "{e}");
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    let o = ok(ddpm(&[
        "sample",
        "--checkpoint",
        &r,
        "--n",
        "1",
        "--sampler",
        "ddpm",
        "--respace",
        "7",
        "--quiet",
        "--out",
        &f.path("b"),
    ]));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("(7 network evaluations)"), "{out}");
}

/// A noise-aware classifier of 8×8 images guiding a 28×28 model: refused by name.
#[test]
fn a_guiding_classifier_must_take_the_model_images() {
    let f = Fixture::new();
    f.add_labels();
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    let c = f.path("c");
    ok(ddpm(&[
        "train-classifier",
        "--like",
        &r,
        "--data",
        &f.data,
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--out",
        &c,
    ]));
    let big = f.path("big");
    ok(ddpm(&[
        "train",
        "--quiet",
        "--preset",
        "mnist",
        "--batch-size",
        "2",
        "--steps",
        "1",
        "--timesteps",
        "50",
        "--sample-every",
        "0",
        "--out",
        &big,
    ]));
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &big,
            "--classifier",
            &c,
            "--class",
            "1",
            "--n",
            "1",
            "--out",
            &f.path("s"),
        ]),
        // The older spelling of --guide-classifier is accepted; errors name the flag as it is.
        "--guide-classifier",
    );
    assert!(e.contains("1×8×8") && e.contains("1×28×28"), "{e}");
}
