//! Image grids and single images as PNG.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::files::write_atomic;

/// Converts a value in [−1, 1] to a byte (clipped, rounded).
pub fn to_u8(v: f32) -> u8 {
    (((v.clamp(-1.0, 1.0) + 1.0) * 127.5).round()) as u8
}

/// Encodes 8-bit pixels (`channels` 1 or 3, row-major interleaved) as PNG bytes.
pub fn encode_png(width: usize, height: usize, channels: usize, pixels: &[u8]) -> Result<Vec<u8>> {
    let color = match channels {
        1 => png::ColorType::Grayscale,
        3 => png::ColorType::Rgb,
        c => bail!("cannot write a PNG with {c} channels (expected 1 or 3)"),
    };
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, width as u32, height as u32);
        enc.set_color(color);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().context("PNG header")?;
        w.write_image_data(pixels).context("PNG data")?;
    }
    Ok(out)
}

/// Interleaves image `i` of a `[N, C, H, W]` batch (values in [−1, 1]) into 8-bit HWC pixels.
pub fn image_pixels(batch: &[f32], shape: [usize; 4], i: usize) -> Vec<u8> {
    let [_, c, h, w] = shape;
    let img = &batch[i * c * h * w..(i + 1) * c * h * w];
    let mut px = vec![0u8; h * w * c];
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                px[(y * w + x) * c + ch] = to_u8(img[(ch * h + y) * w + x]);
            }
        }
    }
    px
}

/// Lays a `[N, C, H, W]` batch (values in [−1, 1]) out as a grid with `cols` columns and a
/// 2-pixel border, and writes it atomically as PNG.
pub fn save_grid(path: &Path, batch: &[f32], shape: [usize; 4], cols: usize) -> Result<()> {
    let [n, c, h, w] = shape;
    let cols = cols.clamp(1, n.max(1));
    let rows = n.div_ceil(cols);
    let pad = 2;
    let gw = cols * (w + pad) + pad;
    let gh = rows * (h + pad) + pad;
    let mut px = vec![0u8; gw * gh * c];
    for i in 0..n {
        let img = image_pixels(batch, shape, i);
        let (r, col) = (i / cols, i % cols);
        let (oy, ox) = (pad + r * (h + pad), pad + col * (w + pad));
        for y in 0..h {
            let dst = ((oy + y) * gw + ox) * c;
            px[dst..dst + w * c].copy_from_slice(&img[y * w * c..(y + 1) * w * c]);
        }
    }
    write_atomic(path, &encode_png(gw, gh, c, &px)?)
}

/// Square columns for `n` images: ⌈√n⌉.
pub fn square_cols(n: usize) -> usize {
    (n as f64).sqrt().ceil().max(1.0) as usize
}

/// Rasterizes 2-D points in [−lim, lim]² as black dots on a white `size`×`size` PNG.
pub fn save_scatter(path: &Path, points: &[f32], size: usize, lim: f32) -> Result<()> {
    let mut s = Scatter::new(size, lim);
    s.add(points);
    s.save(path)
}

/// A scatter plot drawn as points arrive (any number of them in `size`² bytes): black dots
/// on white for points in [−lim, lim]².
pub struct Scatter {
    px: Vec<u8>,
    size: usize,
    lim: f32,
}

impl Scatter {
    /// An empty `size`×`size` plot of [−lim, lim]².
    pub fn new(size: usize, lim: f32) -> Self {
        Self {
            px: vec![255u8; size * size],
            size,
            lim,
        }
    }

    /// Draws interleaved (x, y) points.
    pub fn add(&mut self, points: &[f32]) {
        let (size, lim) = (self.size, self.lim);
        for p in points.chunks_exact(2) {
            let x = ((p[0] + lim) / (2.0 * lim) * size as f32) as isize;
            let y = ((lim - p[1]) / (2.0 * lim) * size as f32) as isize;
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let (xx, yy) = (x + dx, y + dy);
                if xx >= 0 && yy >= 0 && (xx as usize) < size && (yy as usize) < size {
                    self.px[yy as usize * size + xx as usize] = 0;
                }
            }
        }
    }

    /// Writes the plot atomically as PNG.
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &encode_png(self.size, self.size, 1, &self.px)?)
    }
}
