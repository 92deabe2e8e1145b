//! Choosing the compute device by name, with a clear error (never a panic) when the named one
//! is not built in or not present.

use anyhow::{Result, bail};
use burn::tensor::Device;

pub mod kernel_cache;

/// The device names `--device` accepts.
pub const DEVICE_NAMES: &str = "cpu, cuda, wgpu, cubecl-cpu or auto";

/// `cpu` (burn's `flex` backend), `cuda` (feature `cuda`), `wgpu` (feature `wgpu`),
/// `cubecl-cpu` (feature `cubecl-cpu`: the GPU route's CubeCL backend on this CPU), or `auto`:
/// the first of cuda, wgpu and cpu that this binary has and this machine offers.
pub fn by_name(name: &str) -> Result<Device> {
    match name {
        "cpu" => cpu(),
        "cuda" => cuda(),
        "wgpu" => wgpu(),
        "cubecl-cpu" => cubecl_cpu(),
        "auto" => {
            // A bad DDPM_KERNEL_CACHE is an error, not a silent fall-back to the CPU.
            #[cfg(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu"))]
            kernel_cache::configure()?;
            cuda().or_else(|_| wgpu()).or_else(|_| cpu()).map_err(|_| {
                anyhow::anyhow!(
                    "--device auto: this binary has no backend that runs here (built with: {})",
                    built_backends().join(", ")
                )
            })
        }
        other => bail!("--device: unknown device `{other}`; expected {DEVICE_NAMES}"),
    }
}

/// The resolved name of a `--device` value (`auto` becomes what it picks).
pub fn resolve_name(name: &str) -> Result<&'static str> {
    Ok(match name {
        "cpu" => "cpu",
        "cuda" => "cuda",
        "wgpu" => "wgpu",
        "cubecl-cpu" => "cubecl-cpu",
        "auto" => {
            #[cfg(any(feature = "cuda", feature = "wgpu", feature = "cubecl-cpu"))]
            kernel_cache::configure()?;
            if cuda().is_ok() {
                "cuda"
            } else if wgpu().is_ok() {
                "wgpu"
            } else {
                "cpu"
            }
        }
        other => bail!("--device: unknown device `{other}`; expected {DEVICE_NAMES}"),
    })
}

/// The backends compiled into this binary.
pub fn built_backends() -> Vec<&'static str> {
    let mut v = Vec::new();
    if cfg!(feature = "flex") {
        v.push("cpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cubecl-cpu") {
        v.push("cubecl-cpu");
    }
    v
}

/// A device of any backend this binary has, for work that only needs shapes (the CPU where
/// built in).
pub fn any() -> Result<Device> {
    cpu().or_else(|_| cuda()).or_else(|_| wgpu())
}

fn cpu() -> Result<Device> {
    #[cfg(feature = "flex")]
    return Ok(Device::flex());
    #[cfg(not(feature = "flex"))]
    bail!(
        "--device cpu: this binary was built without the `flex` feature (its backends: {})",
        built_backends().join(", ")
    );
}

fn cuda() -> Result<Device> {
    #[cfg(feature = "cuda")]
    {
        kernel_cache::configure()?;
        // Listing devices probes for the driver library and counts GPUs without panicking;
        // the device's own lazy initialisation would panic on a machine without either.
        if Device::enumerate(burn::tensor::DeviceType::Cuda)
            .into_iter()
            .next()
            .is_none()
        {
            bail!(
                "--device cuda: no CUDA GPU found (no NVIDIA driver library libcuda.so.1, or no GPU \
                 it can see); use --device cpu, or --device auto to take what is there"
            );
        }
        // Under an MPI launcher, one GPU per rank of a machine.
        let gpus = Device::enumerate(burn::tensor::DeviceType::Cuda)
            .len()
            .max(1);
        Ok(Device::cuda(crate::dist::world().local_rank % gpus))
    }
    #[cfg(not(feature = "cuda"))]
    bail!(
        "--device cuda: this binary was built without the `cuda` feature (scripts/cuda-toolchain.sh, \
         then cargo build --release --features cuda)"
    );
}

fn wgpu() -> Result<Device> {
    #[cfg(feature = "wgpu")]
    {
        kernel_cache::configure()?;
        if Device::enumerate(burn::tensor::DeviceType::Wgpu)
            .into_iter()
            .next()
            .is_none()
        {
            bail!("--device wgpu: no graphics adapter found (Vulkan, Metal or DirectX 12)");
        }
        Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice))
    }
    #[cfg(not(feature = "wgpu"))]
    bail!(
        "--device wgpu: this binary was built without the `wgpu` feature (cargo build --release --features wgpu)"
    );
}

fn cubecl_cpu() -> Result<Device> {
    #[cfg(feature = "cubecl-cpu")]
    {
        kernel_cache::configure()?;
        Ok(Device::cpu())
    }
    #[cfg(not(feature = "cubecl-cpu"))]
    bail!(
        "--device cubecl-cpu: this binary was built without the `cubecl-cpu` feature \
         (scripts/cuda-toolchain.sh, then cargo build --release --features cubecl-cpu)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_absent_backends_give_errors_not_panics() {
        let e = by_name("tpu").unwrap_err().to_string();
        assert!(
            e.contains("unknown device `tpu`") && e.contains("auto"),
            "{e}"
        );
        assert!(resolve_name("tpu").is_err());
        // Whatever this binary has, asking for cuda on a machine without it is an error that
        // says why (this machine has no GPU, or the feature is off).
        if let Err(e) = by_name("cuda") {
            let e = e.to_string();
            assert!(e.starts_with("--device cuda: "), "{e}");
        }
        if cfg!(feature = "flex") {
            assert!(by_name("cpu").is_ok());
            assert!(by_name("auto").is_ok());
            assert!(any().is_ok());
        }
        assert!(!built_backends().is_empty());
    }
}
