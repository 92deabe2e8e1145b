//! `ddpm kernels`: the GPU routes' kernel cache. Without a GPU route in the binary every
//! subcommand refuses and says why; with the `cubecl-cpu` route (the GPU route's CubeCL
//! backend on this CPU) a warm-up fills the cache that `DDPM_KERNEL_CACHE` names, `show` lists
//! it, and `export` / `import` carry it into another cache.

use crate::common::usage_error;

#[test]
fn warmup_refuses_the_cpu_backend_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let warmup = |extra: &[&str]| {
        let mut args = vec!["kernels", "warmup", "--preset", "tiny"];
        args.extend_from_slice(extra);
        std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
            .args(&args)
            .env("DDPM_KERNEL_CACHE", &cache)
            .output()
            .unwrap()
    };
    usage_error(
        warmup(&["--device", "cpu"]),
        "--device cpu: the cpu backend runs kernels compiled into this binary",
    );
    usage_error(
        warmup(&["--device", "cpu", "--resume"]),
        "--resume: a warm-up starts no run",
    );
    // The training flags are checked as `ddpm train` checks them.
    usage_error(
        warmup(&["--device", "cpu", "--batch-size", "0"]),
        "--batch-size must be at least 1",
    );
    // Nothing was written: no run, no cache.
    assert!(!cache.exists());
}

#[cfg(not(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu")))]
#[test]
fn without_a_gpu_route_each_subcommand_says_so() {
    use crate::common::ddpm;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("k.bundle");
    let file = file.to_str().unwrap();
    for args in [
        vec!["kernels", "show"],
        vec!["kernels", "export", file],
        vec!["kernels", "import", file],
    ] {
        usage_error(
            ddpm(&args),
            "this binary has no GPU backend (built with: cpu)",
        );
    }
    assert!(!dir.path().join("k.bundle").exists());
}

/// The whole cycle on the `cubecl-cpu` route: warm-up, show, export, import elsewhere.
#[cfg(feature = "cubecl-cpu")]
#[test]
fn warmup_fills_the_cache_that_export_and_import_carry() {
    use crate::common::{ok, write_idx};
    let dir = tempfile::tempdir().unwrap();
    write_idx(dir.path(), 16, 8, 3);
    let data = format!("idx:{}", dir.path().display());
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    let run = |cache: &std::path::Path, args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
            .args(args)
            .env("DDPM_KERNEL_CACHE", cache)
            .output()
            .unwrap()
    };
    let warmup = [
        "kernels",
        "warmup",
        "--device",
        "cubecl-cpu",
        "--preset",
        "tiny",
        "--data",
        &data,
    ];
    let small = [
        "--batch-size",
        "2",
        "--sample-count",
        "2",
        "--sample-steps",
        "2",
        "--timesteps",
        "50",
        "--quiet",
    ];
    let out = ok(run(&first, &[&warmup[..], &small[..]].concat()));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("warmed up on cubecl-cpu"), "{said}");
    let show = String::from_utf8_lossy(&ok(run(&first, &["kernels", "show"])).stdout).to_string();
    assert!(show.contains(&first.display().to_string()), "{show}");
    // Entries of every namespace but CubeCL's account of how the cache was built (`records`),
    // which an export leaves out.
    let entries = |show: &str| -> u64 {
        show.lines()
            .filter(|l| !l.starts_with("records/"))
            .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let warmed = entries(&show);
    assert!(warmed > 0, "the warm-up left the cache empty:\n{show}");
    let bundle = dir.path().join("k.bundle");
    let b = bundle.to_str().unwrap();
    ok(run(&first, &["kernels", "export", b]));
    // An existing file is never overwritten.
    usage_or_failure(run(&first, &["kernels", "export", b]), "exists");
    let imported =
        String::from_utf8_lossy(&ok(run(&second, &["kernels", "import", b])).stdout).to_string();
    assert!(
        imported.contains(" entries imported, 0 already in the cache"),
        "{imported}"
    );
    let show2 = String::from_utf8_lossy(&ok(run(&second, &["kernels", "show"])).stdout).to_string();
    assert_eq!(entries(&show2), warmed, "{show}\n---\n{show2}");
    // With the cache off there is nothing to warm up; a file is no cache directory, and
    // `--device auto` says so rather than falling back to the CPU.
    usage_error(
        run(std::path::Path::new("off"), &warmup),
        "DDPM_KERNEL_CACHE=off: a warm-up fills the kernel cache, which is off",
    );
    let bundle_as_cache = run(&bundle, &["train", "--device", "auto", "--steps", "1"]);
    assert!(!bundle_as_cache.status.success());
    let e = String::from_utf8_lossy(&bundle_as_cache.stderr);
    assert!(
        e.contains("DDPM_KERNEL_CACHE=") && e.contains(": a file"),
        "{e}"
    );
    // Importing again adds nothing.
    let again =
        String::from_utf8_lossy(&ok(run(&second, &["kernels", "import", b])).stdout).to_string();
    assert!(again.contains(": 0 entries imported"), "{again}");
    // The tuning results alone: every namespace of the imported cache is an autotune one.
    let tuned = dir.path().join("tuned.bundle");
    let t = tuned.to_str().unwrap();
    ok(run(&first, &["kernels", "export", t, "--only", "autotune"]));
    let third = dir.path().join("third");
    ok(run(&third, &["kernels", "import", t]));
    let show3 = String::from_utf8_lossy(&ok(run(&third, &["kernels", "show"])).stdout).to_string();
    let rows: Vec<&str> = show3.lines().filter(|l| l.contains(" entries, ")).collect();
    assert!(
        !rows.is_empty() && rows.iter().all(|l| l.starts_with("autotune/")),
        "{show3}"
    );
    // A prefix that matches nothing leaves no file.
    let none = dir.path().join("none.bundle");
    usage_or_failure(
        run(
            &first,
            &[
                "kernels",
                "export",
                none.to_str().unwrap(),
                "--only",
                "nothing",
            ],
        ),
        "no entry of the cache is under these prefixes",
    );
    assert!(!none.exists());
}

#[cfg(feature = "cubecl-cpu")]
fn usage_or_failure(o: std::process::Output, needle: &str) {
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains(needle), "{e}");
}
