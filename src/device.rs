//! Choosing the compute device by name.

use anyhow::{Result, bail};
use burn::tensor::Device;

/// `cpu` (burn's `flex` backend), `cuda` (feature `cuda`) or `wgpu` (feature `wgpu`).
pub fn by_name(name: &str) -> Result<Device> {
    match name {
        "cpu" => {
            #[cfg(feature = "flex")]
            return Ok(Device::flex());
            #[cfg(not(feature = "flex"))]
            bail!("--device cpu: this binary was built without the `flex` feature");
        }
        "cuda" => {
            #[cfg(feature = "cuda")]
            return Ok(Device::cuda(0));
            #[cfg(not(feature = "cuda"))]
            bail!(
                "--device cuda: this binary was built without the `cuda` feature (cargo build --release --features cuda)"
            );
        }
        "wgpu" => {
            #[cfg(feature = "wgpu")]
            return Ok(Device::wgpu(burn::tensor::DeviceKind::DefaultDevice));
            #[cfg(not(feature = "wgpu"))]
            bail!(
                "--device wgpu: this binary was built without the `wgpu` feature (cargo build --release --features wgpu)"
            );
        }
        other => bail!("--device: unknown device `{other}`; expected cpu, cuda or wgpu"),
    }
}
