//! Round 2, item 6: each error names what is really at fault — the flag, the key of the file,
//! or the file — not a neighbour of it.

use super::*;

#[test]
fn errors_name_the_flag_key_or_file_at_fault() {
    let f = Fixture::new();
    // VDM γ bounds are γ's, not a β of the schedule.
    let e = fails_with(
        ddpm(&["schedule", "--schedule", "vdm-linear", "--gamma-min", "inf"]),
        "--gamma-min",
    );
    assert!(!e.contains("β_1"), "{e}");
    fails_with(
        ddpm(&[
            "schedule",
            "--schedule",
            "vdm-linear",
            "--gamma-min",
            "5",
            "--gamma-max",
            "1",
        ]),
        "--gamma-min",
    );
    fails_with(
        ddpm(&[
            "schedule",
            "--schedule",
            "vdm-linear",
            "--gamma-min",
            "50",
            "--gamma-max",
            "60",
        ]),
        "--gamma-min",
    );
    // A learned schedule whose γ leaves the range a chain can have, by its file.
    let l = f.path("l");
    ok(f.train(&l, "1", &["--schedule", "learned"]));
    let sched = ckpt(&l, 1).join("schedule.safetensors");
    let mut m = read_safetensors(&sched).unwrap();
    for k in ["ema.gamma0", "w.gamma0"] {
        m.get_mut(k).unwrap().data[0] = 60.0;
    }
    write_tensors(&sched, &m);
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &l,
            "--n",
            "1",
            "--out",
            &f.path("s0"),
        ]),
        "schedule.safetensors",
    );
    assert!(e.contains("γ") && !e.contains("--schedule"), "{e}");
    // A damaged schedule.safetensors of a learned run, by its path.
    std::fs::write(&sched, b"garbage").unwrap();
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &l,
            "--n",
            "1",
            "--out",
            &f.path("s1"),
        ]),
        "schedule.safetensors",
    );
    assert!(!e.contains("--schedule learned"), "{e}");
    // An emptied config.toml is the configuration's fault, not the weights'.
    let r = f.path("r");
    ok(f.train(&r, "1", &[]));
    std::fs::write(Path::new(&r).join("config.toml"), "").unwrap();
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &r,
            "--n",
            "1",
            "--out",
            &f.path("s2"),
        ]),
        "config.toml",
    );
    assert!(!e.contains("safetensors"), "{e}");
    // A flat diffusers folder with a bad config.json: what is wrong with it.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers/tiny-pipeline");
    let flat = f.root.join("flat");
    copy_dir(&src.join("unet"), &flat);
    std::fs::write(flat.join("config.json"), "{bad").unwrap();
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &flat.display().to_string(),
            "--out",
            &f.path("s3"),
        ]),
        "config.json",
    );
    assert!(e.contains("not valid JSON"), "{e}");
    // A scheduler's bad value: its key in its file, not a flag the user never gave.
    let pipe = f.root.join("pipe");
    copy_dir(&src, &pipe);
    let sched = pipe.join("scheduler/scheduler_config.json");
    replace_in(&sched, "\"beta_start\": 0.0001", "\"beta_start\": 5.0");
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &pipe.display().to_string(),
            "--out",
            &f.path("s4"),
        ]),
        "scheduler_config.json: beta_start",
    );
    assert!(!e.contains("--beta-start"), "{e}");
    // A classifier's seed that its classifier.toml could not store: refused before training.
    f.add_labels();
    let r2 = f.path("r2");
    ok(f.train(&r2, "1", &[]));
    let o = ddpm(&[
        "train-classifier",
        "--like",
        &r2,
        "--data",
        &f.data,
        "--seed",
        "18446744073709551615",
        "--out",
        &f.path("c"),
    ]);
    assert_eq!(o.status.code(), Some(2));
    fails_with(o, "--seed");
    assert!(!Path::new(&f.path("c")).exists());
    // A device given as the Inception weights.
    ok(ddpm(&[
        "sample",
        "--checkpoint",
        &r2,
        "--n",
        "2",
        "--steps",
        "2",
        "--quiet",
        "--out",
        &f.path("s"),
    ]));
    let e = fails_with(
        ddpm(&[
            "eval",
            "fid",
            "--samples",
            &format!("folder:{}/images", f.path("s")),
            "--reference",
            &f.data,
            "--inception",
            "/dev/zero",
        ]),
        "--inception",
    );
    assert!(e.contains("not a regular file"), "{e}");
    // An --out that cannot be written is the output's fault, not the checkpoint's.
    let file = f.path("a-file");
    std::fs::write(&file, b"").unwrap();
    let e = fails_with(
        ddpm(&[
            "export",
            "diffusers",
            "--checkpoint",
            &r2,
            "--out",
            &format!("{file}/x"),
        ]),
        "--out",
    );
    assert!(!e.contains("cannot export"), "{e}");
}
