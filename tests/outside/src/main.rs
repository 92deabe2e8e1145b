//! Trains the tiny preset on 8×8 images made here, samples 4 images and computes their
//! bits/dim, through the crate-root API only.

use std::error::Error;
use std::sync::Arc;

use ddpm::{ImagePipeline, InMemory, NllOptions, RunConfig, SampleOptions};

fn main() -> Result<(), Box<dyn Error>> {
    // 64 images of a bright 3×3 square on a dark background, at every place it fits.
    let mut values = Vec::new();
    for k in 0..64 {
        let (r0, c0) = (k % 6, (k / 6) % 6);
        for r in 0..8 {
            for c in 0..8 {
                let inside = (r0..r0 + 3).contains(&r) && (c0..c0 + 3).contains(&c);
                values.push(if inside { 0.9 } else { -0.9 });
            }
        }
    }
    let squares = InMemory::try_new(values, vec![1, 8, 8], Vec::new(), 0, "squares")?;
    let out = std::env::temp_dir().join(format!("ddpm-outside-{}", std::process::id()));
    let config = RunConfig {
        data: "squares".into(),
        preset: "tiny".into(),
        steps: 5,
        batch_size: 8,
        sample_count: 4,
        out: out.display().to_string(),
        ..RunConfig::default()
    };
    let run = ddpm::train_dataset(&config, Arc::new(squares), false, true)?;
    let pipeline = ImagePipeline::load(&run.run)?;
    let samples = pipeline.sample(&SampleOptions::ddim(4, 5).seed(7))?;
    let options = NllOptions {
        limit: None,
        batch: 4,
        seed: 0,
        t_samples: 4,
    };
    let report = pipeline.bits_per_dim(&samples.to_dataset()?, options)?;
    std::fs::remove_dir_all(&out)?;
    println!(
        "trained {} steps, sampled {} images of {:?}: {:.3} ± {:.3} bits/dim",
        run.steps,
        samples.len(),
        &samples.shape[1..],
        report.bpd,
        report.bpd_stderr
    );
    if !(report.bpd.is_finite() && report.bpd > 0.0) || samples.shape != [4, 1, 8, 8] {
        return Err("unexpected result".into());
    }
    Ok(())
}
