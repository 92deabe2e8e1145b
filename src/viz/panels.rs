//! Labelled rows of image panels: the forward process of one image and the denoising chain
//! (x_t and x̂0 at several t), drawn large enough to read, with the t of each column written
//! above it and the name of each row beside it.

use std::path::Path;

use anyhow::{Result, bail};
use plotters::prelude::*;

use super::grid::to_u8;
use super::plot::{FAMILY, err, render};

/// One row: its label and one image per column (`[c, h, w]`, values in [-1, 1]).
pub type Row = (String, Vec<Vec<f32>>);

/// Draws `rows` of images under `title`, column `j` headed by `columns[j]`, each image pixel
/// drawn as a `scale`×`scale` square. Grayscale when `shape[0]` is 1, RGB when 3.
pub fn save_panels(
    path: &Path,
    title: &str,
    columns: &[String],
    rows: &[Row],
    shape: [usize; 3],
    scale: usize,
) -> Result<()> {
    let [c, h, w] = shape;
    if c != 1 && c != 3 {
        bail!("images with {c} channels cannot be drawn (expected 1 or 3)");
    }
    if rows.iter().any(|(_, imgs)| imgs.len() != columns.len()) {
        bail!("every row needs one image per column");
    }
    let (pw, ph) = (w * scale, h * scale);
    let (gap, left, top) = (8, 90, 60);
    let width = left + columns.len() * (pw + gap) + gap;
    let height = top + rows.len() * (ph + gap) + gap;
    render(path, width as u32, height as u32, |root| {
        root.draw(&Text::new(
            title.to_string(),
            (gap as i32, 8),
            (FAMILY, 20).into_font(),
        ))
        .map_err(err)?;
        for (j, label) in columns.iter().enumerate() {
            let x = (left + j * (pw + gap)) as i32;
            root.draw(&Text::new(label.clone(), (x, 36), (FAMILY, 15).into_font()))
                .map_err(err)?;
        }
        for (i, (label, imgs)) in rows.iter().enumerate() {
            let y0 = top + i * (ph + gap);
            root.draw(&Text::new(
                label.clone(),
                (gap as i32, (y0 + ph / 2) as i32 - 8),
                (FAMILY, 15).into_font(),
            ))
            .map_err(err)?;
            for (j, img) in imgs.iter().enumerate() {
                if img.len() != c * h * w {
                    bail!(
                        "an image of the wrong size ({} values for {c}×{h}×{w})",
                        img.len()
                    );
                }
                let x0 = left + j * (pw + gap);
                for y in 0..h {
                    for x in 0..w {
                        let v = |ch: usize| to_u8(img[(ch * h + y) * w + x]);
                        let color = if c == 1 {
                            RGBColor(v(0), v(0), v(0))
                        } else {
                            RGBColor(v(0), v(1), v(2))
                        };
                        let (px, py) = ((x0 + x * scale) as i32, (y0 + y * scale) as i32);
                        root.draw(&Rectangle::new(
                            [(px, py), (px + scale as i32, py + scale as i32)],
                            color.filled(),
                        ))
                        .map_err(err)?;
                    }
                }
            }
        }
        Ok(())
    })
}
