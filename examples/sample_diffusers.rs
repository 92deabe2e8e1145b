//! Sample from a model in Hugging Face diffusers' format: a folder with `unet/` and
//! `scheduler/` (a pipeline), or the flat layout, or a Hub repo id fetched once with
//! `ddpm fetch google/ddpm-cifar10-32`. Writes PNGs.
//!
//! ```sh
//! cargo run --release --example sample_diffusers -- tests/fixtures/diffusers/tiny-pipeline out/
//! cargo run --release --example sample_diffusers -- google/ddpm-cifar10-32 out/ 16 50
//! ```

use anyhow::{Context, Result};
use ddpm::{ImagePipeline, SampleOptions};

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .context("usage: sample_diffusers MODEL OUT_DIR [N] [STEPS]")?;
    let out = args
        .next()
        .context("usage: sample_diffusers MODEL OUT_DIR [N] [STEPS]")?;
    let n = args.next().map(|s| s.parse()).transpose()?.unwrap_or(4);
    let steps = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
    let pipeline = ImagePipeline::load(&model)?;
    let c = pipeline.config();
    println!(
        "{model}: a {}-step {} chain, {}×{} images",
        pipeline.diffusion().num_timesteps(),
        c.schedule,
        c.item_shape()?[1],
        c.item_shape()?[2]
    );
    let samples = pipeline.sample(&SampleOptions::ddim(n, steps).seed(1))?;
    samples.save_pngs(&out)?;
    println!("wrote {} images to {out}", samples.len());
    Ok(())
}
