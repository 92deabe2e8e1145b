//! Training and sampling on several MPI processes (`--features mpi`, with `mpirun` on the
//! PATH): N ranks train as one process does, resume across different N, sample the same images
//! for any N, and stop together when one rank fails.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ddpm::store::tensors::read_safetensors;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ddpm")
}

/// `mpirun` with what a root-run, core-starved CI machine needs (Open MPI's flags; MPICH takes
/// none), and one CPU thread per rank: the CPU kernels may split a sum differently with another
/// thread count, which can move a pixel by one level, so images are compared at equal threads.
fn mpirun() -> Command {
    let mut c = Command::new("mpirun");
    c.env("RAYON_NUM_THREADS", "1");
    let version = Command::new("mpirun").arg("--version").output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("Open MPI")) {
        c.args([
            "--oversubscribe",
            "--bind-to",
            "none",
            "-x",
            "RAYON_NUM_THREADS",
        ]);
        c.env("OMPI_ALLOW_RUN_AS_ROOT", "1");
        c.env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        c.env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    }
    c
}

fn on(n: usize, args: &[&str]) -> Output {
    let o = mpirun()
        .args(["-np", &n.to_string(), bin()])
        .args(args)
        .output()
        .expect("run mpirun");
    assert!(
        o.status.success(),
        "{n} ranks: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn tiny(data: &str, out: &str, steps: &str, batch: &str) -> Vec<String> {
    [
        "train",
        "--quiet",
        "--data",
        data,
        "--preset",
        "tiny",
        "--steps",
        steps,
        "--batch-size",
        batch,
        "--timesteps",
        "50",
        "--checkpoint-every",
        "10",
        "--sample-every",
        "0",
        "--sample-count",
        "4",
        "--sample-steps",
        "2",
        "--out",
        out,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `n` random 8×8 images (from `seed`) in `dir`/d and a tiny model trained on them for 2 steps
/// in `dir`/r, by one process: the data specification and the run.
fn trained(dir: &Path, n: u32, seed: u32) -> (String, String) {
    let d = dir.join("d");
    common::write_idx(&d, n, 8, seed);
    let data = format!("idx:{}", d.display());
    let r = dir.join("r").display().to_string();
    let o = Command::new(bin())
        .args(tiny(&data, &r, "2", "4"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    (data, r)
}

/// The largest difference between the weights (and EMA weights) of two checkpoints.
fn max_difference(a: &Path, b: &Path) -> f32 {
    let mut worst = 0.0f32;
    for file in ["model.safetensors", "ema.safetensors"] {
        let (x, y) = (
            read_safetensors(&a.join(file)).unwrap(),
            read_safetensors(&b.join(file)).unwrap(),
        );
        assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
        for (k, t) in &x {
            for (p, q) in t.data.iter().zip(&y[k].data) {
                worst = worst.max((p - q).abs());
            }
        }
    }
    worst
}

fn ckpt(run: &Path, step: u32) -> std::path::PathBuf {
    run.join("checkpoints").join(format!("step-{step:08}"))
}

/// Weights after 20 AdamW steps of N ranks and of one process differ only by the order of the
/// f32 sums of the gradient (rank partial sums added, instead of one sum over the batch):
/// relative differences of ~1e-7 per step, which Adam's scale-free update m/√v turns into
/// weight differences of about lr · 1e-7 per step; 1e-5 allows a hundred times that over 20
/// steps, and a wrong split (a rank's rows lost or counted twice) moves weights by ~1e-3.
const TOLERANCE: f32 = 1e-5;

#[test]
fn ranks_train_as_one_process_and_resume_across_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    common::write_idx(&d, 48, 8, 5);
    let data = format!("idx:{}", d.display());
    let run = |name: &str| tmp.path().join(name);
    let s = |p: &Path| p.display().to_string();
    let one = run("one");
    let o = Command::new(bin())
        .args(tiny(&data, &s(&one), "20", "6"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for n in [2usize, 3] {
        let r = run(&format!("n{n}"));
        let args = tiny(&data, &s(&r), "20", "6");
        on(n, &args.iter().map(String::as_str).collect::<Vec<_>>());
        let diff = max_difference(&ckpt(&one, 20), &ckpt(&r, 20));
        assert!(diff < TOLERANCE, "{n} ranks: weights differ by {diff}");
        // Only rank 0 wrote: one log line per logged step.
        let log = std::fs::read_to_string(r.join("log.jsonl")).unwrap();
        assert_eq!(log.lines().count(), 2, "{log}");
        assert!(log.contains("allreduce_s"));
    }
    // 2 ranks for 10 steps, then 1 to 20; 1 for 10, then 2 to 20.
    for (first, second, name) in [(2usize, 1usize, "2-then-1"), (1, 2, "1-then-2")] {
        let r = run(name);
        let a10 = tiny(&data, &s(&r), "10", "6");
        let mut a20 = tiny(&data, &s(&r), "20", "6");
        a20.push("--resume".into());
        for (n, args) in [(first, a10), (second, a20)] {
            on(n, &args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        let diff = max_difference(&ckpt(&one, 20), &ckpt(&r, 20));
        assert!(diff < TOLERANCE, "{name}: weights differ by {diff}");
    }
}

/// An EDM run tracking post-hoc EMA averages trains on 2 ranks as on one process: the weights,
/// the EMA and the power-function averages alike; only rank 0 writes the snapshots.
#[test]
fn edm_with_posthoc_ema_trains_on_ranks_as_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    common::write_idx(&d, 48, 8, 7);
    let data = format!("idx:{}", d.display());
    let args = |out: &Path| {
        let mut a = tiny(&data, &out.display().to_string(), "20", "6");
        for s in [
            "--objective",
            "edm",
            "--posthoc-ema",
            "0.05,0.10",
            "--snapshot-every",
            "5",
        ] {
            a.push(s.into());
        }
        a
    };
    let one = tmp.path().join("one");
    let o = Command::new(bin()).args(args(&one)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let two = tmp.path().join("two");
    on(
        2,
        &args(&two).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let diff = max_difference(&ckpt(&one, 20), &ckpt(&two, 20));
    assert!(diff < TOLERANCE, "weights differ by {diff}");
    let power =
        |run: &Path| read_safetensors(&ckpt(run, 20).join("power-ema-0.100.safetensors")).unwrap();
    let (a, b) = (power(&one), power(&two));
    for (k, t) in &a {
        for (p, q) in t.data.iter().zip(&b[k].data) {
            assert!((p - q).abs() < TOLERANCE, "{k}: {p} vs {q}");
        }
    }
    let snaps = std::fs::read_dir(two.join("posthoc")).unwrap().count();
    assert_eq!(snaps, 4, "snapshots at steps 5, 10, 15, 20");
}

#[test]
fn sampling_on_any_number_of_ranks_writes_the_same_images() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, r) = trained(tmp.path(), 16, 3);
    let read = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path();
                (
                    p.file_name().unwrap().to_string_lossy().to_string(),
                    std::fs::read(&p).unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let mut outputs = Vec::new();
    // 1, 2 and 3 ranks at batch 3; one rank at batch 11 (image i's noise is its own).
    for (n, batch) in [(1usize, "3"), (2, "3"), (3, "3"), (1, "11")] {
        let out = tmp.path().join(format!("s{n}-{batch}"));
        on(
            n,
            &[
                "sample",
                "--quiet",
                "--checkpoint",
                &r,
                "--n",
                "11",
                "--batch-size",
                batch,
                "--steps",
                "3",
                "--sampler",
                "ddpm",
                "--out",
                &out.display().to_string(),
            ],
        );
        let images = read(&out.join("images"));
        assert_eq!(images.len(), 11);
        outputs.push((images, std::fs::read(out.join("grid.png")).unwrap()));
    }
    assert!(
        outputs.iter().all(|o| *o == outputs[0]),
        "images differ between rank counts"
    );
    // The denoising chain on two ranks: one picture, no scratch folders left behind.
    let chain = tmp.path().join("chain.png");
    on(
        2,
        &[
            "plot",
            "chain",
            "--checkpoint",
            &r,
            "--n",
            "2",
            "--steps",
            "3",
            "--out",
            &chain.display().to_string(),
        ],
    );
    assert!(chain.is_file());
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("chain-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // Commands that do not split their work refuse to run on several ranks.
    let o = mpirun()
        .args(["-np", "2", bin(), "schedule", "--timesteps", "10"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("runs as one process"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_failing_rank_stops_the_job_and_checkpoints_stay_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    common::write_idx(&d, 16, 8, 7);
    let data = format!("idx:{}", d.display());
    let r = tmp.path().join("r");
    let args = tiny(&data, &r.display().to_string(), "1000000", "4");
    // Rank 1 is killed after 5 s; rank 0 must not wait for it forever.
    let start = Instant::now();
    let o = mpirun()
        .args(["-np", "1", bin()])
        .args(&args)
        .args([":", "-np", "1", "timeout", "-s", "KILL", "5", bin()])
        .args(&args)
        .output()
        .unwrap();
    assert!(!o.status.success(), "the job succeeded with a killed rank");
    assert!(
        start.elapsed() < Duration::from_secs(120),
        "the job took {:?} to stop",
        start.elapsed()
    );
    // The newest checkpoint rank 0 wrote is whole, and the run resumes from it.
    let latest = ddpm::run::checkpoints::newest_complete(&r)
        .unwrap()
        .expect("no checkpoint was written in 5 s");
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
    ] {
        read_safetensors(&latest.join(f)).unwrap();
    }
    let step: u64 = latest.file_name().unwrap().to_string_lossy()["step-".len()..]
        .parse()
        .unwrap();
    let more = (step + 2).to_string();
    // mpirun may return while the aborted rank 0 is still exiting and holds the run's lock.
    let mut tries = 0;
    let o = loop {
        let o = Command::new(bin())
            .args(tiny(&data, &r.display().to_string(), &more, "4"))
            .arg("--resume")
            .output()
            .unwrap();
        let busy = String::from_utf8_lossy(&o.stderr).contains("another ddpm process");
        tries += 1;
        if !busy || tries == 40 {
            break o;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(ckpt(&r, step as u32 + 2).is_dir());
    // Ranks started with different command lines refuse together, naming it.
    let other = tmp.path().join("o").display().to_string();
    let a = tiny(&data, &other, "4", "4");
    let o = mpirun()
        .args(["-np", "1", bin()])
        .args(&a)
        .args([":", "-np", "1", bin()])
        .args(&a)
        .args(["--lr", "0.002"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("disagree on the command line"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A micro-batch that does not split over the ranks.
    let o = mpirun()
        .args(["-np", "3", bin()])
        .args(tiny(&data, &other, "4", "4"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("do not split"));
}

#[test]
fn likelihood_and_fid_on_two_ranks_equal_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, r) = trained(tmp.path(), 12, 11);
    let json = |o: Output| -> serde_json::Value {
        serde_json::from_slice(o.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap()
    };
    let nll = |n: usize| {
        json(on(
            n,
            &[
                "eval",
                "nll",
                "--quiet",
                "--checkpoint",
                &r,
                "--data",
                &data,
                "--limit",
                "7",
                "--batch-size",
                "2",
                "--json",
            ],
        ))
    };
    let (a, b) = (nll(1), nll(2));
    assert_eq!(a["n"], 7);
    let (x, y) = (a["bpd"].as_f64().unwrap(), b["bpd"].as_f64().unwrap());
    assert!(
        (x - y).abs() < 1e-6 * x.abs(),
        "bits/dim {x} on one rank, {y} on two"
    );
    // FID with synthetic Inception weights: every image's features are computed by one rank,
    // with that rank's share of the cores (one thread instead of two here), which may split the
    // convolutions' f32 sums differently: features agree to ~1e-7 relative, and the FID of this
    // rank-deficient covariance (12 images, 2048 features) to ~1e-6; 1e-5 allows ten times that.
    let weights = tmp.path().join("inception.safetensors");
    ddpm::eval::inception::write_synthetic_weights(&weights).unwrap();
    let samples = tmp.path().join("s");
    on(
        1,
        &[
            "sample",
            "--quiet",
            "--checkpoint",
            &r,
            "--n",
            "5",
            "--steps",
            "2",
            "--out",
            &samples.display().to_string(),
        ],
    );
    let fid = |n: usize| {
        json(on(
            n,
            &[
                "eval",
                "fid",
                "--quiet",
                "--samples",
                &samples.join("images").display().to_string(),
                "--reference",
                &data,
                "--inception",
                &weights.display().to_string(),
                "--batch-size",
                "2",
                "--json",
            ],
        ))["fid"]
            .as_f64()
            .unwrap()
    };
    let (x, y) = (fid(1), fid(2));
    assert!(
        x.is_finite() && (x - y).abs() <= 1e-5 * x.abs(),
        "FID {x} on one rank, {y} on two"
    );
}

/// A learned VDM schedule sums its gradients over the ranks like the network: 2 ranks train the
/// network and the schedule as one process does (within the f32 reordering tolerance).
#[test]
fn a_learned_schedule_trains_on_two_ranks_as_in_one_process() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path().join("d");
    common::write_idx(&d, 48, 8, 9);
    let data = format!("idx:{}", d.display());
    let s = |p: &Path| p.display().to_string();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    let args = |r: &Path| {
        let mut a = tiny(&data, &s(r), "10", "6");
        a.extend(["--schedule", "learned"].map(String::from));
        a
    };
    let o = Command::new(bin()).args(args(&one)).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    on(
        2,
        &args(&two).iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let diff = max_difference(&ckpt(&one, 10), &ckpt(&two, 10));
    assert!(diff < TOLERANCE, "weights differ by {diff}");
    // The schedules as functions: γ(t) is invariant to a shift and a scale of the γ network's
    // raw output (it is renormalized between the learned endpoints), so those directions get
    // zero gradient and the weights along them carry only rounding noise; compare what they
    // compute, the ᾱ of the sampling chain.
    let chain = |r: &Path| -> Vec<f64> {
        let o = Command::new(bin())
            .args(["schedule", "--checkpoint", &s(r), "--format", "json"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["alphas_cumprod"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    let (a, b) = (chain(&one), chain(&two));
    assert_eq!(a.len(), 50);
    for (i, (p, q)) in a.iter().zip(&b).enumerate() {
        let (lp, lq) = ((p / (1.0 - p)).ln(), (q / (1.0 - q)).ln());
        assert!((lp - lq).abs() < 1e-4, "log SNR at step {i}: {lp} vs {lq}");
    }
}
