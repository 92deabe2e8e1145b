//! Train on a folder of images and sample from the run: here a folder of 8×8 PNGs made on the
//! spot (a bright square at every place it fits), the `tiny` U-Net, 200 steps. Any folder of
//! equally sized images works (`data: "folder:DIR"`, with a preset of that size; sub-folders
//! are classes). Runs in seconds:
//!
//! ```sh
//! cargo run --release --example train_folder
//! ```

use anyhow::Result;
use ddpm::{ImagePipeline, RunConfig, SampleOptions};

fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("squares");
    std::fs::create_dir_all(&images)?;
    for k in 0..36 {
        let (r0, c0) = (k / 6, k % 6);
        let img = image::GrayImage::from_fn(8, 8, |c, r| {
            let inside =
                (r0..r0 + 3).contains(&(r as usize)) && (c0..c0 + 3).contains(&(c as usize));
            image::Luma([if inside { 230 } else { 20 }])
        });
        img.save(images.join(format!("{k:02}.png")))?;
    }
    let config = RunConfig {
        data: format!("folder:{}", images.display()),
        preset: "tiny".into(),
        steps: 200,
        batch_size: 16,
        lr: 1e-3,
        out: dir.path().join("run").display().to_string(),
        ..RunConfig::default()
    };
    let run = ddpm::train_auto(&config, false, true)?;
    println!(
        "trained {} steps in {:.1} s (last loss {:.4}); the run is {}",
        run.steps,
        run.wall_s,
        run.last_loss,
        run.run.display()
    );
    let samples = ImagePipeline::load(&run.run)?.sample(&SampleOptions::ddim(8, 25).seed(2))?;
    let out = dir.path().join("samples");
    samples.save_pngs(&out)?;
    // A bright square is 9 of 64 pixels: how bright is each sample?
    for i in 0..samples.len() {
        let img = samples.image(i)?.to_luma8();
        let bright = img.pixels().filter(|p| p.0[0] > 128).count();
        println!("sample {i}: {bright} bright pixels of 64");
    }
    Ok(())
}
