//! The C shim over MPI (`shim.c`, compiled by `build.rs` with `mpicc`).

use std::os::raw::{c_char, c_int};

use anyhow::{Result, bail};

use super::World;

unsafe extern "C" {
    fn ddpm_mpi_init(
        rank: *mut c_int,
        size: *mut c_int,
        local_rank: *mut c_int,
        local_size: *mut c_int,
    ) -> c_int;
    fn ddpm_mpi_allreduce_sum_f32(buf: *mut f32, n: i64) -> c_int;
    fn ddpm_mpi_allreduce_sum_f64(buf: *mut f64, n: i64) -> c_int;
    fn ddpm_mpi_minmax_u64(value: u64, min: *mut u64, max: *mut u64) -> c_int;
    fn ddpm_mpi_abort(code: c_int);
    fn ddpm_mpi_finalize() -> c_int;
    fn ddpm_mpi_error_string(code: c_int, out: *mut c_char, len: c_int);
}

fn check(rc: c_int, what: &str) -> Result<()> {
    if rc == 0 {
        return Ok(());
    }
    let mut buf = vec![0 as c_char; 512];
    // SAFETY: the buffer holds `len` bytes and the shim writes at most len − 1 plus a NUL.
    unsafe { ddpm_mpi_error_string(rc, buf.as_mut_ptr(), buf.len() as c_int) };
    let msg: String = buf
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8 as char)
        .collect();
    bail!("MPI {what} failed (error {rc}: {msg})")
}

pub(super) fn init() -> Result<World> {
    let (mut rank, mut size, mut local_rank, mut local_size) = (0, 0, 0, 0);
    // SAFETY: four valid out-pointers; called once, from the main thread, before any other MPI
    // call (World::init's OnceLock).
    let rc = unsafe { ddpm_mpi_init(&mut rank, &mut size, &mut local_rank, &mut local_size) };
    check(rc, "initialisation")?;
    Ok(World {
        rank: rank as usize,
        size: size as usize,
        local_rank: local_rank as usize,
        local_size: local_size as usize,
    })
}

pub(super) fn sum_f32(buf: &mut [f32]) -> Result<()> {
    // SAFETY: `buf` is valid for `len` elements for the call's duration.
    let rc = unsafe { ddpm_mpi_allreduce_sum_f32(buf.as_mut_ptr(), buf.len() as i64) };
    check(rc, "all-reduce")
}

pub(super) fn sum_f64(buf: &mut [f64]) -> Result<()> {
    // SAFETY: as above.
    let rc = unsafe { ddpm_mpi_allreduce_sum_f64(buf.as_mut_ptr(), buf.len() as i64) };
    check(rc, "all-reduce")
}

pub(super) fn min_max(value: u64) -> Result<(u64, u64)> {
    let (mut min, mut max) = (0u64, 0u64);
    // SAFETY: two valid out-pointers.
    let rc = unsafe { ddpm_mpi_minmax_u64(value, &mut min, &mut max) };
    check(rc, "min/max reduction")?;
    Ok((min, max))
}

pub(super) fn abort(code: i32) -> ! {
    // SAFETY: MPI_Abort ends every process of the job and does not return.
    unsafe { ddpm_mpi_abort(code) };
    std::process::exit(code)
}

pub(super) fn finalize() {
    // SAFETY: called once at the end of main, after the last collective.
    unsafe { ddpm_mpi_finalize() };
}
