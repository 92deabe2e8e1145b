//! Running as one of N processes (ranks) under an MPI launcher (`mpirun -np N`, `srun`): the
//! world's shape and the few collectives data parallelism needs — sums of gradients and of
//! per-sample values, agreement checks, abort. Without the `mpi` feature, or without a
//! launcher, the world is one process and every collective is the identity.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use anyhow::{Result, bail};
use burn::tensor::{Tensor, TensorData};

#[cfg(feature = "mpi")]
mod ffi;

/// Without MPI no world has more than one rank, so these are never reached; they answer with
/// an error rather than a wrong result all the same.
#[cfg(not(feature = "mpi"))]
mod ffi {
    use anyhow::{Result, bail};

    const NO_MPI: &str = "this ddpm was built without the `mpi` feature";

    pub(super) fn sum_f32(_: &mut [f32]) -> Result<()> {
        bail!(NO_MPI)
    }
    pub(super) fn sum_f64(_: &mut [f64]) -> Result<()> {
        bail!(NO_MPI)
    }
    pub(super) fn min_max(_: u64) -> Result<(u64, u64)> {
        bail!(NO_MPI)
    }
    pub(super) fn abort(code: i32) -> ! {
        std::process::exit(code)
    }
    pub(super) fn finalize() {}
}

/// This process's place among the ranks of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct World {
    /// This rank (0-based).
    pub rank: usize,
    /// Ranks in the job.
    pub size: usize,
    /// This rank among those on the same machine.
    pub local_rank: usize,
    /// Ranks on this machine.
    pub local_size: usize,
}

static WORLD: OnceLock<World> = OnceLock::new();

/// The number of ranks an MPI launcher announced in the environment (Open MPI, MPICH / Intel
/// MPI's PMI, PMIx), if any.
fn launched_size() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE"]
        .iter()
        .find_map(|k| std::env::var(k).ok()?.trim().parse().ok())
}

/// The tasks of a Slurm job step (`srun`), if any. Inside `sbatch`'s own script (no `srun`)
/// they may be set too, so they only matter when MPI can ask the launcher for the truth.
fn slurm_tasks() -> Option<usize> {
    std::env::var("SLURM_STEP_NUM_TASKS")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Joins the job this process was launched into (once, before anything else runs). A process
/// started without a launcher, or by one with a single rank, is a world of one and does not
/// start MPI.
pub fn init() -> Result<&'static World> {
    if let Some(w) = WORLD.get() {
        return Ok(w);
    }
    let launched = launched_size().unwrap_or(1);
    let w = if launched > 1 || (cfg!(feature = "mpi") && slurm_tasks().unwrap_or(1) > 1) {
        join(launched)?
    } else {
        World {
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: 1,
        }
    };
    Ok(WORLD.get_or_init(|| w))
}

#[cfg(feature = "mpi")]
fn join(_launched: usize) -> Result<World> {
    ffi::init()
}

#[cfg(not(feature = "mpi"))]
fn join(launched: usize) -> Result<World> {
    bail!(
        "this process was started by an MPI launcher as one of {launched}, but this ddpm was built \
         without the `mpi` feature, so the copies would not cooperate; rebuild with \
         `cargo build --release --features mpi` (or run one process)"
    )
}

/// The world this process belongs to (a world of one before [`init`]).
pub fn world() -> World {
    WORLD.get().copied().unwrap_or(World {
        rank: 0,
        size: 1,
        local_rank: 0,
        local_size: 1,
    })
}

impl World {
    /// Whether this is rank 0, the one that writes files and prints progress.
    pub fn is_root(&self) -> bool {
        self.rank == 0
    }

    /// Whether there is more than one rank.
    pub fn is_distributed(&self) -> bool {
        self.size > 1
    }

    /// The rows `[start, end)` of `n` that this rank takes: equal shares, in rank order.
    pub fn share(&self, n: usize) -> (usize, usize) {
        (self.rank * n / self.size, (self.rank + 1) * n / self.size)
    }

    /// The batches of `n` this rank takes: r, r + N, r + 2N, … (rank 0 always has batch 0).
    pub fn batches(&self, n: usize) -> std::iter::StepBy<std::ops::Range<usize>> {
        (self.rank..n).step_by(self.size)
    }

    /// Sums `buf` element-wise over all ranks, in place.
    pub fn sum_f32(&self, buf: &mut [f32]) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        ffi::sum_f32(buf)
    }

    /// Sums `buf` element-wise over all ranks, in place.
    pub fn sum_f64(&self, buf: &mut [f64]) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        ffi::sum_f64(buf)
    }

    /// Checks that every rank holds the same `value` of `what` (a hash, a checksum): an error on
    /// every rank otherwise, so that all stop together.
    pub fn agree(&self, what: &str, value: u64) -> Result<()> {
        if !self.is_distributed() {
            return Ok(());
        }
        let (min, max) = ffi::min_max(value)?;
        if min != max {
            bail!(
                "the {} ranks disagree on {what} (this is rank {}); every rank must run the same \
                 binary with the same configuration and files",
                self.size,
                self.rank
            );
        }
        Ok(())
    }

    /// Ends the whole job with `code` (every rank), so none waits forever in a collective for
    /// a rank that failed.
    pub fn abort(&self, code: i32) -> ! {
        if self.is_distributed() {
            ffi::abort(code);
        }
        std::process::exit(code)
    }

    /// Leaves the job cleanly (after the last collective).
    pub fn finalize(&self) {
        if self.is_distributed() {
            ffi::finalize();
        }
    }
}

/// Elements per all-reduce bucket: 4M f32 values (16 MiB), so the host copy of one bucket is
/// small next to the gradients and large enough to reach the network's bandwidth.
pub const BUCKET_ELEMENTS: usize = 4 << 20;

/// Sums named gradients over all ranks, in place: packed in name order into flat host buffers
/// of at most [`BUCKET_ELEMENTS`] values (a tensor larger than that gets its own), one
/// all-reduce per buffer. Returns the seconds spent in the all-reduces.
pub fn sum_gradients(world: &World, grads: &mut BTreeMap<String, Tensor<1>>) -> Result<f64> {
    if !world.is_distributed() {
        return Ok(0.0);
    }
    let names: Vec<String> = grads.keys().cloned().collect();
    let mut secs = 0.0;
    let mut start = 0;
    while start < names.len() {
        let mut end = start;
        let mut len = 0;
        while end < names.len() {
            let n = grads[&names[end]].dims()[0];
            if end > start && len + n > BUCKET_ELEMENTS {
                break;
            }
            len += n;
            end += 1;
        }
        let mut buf = Vec::with_capacity(len);
        for name in &names[start..end] {
            let v: Vec<f32> = grads[name]
                .clone()
                .into_data()
                .convert::<f32>()
                .try_into_vec()
                .map_err(|e| anyhow::anyhow!("gradient {name}: {e:?}"))?;
            buf.extend(v);
        }
        let t0 = std::time::Instant::now();
        world.sum_f32(&mut buf)?;
        secs += t0.elapsed().as_secs_f64();
        let mut off = 0;
        for name in &names[start..end] {
            let g = grads.get_mut(name).expect("a listed gradient");
            let n = g.dims()[0];
            let device = g.device();
            let dtype = g.dtype();
            *g = Tensor::<1>::from_data(TensorData::new(buf[off..off + n].to_vec(), [n]), &device)
                .cast(dtype);
            off += n;
        }
        start = end;
    }
    Ok(secs)
}

/// A 64-bit FNV-1a hash of `bytes` (for agreement checks, not security).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_cover_the_rows_once_in_rank_order() {
        for size in 1..=5 {
            for n in [0usize, 1, 6, 7, 64] {
                let mut next = 0;
                for rank in 0..size {
                    let w = World {
                        rank,
                        size,
                        local_rank: rank,
                        local_size: size,
                    };
                    let (a, b) = w.share(n);
                    assert_eq!(a, next, "size {size} n {n} rank {rank}");
                    assert!(b - a <= n.div_ceil(size));
                    next = b;
                }
                assert_eq!(next, n);
            }
        }
    }

    #[test]
    fn a_world_of_one_leaves_values_alone() {
        let w = world();
        assert!(!w.is_distributed());
        let mut v = vec![1.5f32, -2.0];
        w.sum_f32(&mut v).unwrap();
        assert_eq!(v, [1.5, -2.0]);
        w.agree("anything", 7).unwrap();
        let dev = burn::tensor::Device::flex();
        let mut g = BTreeMap::new();
        g.insert("a".to_string(), Tensor::<1>::from_floats([1.0, 2.0], &dev));
        assert_eq!(sum_gradients(&w, &mut g).unwrap(), 0.0);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
