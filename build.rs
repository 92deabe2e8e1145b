//! With the `mpi` feature: compiles `src/dist/shim.c` with the MPI implementation's own compiler
//! wrapper (`mpicc`, or `$MPICC`) and links the MPI library it names. Nothing otherwise.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_MPI").is_none() {
        return;
    }
    println!("cargo:rerun-if-changed=src/dist/shim.c");
    println!("cargo:rerun-if-env-changed=MPICC");
    let mpicc = std::env::var("MPICC").unwrap_or_else(|_| "mpicc".into());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let obj = out.join("ddpm_mpi_shim.o");
    let run = |cmd: &mut Command, what: &str| {
        let o = cmd.output().unwrap_or_else(|e| {
            panic!(
                "the `mpi` feature needs an MPI compiler wrapper: cannot run {what} ({e}); \
                 install Open MPI or MPICH (Debian: apt-get install libopenmpi-dev openmpi-bin) \
                 or set MPICC"
            )
        });
        assert!(
            o.status.success(),
            "{what} failed:\n{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    run(
        Command::new(&mpicc)
            .args(["-O2", "-fPIC", "-c", "src/dist/shim.c", "-o"])
            .arg(&obj),
        &format!("{mpicc} -c src/dist/shim.c"),
    );
    let lib = out.join("libddpm_mpi_shim.a");
    let _ = std::fs::remove_file(&lib);
    run(
        Command::new("ar").arg("crs").arg(&lib).arg(&obj),
        "ar crs libddpm_mpi_shim.a",
    );
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=ddpm_mpi_shim");
    // The libraries the wrapper links: Open MPI's `--showme:link`, MPICH's `-link_info`.
    let flags = Command::new(&mpicc)
        .arg("--showme:link")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_else(|| run(Command::new(&mpicc).arg("-link_info"), "mpicc -link_info"));
    for f in flags.split_whitespace() {
        if let Some(dir) = f.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(l) = f.strip_prefix("-l") {
            println!("cargo:rustc-link-lib={l}");
        } else if let Some(rpath) = f.strip_prefix("-Wl,-rpath,") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{rpath}");
        }
    }
}
