//! The files `ddpm sample` writes, written batch by batch as the images come, so that any `--n`
//! runs in the memory of one batch: a PNG per image (`images/`, or `images/CLASS/`), the grid of
//! the first images, `samples.safetensors`, and for 2-D models `samples.csv` and a scatter plot.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::files::{AtomicWriter, write_atomic};
use crate::store::tensors::safetensors_f32_header;
use crate::viz::grid::{Scatter, encode_png, image_pixels, save_grid, square_cols};

/// The most images `grid.png` shows (a 32 × 32 grid); the PNG files hold every image.
pub(super) const GRID_MAX: usize = 1024;

/// Which images the grid shows, and where.
#[derive(Debug, Clone, Copy, PartialEq)]
struct GridLayout {
    /// Images in all.
    n: usize,
    /// Grid rows given to classes (the requested classes, in order), 0 when none.
    class_rows: usize,
    /// Columns of the grid.
    cols: usize,
    /// Images the grid holds.
    kept: usize,
}

impl GridLayout {
    /// The grid of `n` images, with one row per requested class when there are `class_rows`
    /// (blocks of images per class, as [`crate::sample::guidance::labels_for`] assigns them) and
    /// the images divide evenly among them, or when there are more than [`GRID_MAX`].
    fn new(n: usize, class_rows: usize) -> Self {
        let by_class = class_rows > 0 && class_rows <= GRID_MAX && n >= class_rows;
        if by_class && n <= GRID_MAX && n.is_multiple_of(class_rows) {
            return Self {
                n,
                class_rows,
                cols: n / class_rows,
                kept: n,
            };
        }
        if by_class && n > GRID_MAX {
            let cols = (GRID_MAX / class_rows).min(n / class_rows).max(1);
            return Self {
                n,
                class_rows,
                cols,
                kept: cols * class_rows,
            };
        }
        let kept = n.min(GRID_MAX);
        Self {
            n,
            class_rows: 0,
            cols: square_cols(kept),
            kept,
        }
    }

    /// The grid position of image `i`, `None` when the grid does not show it.
    fn slot(&self, i: usize) -> Option<usize> {
        if self.class_rows == 0 || self.kept == self.n {
            return (i < self.kept).then_some(i);
        }
        // Image i belongs to the block of the class listed j-th; that block starts at ⌈j·n/rows⌉.
        let rows = self.class_rows;
        let j = i * rows / self.n;
        let start = (j * self.n).div_ceil(rows);
        let pos = i - start;
        (pos < self.cols).then_some(j * self.cols + pos)
    }
}

/// Writes the images of one `ddpm sample` call as they arrive. Only the process that writes
/// (rank 0 under MPI) makes one; its files appear under their names when complete.
pub(super) struct SampleFiles {
    out: PathBuf,
    item_shape: Vec<usize>,
    class_names: Option<Vec<String>>,
    grid: GridLayout,
    grid_values: Vec<f32>,
    /// For 2-D samples: `samples.csv` and the scatter plot that is their `grid.png`.
    points: Option<(AtomicWriter, Scatter)>,
    safetensors: Option<AtomicWriter>,
    written: usize,
}

impl SampleFiles {
    /// The files of `n` items of `item_shape` in `out`; `class_rows` requested classes (0:
    /// none) named by `class_names` where known; `safetensors`: also the raw values.
    pub(super) fn create(
        out: &Path,
        n: usize,
        item_shape: &[usize],
        class_rows: usize,
        class_names: Option<Vec<String>>,
        safetensors: bool,
    ) -> Result<Self> {
        let image = item_shape.len() == 3;
        let grid = GridLayout::new(n, class_rows);
        let item: usize = item_shape.iter().product();
        let safetensors = if safetensors {
            let mut w = AtomicWriter::create(&out.join("samples.safetensors"))?;
            let mut shape = vec![n];
            shape.extend(item_shape);
            w.write(&safetensors_f32_header("samples", &shape))?;
            Some(w)
        } else {
            None
        };
        Ok(Self {
            out: out.to_path_buf(),
            item_shape: item_shape.to_vec(),
            class_names,
            grid,
            grid_values: vec![0.0; if image { grid.kept * item } else { 0 }],
            points: if image {
                None
            } else {
                let csv = AtomicWriter::create(&out.join("samples.csv"))?;
                Some((csv, Scatter::new(512, 1.5)))
            },
            safetensors,
            written: 0,
        })
    }

    /// Writes the next items, `first` onward (each call continues where the last ended), with
    /// their classes when classes were requested.
    pub(super) fn write(
        &mut self,
        first: usize,
        values: &[f32],
        labels: Option<&[usize]>,
    ) -> Result<()> {
        let item: usize = self.item_shape.iter().product();
        let count = values.len() / item.max(1);
        if first != self.written || first + count > self.grid.n {
            bail!(
                "samples {first}..{} written out of order (after {})",
                first + count,
                self.written
            );
        }
        if let Some(w) = &mut self.safetensors {
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.write(&bytes)?;
        }
        if let Some((csv, scatter)) = &mut self.points {
            scatter.add(values);
            let mut text = String::new();
            for p in values.chunks(item.max(1)) {
                let row: Vec<String> = p.iter().map(|v| v.to_string()).collect();
                text.push_str(&row.join(","));
                text.push('\n');
            }
            csv.write(text.as_bytes())?;
        } else {
            let [c, h, w] = [self.item_shape[0], self.item_shape[1], self.item_shape[2]];
            for k in 0..count {
                let i = first + k;
                let px = image_pixels(values, [count, c, h, w], k);
                let dir = self.image_dir(labels.map(|l| l[k]));
                write_atomic(&dir.join(format!("{i:05}.png")), &encode_png(w, h, c, &px)?)?;
                if let Some(s) = self.grid.slot(i) {
                    self.grid_values[s * item..(s + 1) * item]
                        .copy_from_slice(&values[k * item..(k + 1) * item]);
                }
            }
        }
        self.written += count;
        Ok(())
    }

    /// `images`, or `images/CLASS` for an image of class `label`. A name that is not a plain
    /// file name (a path separator, `.`, `..`) is replaced by the class number.
    fn image_dir(&self, label: Option<usize>) -> PathBuf {
        let images = self.out.join("images");
        let Some(l) = label else {
            return images;
        };
        let name = self
            .class_names
            .as_ref()
            .and_then(|n| n.get(l))
            .filter(|n| !n.is_empty() && *n != "." && *n != ".." && !n.contains(['/', '\\', '\0']))
            .cloned()
            .unwrap_or_else(|| l.to_string());
        images.join(name)
    }

    /// Writes the grid (or scatter plot) and puts the streamed files in place.
    pub(super) fn finish(self) -> Result<()> {
        if self.written != self.grid.n {
            bail!("{} of {} samples were written", self.written, self.grid.n);
        }
        let grid_png = self.out.join("grid.png");
        match self.points {
            Some((csv, scatter)) => {
                scatter.save(&grid_png)?;
                csv.finish()?;
            }
            None => {
                let [c, h, w] = [self.item_shape[0], self.item_shape[1], self.item_shape[2]];
                save_grid(
                    &grid_png,
                    &self.grid_values,
                    [self.grid.kept, c, h, w],
                    self.grid.cols,
                )?;
            }
        }
        if let Some(st) = self.safetensors {
            st.finish()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_keeps_every_image_up_to_its_size() {
        let g = GridLayout::new(64, 0);
        assert_eq!((g.cols, g.kept), (8, 64));
        assert!((0..64).all(|i| g.slot(i) == Some(i)));
        // One row per class when the images divide evenly (as before the cap).
        let g = GridLayout::new(30, 3);
        assert_eq!((g.cols, g.kept), (10, 30));
        // Uneven: a square grid of all.
        let g = GridLayout::new(31, 3);
        assert_eq!((g.class_rows, g.cols, g.kept), (0, 6, 31));
    }

    #[test]
    fn beyond_the_cap_the_grid_shows_the_first_images_of_each_class() {
        let g = GridLayout::new(5000, 0);
        assert_eq!((g.cols, g.kept), (32, GRID_MAX));
        assert_eq!(g.slot(1023), Some(1023));
        assert_eq!(g.slot(1024), None);
        // Three classes over 5000 images in blocks, as labels_for assigns them: the grid's row
        // j holds the first columns of block j, and every slot is filled exactly once.
        let (n, rows) = (5000, 3);
        let labels = crate::sample::guidance::labels_for("0,1,2", n, 3).unwrap();
        let g = GridLayout::new(n, rows);
        assert_eq!((g.cols, g.kept), (341, 1023));
        let mut seen = vec![false; g.kept];
        for (i, &label) in labels.iter().enumerate() {
            if let Some(s) = g.slot(i) {
                assert_eq!(s / g.cols, label, "image {i} in row of class {label}");
                assert!(!seen[s], "slot {s} twice");
                seen[s] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
