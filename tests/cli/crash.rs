//! The crash test: a tiny class-conditional training run (dropout, gradient accumulation,
//! flips, importance-sampled timesteps: every random stream) with a checkpoint every step is
//! killed with SIGKILL at seeded random moments (during steps, checkpoint writes and pruning
//! alike) and resumed each time. After every kill the run's newest complete checkpoint must be
//! whole and readable, and the final weights, EMA, optimizer state and training state must equal
//! those of an uninterrupted run bit for bit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{write_idx, write_idx_labels};
use ddpm::run::checkpoints::{CHECKPOINT_FILES, newest_complete};
use ddpm::store::tensors::read_safetensors;

const STEPS: &str = "150";
/// SIGKILLs before the run is let finish (each costs at most 4 steps of progress).
const KILLS: usize = 30;

fn command(data: &str, out: &Path, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_ddpm"));
    c.args([
        "train",
        "--quiet",
        "--data",
        data,
        "--preset",
        "tiny",
        "--batch-size",
        "4",
        "--timesteps",
        "50",
        "--dropout",
        "0.1",
        "--checkpoint-every",
        "1",
        "--keep-checkpoints",
        "2",
        "--sample-every",
        "8",
        "--sample-count",
        "2",
        "--sample-steps",
        "2",
        "--steps",
        STEPS,
        "--class-cond",
        "--grad-accum",
        "2",
        "--hflip",
        "--t-sampler",
        "loss-second-moment",
        "--out",
    ])
    .arg(out)
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    if resume {
        c.arg("--resume");
    }
    c
}

/// Whether a checkpoint is being written (its temporary directory exists).
fn writing(run: &Path) -> bool {
    std::fs::read_dir(run.join("checkpoints")).is_ok_and(|d| {
        d.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
    })
}

/// The step `checkpoints/latest` names (0 before the first checkpoint).
fn latest_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("checkpoints/latest"))
        .ok()
        .and_then(|s| s.trim().strip_prefix("step-")?.parse().ok())
        .unwrap_or(0)
}

/// The newest complete checkpoint, checked whole: every tensor file parses with finite values
/// and `state.json` names its own step.
fn check_newest(run: &Path) -> Option<PathBuf> {
    let dir = newest_complete(run).expect("list checkpoints")?;
    for f in CHECKPOINT_FILES {
        let p = dir.join(f);
        if f.ends_with(".safetensors") {
            read_safetensors(&p)
                .unwrap_or_else(|e| panic!("a partial checkpoint was chosen: {e:#}"));
        } else {
            let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let step = s["step"].as_u64().unwrap();
            assert!(dir.ends_with(format!("step-{step:08}")), "{}", p.display());
        }
    }
    Some(dir)
}

#[test]
fn killed_at_random_moments_the_run_ends_bit_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    write_idx(&data_dir, 10, 8, 7);
    // Labels, for a class-conditional run (its null-class draws must resume exactly too).
    write_idx_labels(&data_dir, &(0..10u8).map(|i| i % 3).collect::<Vec<_>>());
    let data = format!("idx:{}", data_dir.display());

    let straight = tmp.path().join("straight");
    let o = command(&data, &straight, false).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let killed = tmp.path().join("killed");
    let mut rng = 0x5EED_u64;
    let mut next = move || {
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (rng >> 33) as f64 / (1u64 << 31) as f64
    };
    let (mut kills, mut finished, mut mid_write) = (0, false, 0);
    for attempt in 0..400 {
        let resume = check_newest(&killed).is_some();
        // A kill that left a temporary checkpoint or a directory moved aside for pruning.
        if std::fs::read_dir(killed.join("checkpoints")).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with('.'))
        }) {
            mid_write += 1;
        }
        let start_step = latest_step(&killed);
        let mut child = command(&data, &killed, resume).spawn().unwrap();
        // Kill once 0–3 more checkpoints are written, then 0–25 ms later (a step here takes
        // about 20 ms, most of it writing its checkpoint), so the kills land in start-up, steps,
        // checkpoint writes and pruning alike whatever the machine's speed; after the last kill
        // the run is let finish.
        let target = (kills < KILLS).then(|| {
            let step = start_step + (next() * 4.0) as u64;
            // Every other kill within 3 ms of a new `latest`: while the old checkpoints are
            // being pruned or the next step starts.
            let span = if kills % 2 == 0 { 3_000.0 } else { 25_000.0 };
            (step, Duration::from_micros((next() * span) as u64))
        });
        let mut deadline: Option<Instant> = None;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let mut err = String::new();
                std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
                assert!(st.success(), "attempt {attempt} failed: {err}");
                finished = true;
                break;
            }
            if let Some((step, delay)) = target {
                if deadline.is_none() && latest_step(&killed) >= step {
                    deadline = Some(Instant::now() + delay);
                }
                // Every third kill the moment a checkpoint is seen half-written (watched
                // without sleeping: a write lasts a few milliseconds).
                if kills % 3 == 2 && deadline.is_some() {
                    if writing(&killed) {
                        child.kill().unwrap();
                        child.wait().unwrap();
                        kills += 1;
                        break;
                    }
                    std::thread::yield_now();
                    continue;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    kills += 1;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if finished {
            break;
        }
    }
    assert!(finished, "the run never finished");
    assert!(kills >= 20, "only {kills} kills");
    assert!(
        mid_write >= 5,
        "only {mid_write} kills landed during a checkpoint write or pruning"
    );
    eprintln!("{kills} kills, {mid_write} of them during a checkpoint write or pruning");
    let last = format!("checkpoints/step-{:08}", STEPS.parse::<u64>().unwrap());
    for f in CHECKPOINT_FILES {
        let a = std::fs::read(straight.join(&last).join(f)).unwrap();
        let b = std::fs::read(killed.join(&last).join(f)).unwrap();
        assert!(
            a == b,
            "{f} differs from the uninterrupted run after {kills} kills"
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(killed.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| !n.starts_with("step-") && n != "latest")
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
