//! Round 2, item 1: memory stays flat with the number of network calls in sampling and
//! evaluation, and `sample` streams its images to disk whatever `--n`.

use super::*;

/// Peak resident memory (KiB) of `ddpm args`, which must succeed; read from the kernel's
/// accounting of the child process (`wait4`).
#[cfg(target_os = "linux")]
fn peak_rss_kib(args: &[&str]) -> i64 {
    use std::process::Stdio;
    #[allow(clippy::zombie_processes)] // reaped by wait4 below
    let child = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run ddpm");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 writes into memory this function owns.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for this function's own child, which is not waited for elsewhere.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(r, pid, "wait4");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "ddpm {args:?} failed ({status})"
    );
    usage.ru_maxrss
}

/// The tiny run every test here samples from: T = 400.
fn run_400(f: &Fixture) -> String {
    let r = f.path("r");
    ok(f.train(&r, "2", &["--timesteps", "400"]));
    r
}

/// Before the fix every network call of an inference model recorded an autodiff step that
/// nothing freed: ~140 KB per call for the tiny model, 52 MB over the 375 extra calls here.
#[test]
#[cfg(target_os = "linux")]
fn memory_does_not_grow_with_the_number_of_network_calls() {
    let f = Fixture::new();
    let r = run_400(&f);
    let sample = |steps: &str, out: &str| {
        peak_rss_kib(&[
            "sample",
            "--checkpoint",
            &r,
            "--sampler",
            "ddpm",
            "--steps",
            steps,
            "--n",
            "2",
            "--quiet",
            "--out",
            &f.path(out),
        ])
    };
    let (few, many) = (sample("25", "s25"), sample("400", "s400"));
    assert!(
        many - few < 8 << 10,
        "sample: 25 steps {few} KiB, 400 steps {many} KiB"
    );
    // eval nll: the full bound is T calls per batch; 4× the images, 4× the calls.
    let nll = |limit: &str| {
        peak_rss_kib(&[
            "eval",
            "nll",
            "--checkpoint",
            &r,
            "--data",
            &f.data,
            "--limit",
            limit,
            "--batch-size",
            "1",
        ])
    };
    let (few, many) = (nll("1"), nll("4"));
    assert!(
        many - few < 8 << 10,
        "eval nll: 400 calls {few} KiB, 1600 calls {many} KiB"
    );
}

/// Images are written as their batch is done, and nothing holds them all: when the first
/// batch is on disk the process is small. (Before, every image was held until the end: at the
/// first file the 400,000 images' 102 MB of values were resident.)
#[test]
#[cfg(target_os = "linux")]
fn sample_streams_any_number_of_images_to_disk() {
    let f = Fixture::new();
    let r = run_400(&f);
    let out = f.path("many");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args([
            "sample",
            "--checkpoint",
            &r,
            "--n",
            "400000",
            "--steps",
            "1",
            "--batch-size",
            "256",
            "--quiet",
            "--out",
            &out,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let first = Path::new(&out).join("images").join("00255.png");
    let start = std::time::Instant::now();
    while !first.exists() && start.elapsed().as_secs() < 120 {
        if let Some(s) = child.try_wait().unwrap() {
            let mut e = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut e).unwrap();
            panic!("sample ended early ({s}): {e}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(first.exists(), "no image written after 120 s");
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(rss_kib < 64 << 10, "{rss_kib} KiB while streaming");
    // Nothing but whole files under their names: the grid and the batch files come at the end.
    assert!(!Path::new(&out).join("grid.png").exists());
}

/// The grid of a call beyond its size shows the first images of each requested class; every
/// image is a PNG of its own, and samples.safetensors holds them all in order.
#[test]
fn streamed_files_hold_every_image() {
    let f = Fixture::new();
    let r = run_400(&f);
    let out = f.path("s");
    ok(ddpm(&[
        "sample",
        "--checkpoint",
        &r,
        "--n",
        "1100",
        "--steps",
        "1",
        "--batch-size",
        "300",
        "--quiet",
        "--safetensors",
        "--out",
        &out,
    ]));
    let images = std::fs::read_dir(Path::new(&out).join("images"))
        .unwrap()
        .count();
    assert_eq!(images, 1100);
    let st = read_safetensors(&Path::new(&out).join("samples.safetensors")).unwrap();
    assert_eq!(st["samples"].shape, vec![1100, 1, 8, 8]);
    // The same seed in one batch gives the same images (each image has its own noise stream).
    let one = f.path("one");
    ok(ddpm(&[
        "sample",
        "--checkpoint",
        &r,
        "--n",
        "1100",
        "--steps",
        "1",
        "--batch-size",
        "1100",
        "--quiet",
        "--safetensors",
        "--out",
        &one,
    ]));
    let st1 = read_safetensors(&Path::new(&one).join("samples.safetensors")).unwrap();
    assert_eq!(st, st1);
    let grid = image::image_dimensions(Path::new(&out).join("grid.png")).unwrap();
    // 32 × 32 images of 8 pixels with a 2-pixel border.
    assert_eq!(grid, (32 * 10 + 2, 32 * 10 + 2));
}
