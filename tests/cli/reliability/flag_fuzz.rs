//! Round 2: every numeric flag of every subcommand, at the edges of what a number can be (0, −1,
//! NaN, ±∞, 2^63−1, 2^64−1, 1e30), on the tiny fixtures: no panic, no abort, no run past
//! [`LIMIT_S`] seconds, no more than [`LIMIT_RSS_MIB`] of memory. A clean refusal (exit 2, or
//! exit 1 naming the problem) or a run of the fixture's small size is what each case may do.
//! `--help` is read to check that no numeric flag is left out of the list below.

use super::*;

/// The values every numeric flag is given.
const VALUES: [&str; 8] = [
    "0",
    "-1",
    "NaN",
    "inf",
    "-inf",
    "9223372036854775807",
    "18446744073709551615",
    "1e30",
];

/// The longest a case may run (the slowest baseline takes about a second).
const LIMIT_S: u64 = 20;
/// The most memory a case may take.
const LIMIT_RSS_MIB: i64 = 512;

/// A command that succeeds on the fixtures, and the numeric flags to try on it. `{out}` in the
/// baseline is replaced by a fresh path per case.
struct Case {
    base: Vec<String>,
    flags: &'static [&'static str],
}

/// Flags `--help` lists with a numeric default that are not numbers a user picks freely.
const NOT_FUZZED: &[&str] = &[];

#[rustfmt::skip] // one command line a line
fn cases(f: &Fixture, run: &str, cond: &str, learned: &str, clf: &str, judge: &str, posthoc: &str) -> Vec<Case> {
    let d = f.data.as_str();
    let samples = format!("folder:{}", f.path("samples/images"));
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let train = s(&[
        "train", "--quiet", "--preset", "tiny", "--data", d, "--batch-size", "4", "--steps", "1",
        "--timesteps", "50", "--sample-every", "0", "--out", "{out}",
    ]);
    vec![
        Case {
            base: s(&["schedule", "--timesteps", "50"]),
            flags: &["--timesteps", "--beta-start", "--beta-end"],
        },
        Case {
            base: s(&["schedule", "--schedule", "vdm-linear", "--timesteps", "50"]),
            flags: &["--gamma-min", "--gamma-max"],
        },
        Case {
            base: s(&["schedule", "--checkpoint", learned, "--timesteps", "50"]),
            flags: &["--timesteps"],
        },
        Case {
            base: train.clone(),
            flags: &[
                "--steps",
                "--batch-size",
                "--grad-accum",
                "--lr",
                "--warmup-steps",
                "--grad-clip",
                "--adam-beta1",
                "--adam-beta2",
                "--adam-eps",
                "--weight-decay",
                "--ema-decay",
                "--ema-warmup-power",
                "--seed",
                "--log-every",
                "--sample-every",
                "--sample-count",
                "--sample-steps",
                "--checkpoint-every",
                "--keep-checkpoints",
                "--timesteps",
                "--beta-start",
                "--beta-end",
                "--hybrid-lambda",
                "--p2-k",
                "--p2-gamma",
                "--min-snr-gamma",
                "--dropout",
                "--cond-drop",
            ],
        },
        Case {
            base: [train.clone(), s(&["--objective", "edm", "--posthoc-ema", "0.05,0.1"])].concat(),
            flags: &["--sigma-data", "--p-mean", "--p-std", "--posthoc-ema", "--snapshot-every"],
        },
        Case {
            base: s(&["ema", "reconstruct", "--checkpoint", posthoc, "--sigma-rel", "0.1", "--out", "{out}"]),
            flags: &["--sigma-rel"],
        },
        Case {
            base: s(&[
                "ema", "sweep", "--checkpoint", posthoc, "--sigma-rel", "0.1", "--judge", judge,
                "--reference", d, "--n", "4", "--steps", "2", "--out", "{out}",
            ]),
            flags: &["--sigma-rel", "--n", "--steps", "--batch-size", "--seed"],
        },
        Case {
            base: [train.clone(), s(&["--schedule", "learned"])].concat(),
            flags: &["--gamma-min", "--gamma-max", "--schedule-lr"],
        },
        Case {
            base: s(&[
                "train-classifier", "--like", run, "--data", d, "--steps", "1", "--batch-size",
                "4", "--out", "{out}",
            ]),
            flags: &[
                "--base-channels",
                "--num-res-blocks",
                "--timesteps",
                "--steps",
                "--batch-size",
                "--lr",
                "--warmup-steps",
                "--weight-decay",
                "--grad-clip",
                "--seed",
                "--log-every",
            ],
        },
        Case {
            base: s(&[
                "sample", "--checkpoint", run, "--n", "2", "--steps", "2", "--quiet", "--out",
                "{out}",
            ]),
            flags: &["--n", "--steps", "--eta", "--seed", "--batch-size"],
        },
        Case {
            base: s(&[
                "sample", "--checkpoint", run, "--n", "2", "--steps", "2", "--sampler", "ddpm",
                "--analytic-variance", "--quiet", "--out", "{out}",
            ]),
            flags: &["--analytic-images"],
        },
        Case {
            base: s(&[
                "sample", "--checkpoint", run, "--n", "2", "--steps", "3", "--sampler", "heun",
                "--churn", "1", "--quiet", "--out", "{out}",
            ]),
            flags: &[
                "--rho", "--sigma-min", "--sigma-max", "--churn", "--s-tmin", "--s-tmax",
                "--s-noise",
            ],
        },
        Case {
            base: s(&[
                "sample", "--checkpoint", cond, "--n", "2", "--steps", "2", "--class", "1",
                "--quiet", "--out", "{out}",
            ]),
            flags: &["--guidance", "--guidance-rescale"],
        },
        Case {
            base: s(&[
                "sample", "--checkpoint", run, "--n", "2", "--steps", "2", "--classifier", clf,
                "--class", "1", "--quiet", "--out", "{out}",
            ]),
            flags: &["--classifier-scale"],
        },
        Case {
            base: s(&[
                "eval", "nll", "--checkpoint", run, "--data", d, "--limit", "2", "--t-samples",
                "2", "--quiet",
            ]),
            flags: &["--limit", "--batch-size", "--seed", "--t-samples"],
        },
        Case {
            base: s(&[
                "eval", "nll", "--checkpoint", learned, "--data", d, "--limit", "2", "--quiet",
            ]),
            flags: &["--t-samples"],
        },
        Case {
            base: s(&["eval", "classifier-train", "--data", d, "--out", "{out}"]),
            flags: &["--epochs", "--batch-size", "--seed"],
        },
        Case {
            base: s(&[
                "eval", "fd", "--classifier", judge, "--samples", &samples, "--reference", d,
            ]),
            flags: &["--limit"],
        },
        Case {
            base: s(&[
                "eval", "guidance", "--checkpoint", cond, "--classifier", judge, "--reference", d,
                "--guidance", "0,1", "--per-class", "1", "--steps", "2", "--quiet",
            ]),
            flags: &[
                "--reference-limit",
                "--guidance",
                "--per-class",
                "--steps",
                "--batch-size",
                "--seed",
            ],
        },
        Case {
            base: s(&[
                "eval", "guidance", "--checkpoint", run, "--guide-classifier", clf,
                "--classifier-scale", "0,1", "--classifier", judge, "--reference", d,
                "--per-class", "1", "--steps", "2", "--quiet",
            ]),
            flags: &["--classifier-scale"],
        },
        Case {
            base: s(&["plot", "schedules", "--timesteps", "50", "--out", "{out}.png"]),
            flags: &["--timesteps"],
        },
        Case {
            base: s(&["plot", "diffusion", "--t", "0,10,49", "--out", "{out}.png"]),
            flags: &["--t", "--seed"],
        },
        Case {
            base: s(&[
                "plot", "chain", "--checkpoint", run, "--steps", "3", "--n", "2", "--out",
                "{out}.png",
            ]),
            flags: &["--steps", "--n", "--seed"],
        },
        Case {
            base: s(&[
                "plot", "chain", "--checkpoint", cond, "--steps", "3", "--n", "2", "--class", "1",
                "--out", "{out}.png",
            ]),
            flags: &["--guidance"],
        },
        Case {
            base: s(&[
                "plot", "chain", "--checkpoint", run, "--steps", "3", "--n", "2", "--class", "1",
                "--classifier", clf, "--out", "{out}.png",
            ]),
            flags: &["--classifier-scale"],
        },
        Case {
            base: s(&[
                "bench", "--preset", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0",
            ]),
            flags: &["--batch-size", "--steps", "--warmup"],
        },
    ]
}

/// How a case ended: exit code (None: a signal) and peak memory, or that it ran too long.
enum Ended {
    Exited {
        code: Option<i32>,
        rss_mib: i64,
        stderr: String,
    },
    TooLong,
}

/// Runs `ddpm args` with the time limit, reading its peak memory from the kernel.
#[cfg(target_os = "linux")]
fn run_limited(args: &[String], dir: &Path) -> Ended {
    use std::process::Stdio;
    let err = dir.join("stderr");
    #[allow(clippy::zombie_processes)] // reaped by wait4 below, or killed and reaped
    let mut child = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("run ddpm");
    let pid = child.id() as libc::pid_t;
    let start = std::time::Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: an all-zero rusage is valid; wait4 writes into memory this function owns.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: waits (without blocking) for this function's own child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
            return Ended::Exited {
                code,
                rss_mib: usage.ru_maxrss / 1024,
                stderr: std::fs::read_to_string(&err).unwrap_or_default(),
            };
        }
        if start.elapsed().as_secs() >= LIMIT_S {
            let _ = child.kill();
            let _ = child.wait();
            return Ended::TooLong;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// Every `--name <VALUE> … [default: N]` of a `--help` text whose default is a number.
fn numeric_flags_of_help(help: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        if t.starts_with("--") || (t.starts_with('-') && t.contains(", --")) {
            let name = t
                .split_whitespace()
                .find(|w| w.starts_with("--"))
                .map(|w| w.trim_end_matches(',').to_string());
            current = name.filter(|_| t.contains('<'));
        }
        if let (Some(name), Some(d)) = (&current, t.split("[default: ").nth(1)) {
            let value = d.split(']').next().unwrap_or("");
            if value.parse::<f64>().is_ok() && !out.contains(name) {
                out.push(name.clone());
            }
        }
    }
    out
}

#[test]
#[cfg(target_os = "linux")]
fn every_numeric_flag_at_every_edge_value() {
    let f = Fixture::new();
    f.add_labels();
    let (run, cond, learned) = (f.path("run"), f.path("cond"), f.path("learned"));
    ok(f.train(&run, "1", &[]));
    ok(f.train(&cond, "1", &["--class-cond"]));
    ok(f.train(&learned, "1", &["--schedule", "learned"]));
    let posthoc = f.path("posthoc");
    ok(f.train(
        &posthoc,
        "2",
        &["--posthoc-ema", "0.05,0.1", "--snapshot-every", "1"],
    ));
    let clf = f.path("clf");
    ok(ddpm(&[
        "train-classifier",
        "--like",
        &run,
        "--data",
        &f.data,
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--out",
        &clf,
    ]));
    let judge = f.path("judge.safetensors");
    ok(ddpm(&[
        "eval",
        "classifier-train",
        "--data",
        &f.data,
        "--out",
        &judge,
    ]));
    ok(ddpm(&[
        "sample",
        "--checkpoint",
        &run,
        "--n",
        "4",
        "--steps",
        "2",
        "--quiet",
        "--out",
        &f.path("samples"),
    ]));
    let cases = cases(&f, &run, &cond, &learned, &clf, &judge, &posthoc);

    // Every numeric flag `--help` shows for a subcommand is in the list.
    let mut subcommands: Vec<Vec<String>> = Vec::new();
    for c in &cases {
        let sub: Vec<String> = c
            .base
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .cloned()
            .collect();
        if !subcommands.contains(&sub) {
            subcommands.push(sub);
        }
    }
    for sub in &subcommands {
        let mut args: Vec<&str> = sub.iter().map(String::as_str).collect();
        args.push("--help");
        let help = String::from_utf8_lossy(&ok(ddpm(&args)).stdout).to_string();
        for flag in numeric_flags_of_help(&help) {
            let covered = cases.iter().any(|c| {
                c.base
                    .iter()
                    .take_while(|a| !a.starts_with('-'))
                    .eq(sub.iter())
                    && c.flags.contains(&flag.as_str())
            });
            assert!(
                covered || NOT_FUZZED.contains(&flag.as_str()),
                "{} {flag}: a numeric flag the fuzz list leaves out",
                sub.join(" ")
            );
        }
    }

    let mut jobs: Vec<Vec<String>> = Vec::new();
    for c in &cases {
        for flag in c.flags {
            for v in VALUES {
                // The baseline without the flag (and its value), then the flag at the edge.
                let mut args = Vec::new();
                let mut skip = false;
                for a in &c.base {
                    if skip {
                        skip = false;
                        continue;
                    }
                    if a == flag {
                        skip = true;
                        continue;
                    }
                    args.push(a.clone());
                }
                args.push(format!("{flag}={v}"));
                jobs.push(args);
            }
        }
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let dir = f.root.join(format!("case-{i}"));
                    std::fs::create_dir_all(&dir).unwrap();
                    let out = dir.join("out").display().to_string();
                    let args: Vec<String> = job.iter().map(|a| a.replace("{out}", &out)).collect();
                    let bad = match run_limited(&args, &dir) {
                        Ended::TooLong => Some(format!("ran past {LIMIT_S} s")),
                        Ended::Exited {
                            code,
                            rss_mib,
                            stderr,
                        } => {
                            if stderr.contains("panicked") {
                                let at = stderr.lines().find(|l| l.contains("panicked"));
                                Some(at.unwrap_or_default().to_string())
                            } else if !matches!(code, Some(0..=2)) {
                                Some(format!("ended by {code:?}: {stderr}"))
                            } else if rss_mib > LIMIT_RSS_MIB {
                                Some(format!("took {rss_mib} MiB"))
                            } else if code != Some(0) && stderr.trim().is_empty() {
                                Some("failed without a message".into())
                            } else {
                                None
                            }
                        }
                    };
                    if let Some(b) = bad {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("ddpm {}: {b}", args.join(" ")));
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        jobs.len(),
        failures.join("\n")
    );
}
