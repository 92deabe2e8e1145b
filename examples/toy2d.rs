//! 2-D toy data end to end: train the MLP on eight Gaussians, sample 512 points with DDIM and
//! report how many fall near a mode. Runs in seconds:
//!
//! ```sh
//! cargo run --release --example toy2d            # 300 steps
//! cargo run --release --example toy2d -- 3000    # closer to the modes
//! ```

use anyhow::Result;
use ddpm::{PointPipeline, RunConfig, SampleOptions};

fn main() -> Result<()> {
    let steps = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(300);
    let dir = tempfile::tempdir()?;
    let config = RunConfig {
        data: "toy:8-gaussians".into(),
        preset: "mlp".into(),
        steps,
        batch_size: 256,
        lr: 1e-3,
        out: dir.path().join("run").display().to_string(),
        ..RunConfig::default()
    };
    let run = ddpm::train_auto(&config, false, true)?;
    println!(
        "trained {} steps in {:.1} s, last loss {:.4}",
        run.steps, run.wall_s, run.last_loss
    );
    let points = PointPipeline::load(&run.run)?.sample(&SampleOptions::ddim(512, 50))?;
    // The eight modes sit on a circle of radius 0.8 (ddpm::data::toy2d); count the points
    // within 0.25 of one.
    let near = points
        .values
        .chunks(2)
        .filter(|p| {
            (0..8).any(|k| {
                let m = ddpm::data::toy2d::eight_gaussians_mean(k);
                let (dx, dy) = (p[0] as f64 - m[0], p[1] as f64 - m[1]);
                (dx * dx + dy * dy).sqrt() < 0.25
            })
        })
        .count();
    println!(
        "{near} of {} samples lie within 0.25 of a mode",
        points.len()
    );
    Ok(())
}
