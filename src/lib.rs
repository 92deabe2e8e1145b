//! `ddpm`: Denoising Diffusion Probabilistic Models (Ho et al. 2020) in Rust on burn: training,
//! sampling and evaluation, as a library and as the `ddpm` command.
//!
//! # Quick start
//!
//! Train a small model on 2-D toy data, then sample from the run it wrote:
//!
//! ```
//! use ddpm::{PointPipeline, RunConfig, SampleOptions};
//!
//! let dir = tempfile::tempdir()?;
//! let config = RunConfig {
//!     data: "toy:8-gaussians".into(),
//!     preset: "mlp".into(),
//!     steps: 20,
//!     batch_size: 64,
//!     sample_count: 64,
//!     out: dir.path().join("run").display().to_string(),
//!     ..RunConfig::default()
//! };
//! let run = ddpm::train_auto(&config, false, true)?;
//! assert_eq!(run.steps, 20);
//!
//! let pipeline = PointPipeline::load(&run.run)?;
//! let points = pipeline.sample(&SampleOptions::ddim(8, 10).seed(3))?;
//! assert_eq!(points.shape, [8, 2]);
//! assert!(points.values.iter().all(|v| v.is_finite()));
//! # Ok::<(), anyhow::Error>(())
//! ```
//!
//! Images work the same way with [`ImagePipeline`] (the U-Net presets), from a run of
//! `ddpm train`, a diffusers model folder or a Hub repo id fetched with `ddpm fetch`.
//!
//! # Features
//!
//! | feature | what it adds | needs at build time | needs at run time |
//! |---|---|---|---|
//! | `flex` (default) | burn's CPU backend with this crate's kernels (`device: "cpu"`) | — | — |
//! | `cuda` | NVIDIA GPUs (`"cuda"`), with burn's fusion and autotuning | LLVM 23 with NVPTX (`scripts/cuda-toolchain.sh` installs it from PyPI) | the driver's `libcuda.so.1`; `libdevice.10.bc` under `$CUDA_PATH/nvvm/libdevice/` |
//! | `wgpu` | GPUs through Vulkan, Metal or DirectX 12 (`"wgpu"`) | — | a Vulkan (or Metal / DX12) driver |
//! | `cubecl-cpu` | the GPU route's fused kernels compiled for the CPU (`"cubecl-cpu"`), to test it without a GPU | as `cuda` | — |
//! | `mpi` | data-parallel training, sampling and evaluation over processes (`mpirun -np N ddpm …`) | an MPI with `mpicc` (Debian: `libopenmpi-dev openmpi-bin`) | `mpirun` (or `srun`) |
//!
//! `device: "auto"` takes the first GPU backend compiled in that finds a device, else the CPU.
//!
//! # Crate map
//!
//! In the order a reader should meet them. Each module uses only the modules listed before it
//! and those of the last group, which lie beneath everything (ARCHITECTURE.md draws the layers
//! and follows one training step and one sample through them).
//!
//! **The science, in f64 on the host and generic over any network**
//! - [`schedule`]: noise schedules β_1..β_T and every table derived from them.
//! - [`diffusion`]: the forward process, its posterior, the reverse step, the variational bound
//!   in bits/dim and the training losses, EDM's preconditioning ([`diffusion::edm`]), over any
//!   [`diffusion::Denoiser`].
//! - [`vdm`]: Variational Diffusion Models: γ(t) fixed or learned, continuous and discrete time.
//!
//! **Networks and their training machinery**
//! - [`model`]: the U-Net, the MLP for 2-D points, the noise-aware guidance classifier; they
//!   know nothing of schedules.
//! - [`optim`]: AdamW with warm-up and clipping, the EMA of the weights, post-hoc EMA's
//!   power-function averages and their least-squares combination ([`optim::power_ema`]).
//!
//! **Using the science**
//! - [`sample`]: samplers (ancestral, DDIM, DPM-Solver++, EDM's Heun and Euler) and choosing
//!   one by name, guidance, batched drawing.
//! - [`config`]: a run's configuration ([`config::RunConfig`], its `config.toml`) and the
//!   diffusion it describes.
//! - [`pretrained`]: diffusers checkpoints in and out; [`hub`]: fetching them.
//! - [`run`]: a run directory: checkpoints, their state, the networks a run builds, loading a
//!   model for inference (a run, a checkpoint, a diffusers folder, a Hub repo), post-hoc EMA
//!   reconstruction ([`run::posthoc`]).
//! - [`eval`]: likelihood (bits/dim), FID, the judging classifier's Fréchet distance and
//!   guidance trade-offs.
//! - [`viz`]: image grids and charts.
//! - [`train`]: the training loop (Algorithm 1) and the guidance classifier's trainer.
//! - [`pipeline`]: a trained model loaded to sample from or measure, in a few lines.
//! - `bench`: throughput of a training step or a network evaluation (for `ddpm bench`).
//! - `cli`: the `ddpm` command, one file per subcommand: parses, calls the library, prints.
//!
//! **Beneath everything**
//! - [`data`]: datasets (IDX, CIFAR-10, image folders, toy 2-D) and the batch stream.
//! - [`store`]: named host tensors, safetensors files, a module's parameters by name.
//! - [`rng`]: the seedable generator and every random stream by name ([`rng::streams`]).
//! - [`error`]: the entry points' [`Error`], with an [`ErrorKind`] to act on.
//! - [`files`]: atomic writes, bounded reads, locks; [`cache`]: the cache root on this machine;
//!   [`device`]: choosing the backend and where the GPU routes keep their compiled kernels;
//!   [`dist`]: MPI ranks; `heap`: the allocator's settings; `kernels`: hand-written CPU
//!   kernels for burn's `flex` backend, and CubeCL kernels for the GPU routes.
//!
//! `bench`, `cli`, `heap` and `kernels` are public only for the `ddpm` binary and the
//! benchmarks; they are hidden from the documentation and not part of the library's API.

#![warn(missing_docs)]

pub use config::RunConfig;
pub use data::Dataset;
pub use data::memory::InMemory;
pub use diffusion::{Denoiser, GaussianDiffusion};
pub use error::{Error, ErrorKind, Result};
pub use eval::nll::{NllOptions, NllReport};
pub use pipeline::{DrawExtras, ImagePipeline, Pipeline, PointPipeline, SampleOptions, Samples};
pub use schedule::{BetaSchedule, NoiseSchedule};
pub use train::{TrainSummary, train_auto, train_dataset};

#[doc(hidden)] // Internal: the `ddpm bench` command's measurement, not part of the library API.
pub mod bench;
pub mod cache;
#[doc(hidden)] // Internal: the command line, not part of the library API.
pub mod cli;
pub mod config;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod dist;
pub mod error;
pub mod eval;
pub mod files;
#[doc(hidden)]
// Internal: the allocator settings of the `ddpm` binary, not part of the library API.
pub mod heap;
pub mod hub;
#[doc(hidden)] // Internal: CPU kernels behind burn's operations, not part of the library API.
pub mod kernels;
pub mod model;
pub mod optim;
pub mod pipeline;
pub mod pretrained;
pub mod rng;
pub mod run;
pub mod sample;
pub mod schedule;
pub mod store;
pub mod train;
pub mod vdm;
pub mod viz;
