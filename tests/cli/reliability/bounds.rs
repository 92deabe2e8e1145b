//! Round 2, items 3 and 4: every size a flag or a file controls is bounded, with a clean error
//! naming it (no "capacity overflow" panic, no abort on a giant allocation, no endless run).

use super::*;

const HUGE: &str = "18446744073709551615";

/// A usage error (exit 2) naming `needle`.
fn refused(o: Output, needle: &str) -> String {
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    fails_with(o, needle)
}

#[test]
fn diffusion_steps_are_bounded_everywhere() {
    let f = Fixture::new();
    let r = f.path("r");
    for t in [HUGE, "9223372036854775807", "100001"] {
        let e = refused(ddpm(&["schedule", "--timesteps", t]), "--timesteps");
        assert!(e.contains("100000"), "{e}");
        refused(f.train(&r, "1", &["--timesteps", t]), "--timesteps");
        refused(
            ddpm(&[
                "plot",
                "schedules",
                "--timesteps",
                t,
                "--out",
                &f.path("p.png"),
            ]),
            "--timesteps",
        );
        let time = format!("discrete:{t}");
        refused(
            f.train(&r, "1", &["--schedule", "vdm-linear", "--time", &time]),
            "--time",
        );
    }
    // A learned schedule's chain, discretized at a requested T.
    let l = f.path("l");
    ok(f.train(&l, "1", &["--schedule", "learned"]));
    refused(
        ddpm(&["schedule", "--checkpoint", &l, "--timesteps", "100000000"]),
        "--timesteps",
    );
    refused(
        ddpm(&[
            "plot",
            "schedules",
            "--run",
            &l,
            "--timesteps",
            HUGE,
            "--out",
            &f.path("q.png"),
        ]),
        "--timesteps",
    );
    // t-samples of a VDM bound: K network calls per image.
    refused(
        ddpm(&[
            "eval",
            "nll",
            "--checkpoint",
            &l,
            "--data",
            &f.data,
            "--t-samples",
            "100000000",
        ]),
        "--t-samples",
    );
    // A DDPM chain has T − 1 ranges to draw from: the count printed is the count drawn.
    let o = ok(ddpm(&[
        "eval",
        "nll",
        "--checkpoint",
        &l,
        "--data",
        &f.data,
        "--limit",
        "2",
        "--quiet",
    ]));
    assert!(String::from_utf8_lossy(&o.stdout).contains("1 t-sample(s)"));
    ok(f.train(&r, "1", &[]));
    let o = ok(ddpm(&[
        "eval",
        "nll",
        "--checkpoint",
        &r,
        "--data",
        &f.data,
        "--limit",
        "2",
        "--quiet",
        "--t-samples",
        "5000",
    ]));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("; 49 t-sample(s) per image"), "{out}");
}

#[test]
fn counts_and_batches_are_bounded() {
    let f = Fixture::new();
    for flag in ["--steps", "--warmup", "--batch-size"] {
        let e = refused(ddpm(&["bench", "--preset", "tiny", flag, HUGE]), flag);
        assert!(!e.contains("panicked"), "{e}");
    }
    let e = refused(
        ddpm(&["bench", "--preset", "tiny", "--batch-size", "100000000"]),
        "--batch-size",
    );
    assert!(e.contains("GiB"), "{e}");
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    refused(
        ddpm(&[
            "train-classifier",
            "--like",
            &r,
            "--data",
            &f.data,
            "--steps",
            HUGE,
            "--out",
            &f.path("c"),
        ]),
        "--steps",
    );
    refused(
        ddpm(&[
            "eval",
            "classifier-train",
            "--data",
            &f.data,
            "--epochs",
            HUGE,
            "--out",
            &f.path("j.safetensors"),
        ]),
        "--epochs",
    );
    // P2 weights that would all underflow to 0 (a run that "trains" and learns nothing).
    for (flag, v) in [("--p2-gamma", "1e30"), ("--p2-k", "1e300")] {
        refused(
            f.train(&f.path("p"), "1", &["--weighting", "p2", flag, v]),
            flag,
        );
    }
}

/// Files a user names are read only when they are regular files of a sensible size: a link to
/// /dev/zero used to be read until memory ran out.
#[test]
#[cfg(unix)]
fn named_files_must_be_regular_and_bounded() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    let zero = f.path("zero");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    let schedule = format!("file:{zero}");
    let e = fails_with(
        f.train(&f.path("z"), "1", &["--schedule", &schedule]),
        "--schedule",
    );
    assert!(e.contains("not a regular file"), "{e}");
    let e = refused(
        ddpm(&[
            "sample",
            "--checkpoint",
            &r,
            "--noise",
            &zero,
            "--out",
            &f.path("s"),
        ]),
        "--noise",
    );
    assert!(e.contains("not a regular file"), "{e}");
    // A β file larger than any chain could need.
    let big = f.path("betas.txt");
    std::fs::write(&big, "0.01\n".repeat(4_000_000)).unwrap();
    let e = fails_with(
        f.train(&f.path("b"), "1", &["--schedule", &format!("file:{big}")]),
        "--schedule",
    );
    assert!(e.contains("bytes"), "{e}");
    // A diffusers folder whose config.json is a link to /dev/zero.
    let d = Path::new(&f.root).join("diffusers");
    std::fs::create_dir_all(&d).unwrap();
    std::os::unix::fs::symlink("/dev/zero", d.join("config.json")).unwrap();
    let o = ddpm(&[
        "sample",
        "--checkpoint",
        &d.display().to_string(),
        "--out",
        &f.path("t"),
    ]);
    assert!(matches!(o.status.code(), Some(1 | 2)), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"));
}
