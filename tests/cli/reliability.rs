//! Regression tests for the reliability issue's sixteen findings: where a run writes, what
//! `--resume` accepts, that no non-finite weights are saved or used, that no input panics or
//! runs away, and what an interrupted or disk-full run leaves behind. Tiny model, 8×8 data.

use std::collections::BTreeMap;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::write_idx;
use ddpm::store::tensors::{HostTensor, read_safetensors, to_safetensors};

fn ddpm_in(dir: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ddpm"));
    c.args(args);
    if let Some(d) = dir {
        c.current_dir(d);
    }
    c.output().expect("run ddpm")
}

fn ddpm(args: &[&str]) -> Output {
    ddpm_in(None, args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn ok(o: Output) -> Output {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    o
}

/// A failure with a clear message (exit 1 or 2, never a signal or an abort) containing `needle`.
fn fails_with(o: Output, needle: &str) -> String {
    let e = stderr(&o);
    assert!(
        matches!(o.status.code(), Some(1 | 2)),
        "expected a clean failure, got {:?}: {e}",
        o.status
    );
    assert!(!e.contains("panicked"), "panic: {e}");
    assert!(e.contains(needle), "expected `{needle}` in: {e}");
    e
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: String,
}

impl Fixture {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        write_idx(&root.join("data"), 12, 8, 99);
        let data = format!("idx:{}", root.join("data").display());
        Self {
            _tmp: tmp,
            root,
            data,
        }
    }

    /// Labels for the 12 images (classes 0..=9), for class-conditional runs and classifiers.
    fn add_labels(&self) {
        crate::common::write_idx_labels(
            &self.root.join("data"),
            &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1],
        );
    }

    fn path(&self, name: &str) -> String {
        self.root.join(name).display().to_string()
    }

    /// `ddpm train` of the tiny model with `extra` flags.
    /// `ddpm train` of the tiny model with `extra` flags (which replace the defaults).
    fn train(&self, out: &str, steps: &str, extra: &[&str]) -> Output {
        let defaults = [
            ("--data", self.data.as_str()),
            ("--preset", "tiny"),
            ("--batch-size", "4"),
            ("--timesteps", "50"),
            ("--sample-count", "2"),
            ("--sample-steps", "2"),
            ("--checkpoint-every", "1"),
            ("--steps", steps),
            ("--out", out),
        ];
        let mut a = vec!["train", "--quiet"];
        for (flag, value) in defaults {
            if !extra.contains(&flag) {
                a.extend([flag, value]);
            }
        }
        a.extend_from_slice(extra);
        ddpm(&a)
    }
}

/// Rewrites the text file `path` with `from` replaced by `to` (which must occur).
fn replace_in(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(
        text.contains(from),
        "{}: no `{from}` in {text}",
        path.display()
    );
    std::fs::write(path, text.replace(from, to)).unwrap();
}

fn ckpt(run: &str, step: u64) -> PathBuf {
    Path::new(run)
        .join("checkpoints")
        .join(format!("step-{step:08}"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// Finding 1: `--out` decides where a resumed run writes, not the `out` saved in `config.toml`, and a
/// run made with a relative `--out` resumes from anywhere given its absolute path.
#[test]
fn resume_writes_into_out_not_the_saved_run() {
    let f = Fixture::new();
    // A relative --out, from inside the fixture.
    let o = ddpm_in(
        Some(&f.root),
        &[
            "train",
            "--quiet",
            "--data",
            &f.data,
            "--preset",
            "tiny",
            "--batch-size",
            "4",
            "--timesteps",
            "50",
            "--sample-count",
            "2",
            "--sample-steps",
            "2",
            "--steps",
            "2",
            "--out",
            "orig",
        ],
    );
    ok(o);
    let (orig, copy) = (f.path("orig"), f.path("copy"));
    copy_dir(Path::new(&orig), Path::new(&copy));
    let o = ok(ddpm_in(
        Some(Path::new("/")),
        &[
            "train", "--quiet", "--out", &copy, "--resume", "--steps", "3",
        ],
    ));
    assert!(String::from_utf8_lossy(&o.stdout).contains(&copy));
    assert!(ckpt(&copy, 3).is_dir(), "step 3 not in the copy");
    assert!(!ckpt(&orig, 3).exists(), "step 3 written into the original");
    // The original resumes from / by its absolute path.
    ok(ddpm_in(
        Some(Path::new("/")),
        &[
            "train", "--quiet", "--out", &orig, "--resume", "--steps", "3",
        ],
    ));
    assert!(ckpt(&orig, 3).is_dir());
}

/// Finding 2: Diverged weights are never checkpointed; the error names the last finite checkpoint.
#[test]
fn non_finite_weights_are_never_checkpointed() {
    let f = Fixture::new();
    let r = f.path("r");
    let e = fails_with(
        f.train(&r, "1", &["--lr", "1e39", "--warmup-steps", "0"]),
        "non-finite weights after the update of step 1",
    );
    assert!(e.contains("none (no checkpoint was written yet)"), "{e}");
    assert!(!ckpt(&r, 1).exists());
    let g = f.path("g");
    ok(f.train(&g, "2", &[]));
    let e = fails_with(
        ddpm(&[
            "train",
            "--quiet",
            "--out",
            &g,
            "--resume",
            "--steps",
            "5",
            "--lr",
            "1e39",
            "--warmup-steps",
            "0",
        ]),
        "non-finite weights after the update of step 3",
    );
    assert!(e.contains("step-00000002"), "{e}");
    assert!(!ckpt(&g, 3).exists());
    // The failed segment's --lr was not saved: the run resumes as it was made.
    let saved = std::fs::read_to_string(Path::new(&g).join("config.toml")).unwrap();
    assert!(saved.contains("lr = 0.001"), "{saved}");
    ok(ddpm(&[
        "train", "--quiet", "--out", &g, "--resume", "--steps", "3",
    ]));
    // Without its config.toml a run is not resumed on guesses.
    std::fs::remove_file(Path::new(&g).join("config.toml")).unwrap();
    fails_with(
        ddpm(&["train", "--quiet", "--out", &g, "--resume", "--steps", "4"]),
        "config.toml is missing",
    );
}

/// Finding 3: Flags on `--resume`: what may change between segments is applied and said; the rest is
/// refused by name.
#[test]
fn resume_applies_or_refuses_every_flag() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "2", &[]));
    for (flag, value) in [
        ("--seed", "5"),
        ("--batch-size", "2"),
        ("--preset", "mnist"),
        ("--schedule", "cosine"),
        ("--timesteps", "60"),
        ("--variance", "fixed-small"),
        ("--loss", "vlb"),
        ("--t-sampler", "loss-second-moment"),
    ] {
        let e = fails_with(
            ddpm(&[
                "train", "--quiet", "--out", &r, "--resume", "--steps", "3", flag, value,
            ]),
            flag,
        );
        assert!(e.contains("cannot change"), "{flag}: {e}");
    }
    assert!(!ckpt(&r, 3).exists());
    let o = ok(ddpm(&[
        "train",
        "--out",
        &r,
        "--resume",
        "--steps",
        "3",
        "--lr",
        "2e-4",
        "--ema-decay",
        "0.99",
    ]));
    let e = stderr(&o);
    assert!(e.contains("resume: --lr: 0.001 → 0.0002"), "{e}");
    assert!(e.contains("resume: --ema-decay"), "{e}");
    let saved = std::fs::read_to_string(Path::new(&r).join("config.toml")).unwrap();
    assert!(saved.contains("lr = 0.0002"), "{saved}");
    // Giving a fixed key its saved value is no change.
    ok(ddpm(&[
        "train", "--quiet", "--out", &r, "--resume", "--steps", "4", "--seed", "0",
    ]));
}

/// Writes `m` to `path`; in a checkpoint, also records the file's new checksum in its
/// `state.json`, as a tool that rewrites checkpoints consistently would (so that what is tested
/// is the refusal of the contents, not of the changed bytes).
fn write_tensors(path: &Path, m: &BTreeMap<String, HostTensor>) {
    let bytes = to_safetensors(m).unwrap();
    std::fs::write(path, &bytes).unwrap();
    let state = path.with_file_name("state.json");
    if let Ok(text) = std::fs::read_to_string(&state) {
        let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let name = path.file_name().unwrap().to_str().unwrap();
        if v["checksums"].get(name).is_some() {
            v["checksums"][name] = ddpm::store::tensors::checksum(&bytes).into();
            std::fs::write(&state, v.to_string()).unwrap();
        }
    }
}

/// Findings 4, 5, 11: Empty, partial, mis-shaped or non-finite EMA / optimizer state is refused by file
/// name, never silently restarted, never a panic.
#[test]
fn damaged_saved_state_is_refused_by_name() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "2", &[]));
    let c = ckpt(&r, 2);
    let resume = || ddpm(&["train", "--quiet", "--out", &r, "--resume", "--steps", "3"]);
    for file in [
        "ema.safetensors",
        "optimizer.safetensors",
        "model.safetensors",
    ] {
        let p = c.join(file);
        let good = std::fs::read(&p).unwrap();
        let good_state = std::fs::read(c.join("state.json")).unwrap();
        let m = read_safetensors(&p).unwrap();
        std::fs::write(&p, b"").unwrap();
        fails_with(resume(), file);
        // Partial: one tensor missing.
        let mut partial = m.clone();
        let gone = partial.keys().next().unwrap().clone();
        partial.remove(&gone);
        write_tensors(&p, &partial);
        fails_with(resume(), file);
        // Another configuration: one tensor of twice the size.
        let mut other = m.clone();
        let t = other.values_mut().next().unwrap();
        let doubled: Vec<f32> = t.data.iter().chain(&t.data).copied().collect();
        t.shape = vec![doubled.len()];
        t.data = doubled;
        write_tensors(&p, &other);
        fails_with(resume(), file);
        // Not finite.
        let mut nan = m.clone();
        nan.values_mut().last().unwrap().data[0] = f32::NAN;
        write_tensors(&p, &nan);
        let e = fails_with(resume(), file);
        assert!(e.contains("non-finite"), "{e}");
        std::fs::write(&p, &good).unwrap();
        std::fs::write(c.join("state.json"), &good_state).unwrap();
    }
    ok(resume());
    // 11: sampling and the likelihood refuse a NaN weight by name instead of printing NaN.
    let p = ckpt(&r, 3).join("ema.safetensors");
    let mut m = read_safetensors(&p).unwrap();
    let (name, t) = m.iter_mut().next().unwrap();
    let name = name.clone();
    t.data[0] = f32::INFINITY;
    write_tensors(&p, &m);
    let out = f.path("samples");
    let e = fails_with(
        ddpm(&[
            "sample",
            "--quiet",
            "--checkpoint",
            &r,
            "--n",
            "2",
            "--steps",
            "2",
            "--out",
            &out,
        ]),
        &name,
    );
    assert!(e.contains("non-finite"), "{e}");
    fails_with(
        ddpm(&[
            "eval",
            "nll",
            "--quiet",
            "--checkpoint",
            &r,
            "--data",
            &f.data,
            "--limit",
            "2",
        ]),
        &name,
    );
}

/// Finding 6: A damaged `state.json` is an error naming the file.
#[test]
fn damaged_state_json_is_refused() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "2", &[]));
    let p = ckpt(&r, 2).join("state.json");
    let good = std::fs::read_to_string(&p).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
    v["data"]["offset"] = serde_json::json!(1_000_000_000_000_000u64);
    std::fs::write(&p, v.to_string()).unwrap();
    let e = fails_with(
        ddpm(&["train", "--quiet", "--out", &r, "--resume", "--steps", "3"]),
        "state.json",
    );
    assert!(e.contains("data.offset"), "{e}");
    std::fs::write(&p, "{").unwrap();
    fails_with(
        ddpm(&["train", "--quiet", "--out", &r, "--resume", "--steps", "3"]),
        "state.json",
    );
}

/// Findings 7, 8, 9, 12: Out-of-range numbers are usage errors naming the flag; a batch that cannot fit
/// in memory is refused with an estimate; a huge sample grid is refused.
#[test]
fn numbers_out_of_range_are_named() {
    let f = Fixture::new();
    let r = f.path("r");
    let huge = "18446744073709551615";
    for (flag, value, needle) in [
        ("--warmup-steps", huge, "at most"),
        ("--steps", "9223372036854775808", "at most"),
        ("--seed", huge, "at most"),
        ("--grad-clip", "NaN", "positive"),
        ("--adam-eps", "-1", "positive"),
        ("--adam-beta1", "2", "[0, 1)"),
        ("--weight-decay", "-10", "≥ 0"),
        ("--ema-warmup-power", "NaN", "≥ 0"),
        ("--lr", "inf", "positive"),
        ("--dropout", "1.5", "[0, 1)"),
        ("--sample-count", "10000000", "1..=1024"),
    ] {
        let o = f.train(&r, "1", &[flag, value]);
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: {}", stderr(&o));
        let e = fails_with(o, flag);
        assert!(e.contains(needle), "{flag}: {e}");
    }
    let e = fails_with(
        f.train(&r, "1", &["--batch-size", "100000000"]),
        "--batch-size",
    );
    assert!(e.contains("GiB"), "{e}");
    assert!(!Path::new(&r).join("checkpoints").exists());
    // Sampling and evaluation flags.
    ok(f.train(&r, "1", &[]));
    for eta in ["inf", "NaN", "-1", "5"] {
        let out = f.path("s");
        let o = ddpm(&["sample", "--checkpoint", &r, "--eta", eta, "--out", &out]);
        assert_eq!(o.status.code(), Some(2));
        fails_with(o, "--eta");
    }
    let out = f.path("s");
    let e = fails_with(
        ddpm(&[
            "sample",
            "--checkpoint",
            &r,
            "--n",
            "100000000000",
            "--out",
            &out,
        ]),
        "--n",
    );
    assert!(e.contains("GiB"), "{e}");
    let o = ddpm(&[
        "eval",
        "nll",
        "--checkpoint",
        &r,
        "--data",
        &f.data,
        "--limit",
        "0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    fails_with(o, "--limit");
}

/// Finding 13: I/O errors name the file and what was being done.
#[test]
fn io_errors_name_the_path() {
    let f = Fixture::new();
    let r = f.path("r");
    std::fs::create_dir_all(&r).unwrap();
    std::fs::write(Path::new(&r).join("checkpoints"), b"not a directory").unwrap();
    let e = fails_with(f.train(&r, "1", &[]), "checkpoints");
    assert!(e.contains("cannot"), "{e}");
}

/// Findings 14, 15: Leftovers of interrupted writes are removed at the next start; resume takes the
/// newest complete checkpoint whatever `latest` says; incomplete ones are never chosen, and a
/// plain `train` never overwrites a run with checkpoints.
#[test]
fn interrupted_writes_are_recovered() {
    let f = Fixture::new();
    let r = f.path("r");
    ok(f.train(&r, "3", &[]));
    let cks = Path::new(&r).join("checkpoints");
    // A plain train refuses to touch a run with checkpoints.
    fails_with(f.train(&r, "4", &[]), "--resume");
    // Leftovers of a dead process (a pid above any pid_max).
    let dead = 999_999_999u32;
    std::fs::create_dir(cks.join(format!(".tmp-step-00000004-{dead}"))).unwrap();
    std::fs::create_dir(cks.join(format!(".trash-step-00000001-{dead}"))).unwrap();
    std::fs::write(cks.join(format!(".latest.tmp{dead}")), b"step-0").unwrap();
    std::fs::write(Path::new(&r).join(format!(".config.toml.tmp{dead}")), b"x").unwrap();
    // `latest` missing: a kill after the checkpoint's rename, before `latest` was written.
    std::fs::remove_file(cks.join("latest")).unwrap();
    // A newer step directory missing files (left by an older version's pruning): ignored.
    copy_dir(&ckpt(&r, 3), &ckpt(&r, 9));
    std::fs::remove_file(ckpt(&r, 9).join("optimizer.safetensors")).unwrap();
    let o = ok(ddpm(&["train", "--out", &r, "--resume", "--steps", "4"]));
    let e = stderr(&o);
    assert!(e.contains("step-00000003 at step 3"), "{e}");
    assert!(e.contains("leftover"), "{e}");
    let names: Vec<String> = std::fs::read_dir(&cks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    assert!(
        !Path::new(&r)
            .join(format!(".config.toml.tmp{dead}"))
            .exists()
    );
    assert_eq!(
        std::fs::read_to_string(cks.join("latest")).unwrap().trim(),
        "step-00000004"
    );
    // `latest` stale (names an older checkpoint): the newest complete one is resumed.
    std::fs::write(cks.join("latest"), "step-00000003\n").unwrap();
    let o = ok(ddpm(&["train", "--out", &r, "--resume", "--steps", "5"]));
    assert!(
        stderr(&o).contains("step-00000004 at step 4"),
        "{}",
        stderr(&o)
    );
}

/// Mounts a tmpfs of `bytes` at a new directory, unmounting it when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, bytes: usize) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(dir)
            .output()
            .ok()?;
        st.status.success().then(|| Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Finding 16: A run stopped by a full disk resumes once space is free: the failed checkpoint leaves
/// no temporary files to fill the disk again.
#[test]
fn a_full_disk_stops_cleanly_and_resumes_after() {
    let f = Fixture::new();
    let mnt = f.root.join("small");
    let Some(fs) = Tmpfs::mount(&mnt, 4 << 20) else {
        eprintln!("cannot mount a tmpfs here (needs root): disk-full test not run");
        return;
    };
    let r = mnt.join("r").display().to_string();
    ok(f.train(&r, "2", &["--keep-checkpoints", "2"]));
    // Fill what is left of the disk.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 4096];
        while file.write_all(&chunk).is_ok() {}
    }
    let resume = || {
        ddpm(&[
            "train",
            "--quiet",
            "--out",
            &r,
            "--resume",
            "--steps",
            "40",
            "--keep-checkpoints",
            "2",
        ])
    };
    let e = fails_with(resume(), "No space left on device");
    assert!(e.contains(&r), "{e}");
    std::fs::remove_file(&filler).unwrap();
    ok(resume());
    assert!(ckpt(&r, 40).is_dir());
    let leftovers: Vec<_> = std::fs::read_dir(Path::new(&r).join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    drop(fs);
}

mod bounds;
mod flag_fuzz;
/// Round 2 of the reliability findings, by topic.
mod memory;
mod messages;
mod non_finite;
mod silent;
