//! `ddpm schedule` against float64 tables computed independently by
//! `tests/fixtures/make_schedule_fixtures.py` (Improved DDPM's definitions in numpy).

use std::process::Command;

use serde_json::Value;

fn ddpm(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .args(args)
        .output()
        .expect("run ddpm")
}

fn fixtures() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/schedules.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn assert_close(name: &str, got: &Value, want: &Value, rel: f64) {
    let got = got.as_array().unwrap_or_else(|| panic!("{name} missing"));
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{name}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        let tol = rel * g.abs().max(w.abs());
        assert!((g - w).abs() <= tol, "{name}[{i}]: {g} vs {w}");
    }
}

#[test]
fn json_tables_match_improved_ddpm_float64_definitions() {
    let fx = fixtures();
    for case in fx["cases"].as_array().unwrap() {
        let name = case["schedule"].as_str().unwrap();
        let t = case["timesteps"].as_u64().unwrap().to_string();
        let mut args = vec![
            "schedule",
            "--schedule",
            name,
            "--timesteps",
            &t,
            "--format",
            "json",
        ];
        let respace = case["respace"].as_str();
        if let Some(r) = respace {
            args.extend(["--respace", r]);
        }
        let out = ddpm(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: Value = serde_json::from_slice(&out.stdout).unwrap();
        if respace.is_some() {
            assert_eq!(got["timesteps"], case["kept"]);
        }
        for (table, want) in case["tables"].as_object().unwrap() {
            assert_close(
                &format!("{name} T={t} {respace:?} {table}"),
                &got[table],
                want,
                1e-12,
            );
        }
    }
}

#[test]
fn csv_and_table_formats_print_every_step() {
    let out = ddpm(&[
        "schedule",
        "--schedule",
        "cosine",
        "--timesteps",
        "50",
        "--format",
        "csv",
    ]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 51);
    assert!(lines[0].starts_with("timestep,betas,"));
    let out = ddpm(&["schedule", "--timesteps", "40"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 41);
}

#[test]
fn bad_flags_exit_2_naming_the_flag() {
    for (args, flag) in [
        (vec!["--timesteps", "0"], "--timesteps"),
        (vec!["--beta-start", "0"], "--beta-start"),
        (vec!["--beta-end", "1.5"], "--beta-end"),
        (
            vec!["--beta-start", "0.1", "--beta-end", "0.01"],
            "--beta-start",
        ),
        (vec!["--schedule", "wavy"], "--schedule"),
        (vec!["--respace", "ddimx"], "--respace"),
        (vec!["--respace", "2000"], "--respace"),
        (
            vec!["--schedule", "file:/nonexistent/betas.txt"],
            "--schedule",
        ),
        (vec!["--timesteps", "abc"], "--timesteps"),
    ] {
        let mut full = vec!["schedule"];
        full.extend(args.iter());
        let out = ddpm(&full);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
