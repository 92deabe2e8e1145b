//! Measure a model: the variational bound of held-out images in bits/dim (Ho et al. eq. 5, every
//! term at every t) and the FID of its samples against real images. Trains the `tiny` U-Net on
//! 8×8 images of bars first (a few seconds), unless given a run of 8×8 images.
//!
//! FID needs pytorch-fid's Inception weights (`ddpm fetch` prints where to get them); without a
//! weights file this example uses deterministic stand-in weights, so its "FID" is a distance
//! in a random network's features, not a FID.
//!
//! ```sh
//! cargo run --release --example evaluate
//! cargo run --release --example evaluate -- RUN pt_inception-2015-12-05-6726825d.pth
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use ddpm::eval::fid::fid_between;
use ddpm::eval::inception::{InceptionV3, SyntheticWeights, Weights, open_weights};
use ddpm::{ImagePipeline, InMemory, NllOptions, RunConfig, SampleOptions};

/// `n` images 8×8 of a bar: vertical in even images, horizontal in odd ones, at every place.
fn bars(n: usize) -> Result<InMemory> {
    let values = (0..n * 64)
        .map(|i| {
            let (k, r, c) = (i / 64, (i % 64) / 8, i % 8);
            let at = (k / 2) % 8;
            let on = if k % 2 == 0 { c == at } else { r == at };
            if on { 1.0 } else { -1.0 }
        })
        .collect();
    InMemory::try_new(values, vec![1, 8, 8], Vec::new(), 0, "bars")
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = tempfile::tempdir()?;
    let run = match args.next() {
        Some(run) => PathBuf::from(run),
        None => {
            let config = RunConfig {
                preset: "tiny".into(),
                steps: 300,
                batch_size: 16,
                lr: 1e-3,
                out: dir.path().join("run").display().to_string(),
                ..RunConfig::default()
            };
            ddpm::train_dataset(&config, Arc::new(bars(64)?), false, true)?.run
        }
    };
    let pipeline = ImagePipeline::load(&run)?;
    let held_out = bars(16)?;
    let all_terms = NllOptions {
        limit: None,
        batch: 16,
        seed: 0,
        t_samples: 0,
    };
    let nll = pipeline.bits_per_dim(&held_out, all_terms)?;
    println!(
        "bound: {:.3} ± {:.3} bits/dim over {} images (prior {:.2e}, decoder {:.3})",
        nll.bpd, nll.bpd_stderr, nll.n, nll.prior_bpd, nll.decoder_bpd
    );
    let samples = pipeline
        .sample(&SampleOptions::ddim(16, 50).seed(4))?
        .to_dataset()?;
    let weights: Box<dyn Weights> = match args.next() {
        Some(path) => open_weights(path.as_ref())?,
        None => {
            println!("(no Inception weights given: stand-in weights, not a real FID)");
            Box::new(SyntheticWeights)
        }
    };
    let device = ddpm::device::by_name("cpu")?;
    let inception = InceptionV3::load(weights.as_ref(), &device)?;
    let fid = fid_between(&inception, &samples, &held_out, None, 16)?;
    println!("FID of 16 samples against 16 real images: {fid:.2} (comparable only at equal sizes)");
    Ok(())
}
