//! A folder of PNG / JPEG images, resized (shorter side) and centre-cropped to a square.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use image::imageops::FilterType;

use super::Dataset;

/// Images from a folder (recursively), decoded once, as `[channels, size, size]` in [−1, 1].
pub struct ImageFolder {
    pixels: Vec<u8>,
    /// Class names (the sub-directories, sorted) and each image's class; empty when some image
    /// lies directly in the folder.
    classes: Vec<String>,
    labels: Vec<usize>,
    count: usize,
    channels: usize,
    size: usize,
    source: String,
}

/// Whether a folder entry is hidden (`.name`): skipped, like the temporary files of an
/// interrupted write (`.00001.png.tmpPID`) and lock files.
fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?;
    for e in entries {
        let p = e?.path();
        if is_hidden(&p) {
            continue;
        }
        if p.is_dir() {
            collect(&p, out)?;
        } else if matches!(
            p.extension()
                .and_then(|x| x.to_str())
                .map(|x| x.to_ascii_lowercase())
                .as_deref(),
            Some("png" | "jpg" | "jpeg")
        ) {
            out.push(p);
        }
    }
    Ok(())
}

impl ImageFolder {
    /// Loads every PNG/JPEG under `dir` as `channels` (1: grayscale, 3: RGB) × `size` × `size`.
    pub fn open(dir: &Path, channels: usize, size: usize) -> Result<Self> {
        if !matches!(channels, 1 | 3) {
            bail!("folder datasets are grayscale (1 channel) or RGB (3), not {channels}");
        }
        let mut files = Vec::new();
        collect(dir, &mut files)?;
        files.sort();
        if files.is_empty() {
            bail!("{}: holds no .png, .jpg or .jpeg images", dir.display());
        }
        let mut pixels = Vec::with_capacity(files.len() * channels * size * size);
        for f in &files {
            let img = image::open(f)
                .with_context(|| format!("{}: cannot decode the image", f.display()))?;
            let (w, h) = (img.width() as f64, img.height() as f64);
            let scale = size as f64 / w.min(h);
            let (nw, nh) = (
                ((w * scale).round() as u32).max(size as u32),
                ((h * scale).round() as u32).max(size as u32),
            );
            let resized = img.resize_exact(nw, nh, FilterType::Triangle);
            let (x0, y0) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
            let crop = resized.crop_imm(x0, y0, size as u32, size as u32);
            if channels == 1 {
                let g = crop.to_luma8();
                pixels.extend_from_slice(g.as_raw());
            } else {
                let rgb = crop.to_rgb8();
                // HWC → CHW.
                let raw = rgb.as_raw();
                for c in 0..3 {
                    pixels.extend(raw.iter().skip(c).step_by(3));
                }
            }
        }
        let (classes, labels) = class_folders(dir, &files);
        Ok(Self {
            pixels,
            classes,
            labels,
            count: files.len(),
            channels,
            size,
            source: dir.display().to_string(),
        })
    }
}

impl Dataset for ImageFolder {
    fn len(&self) -> usize {
        self.count
    }
    fn item_shape(&self) -> Vec<usize> {
        vec![self.channels, self.size, self.size]
    }
    fn get(&self, index: usize, out: &mut [f32]) {
        let n = self.channels * self.size * self.size;
        for (o, &p) in out.iter_mut().zip(&self.pixels[index * n..(index + 1) * n]) {
            *o = p as f32 / 127.5 - 1.0;
        }
    }
    fn describe(&self) -> String {
        format!(
            "{} ({} images, {}×{}×{})",
            self.source, self.count, self.channels, self.size, self.size
        )
    }
    fn classes(&self) -> Vec<String> {
        self.classes.clone()
    }
    fn label(&self, index: usize) -> Option<usize> {
        self.labels.get(index).copied()
    }
}

/// One class per sub-directory of `dir` (names sorted), each file labelled by the
/// sub-directory it lies under; no classes when any file lies directly in `dir`.
fn class_folders(dir: &Path, files: &[PathBuf]) -> (Vec<String>, Vec<usize>) {
    let first: Option<Vec<String>> = files
        .iter()
        .map(|f| {
            let rel = f.strip_prefix(dir).ok()?;
            let mut parts = rel.components();
            let top = parts.next()?;
            parts.next()?;
            Some(top.as_os_str().to_string_lossy().to_string())
        })
        .collect();
    let Some(first) = first else {
        return (Vec::new(), Vec::new());
    };
    let mut classes = first.clone();
    classes.sort();
    classes.dedup();
    let labels = first
        .iter()
        .map(|c| classes.binary_search(c).expect("a collected class"))
        .collect();
    (classes, labels)
}

/// Checks that `dir` holds only PNG/JPEG images (directly, or in one sub-directory per class as
/// `ddpm sample --class` writes them), all `size`×`size` (as a folder of generated samples must:
/// no resizing may hide a mismatch). Returns the number of images.
pub fn check_samples_folder(dir: &Path, size: usize) -> Result<usize> {
    let n = check_images(dir, size, true)?;
    if n == 0 {
        bail!("{}: holds no images", dir.display());
    }
    Ok(n)
}

fn check_images(dir: &Path, size: usize, top: bool) -> Result<usize> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the folder {}", dir.display()))?;
    let mut n = 0;
    for e in entries {
        let p = e?.path();
        if is_hidden(&p) {
            continue;
        }
        if p.is_dir() {
            if top {
                n += check_images(&p, size, false)?;
            } else {
                bail!(
                    "{}: a folder inside a class folder (samples are FOLDER/IMAGE or \
                     FOLDER/CLASS/IMAGE)",
                    p.display()
                );
            }
            continue;
        }
        let ext = p
            .extension()
            .and_then(|x| x.to_str())
            .map(|x| x.to_ascii_lowercase());
        if !matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            bail!(
                "{}: not an image (a samples folder must hold only .png/.jpg files)",
                p.display()
            );
        }
        let (w, h) = image::image_dimensions(&p)
            .with_context(|| format!("{}: cannot read the image", p.display()))?;
        if (w as usize, h as usize) != (size, size) {
            bail!(
                "{}: {w}×{h}, but the samples must all be {size}×{size} (mixed sizes)",
                p.display()
            );
        }
        n += 1;
    }
    Ok(n)
}

/// The first image (in path order) under `dir` or its sub-directories.
pub fn first_image(dir: &Path) -> Result<Option<PathBuf>> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    Ok(files.into_iter().min())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resizes_and_centre_crops_and_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        // A 40×20 RGB image: left half black, right half white.
        let img = image::RgbImage::from_fn(40, 20, |x, _| {
            if x < 20 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        img.save(dir.path().join("a.png")).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not an image").unwrap();
        let d = ImageFolder::open(dir.path(), 3, 10).unwrap();
        assert_eq!((d.len(), d.item_shape()), (1, vec![3, 10, 10]));
        let mut out = vec![0.0; 300];
        d.get(0, &mut out);
        // Resized to 20×10 then the centre 10×10 cropped: black on the left, white on the right.
        assert!(out[0] < -0.9 && out[9] > 0.9, "{} {}", out[0], out[9]);
        let g = ImageFolder::open(dir.path(), 1, 8).unwrap();
        assert_eq!(g.item_shape(), vec![1, 8, 8]);
        std::fs::write(dir.path().join("broken.jpg"), b"garbage").unwrap();
        let e = ImageFolder::open(dir.path(), 1, 8)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("broken.jpg"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        assert!(
            ImageFolder::open(empty.path(), 1, 8)
                .err()
                .unwrap()
                .to_string()
                .contains("no .png")
        );
    }

    #[test]
    fn sub_directories_are_classes_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        for (class, shade) in [("zebra", 200u8), ("cat", 10), ("dog", 100)] {
            let sub = dir.path().join(class);
            std::fs::create_dir_all(&sub).unwrap();
            for i in 0..2u8 {
                image::GrayImage::from_pixel(4, 4, image::Luma([shade + i]))
                    .save(sub.join(format!("{i}.png")))
                    .unwrap();
            }
        }
        let d = ImageFolder::open(dir.path(), 1, 4).unwrap();
        assert_eq!(d.classes(), vec!["cat", "dog", "zebra"]);
        let mut px = vec![0.0; 16];
        for i in 0..d.len() {
            d.get(i, &mut px);
            let shade = ((px[0] + 1.0) * 127.5).round() as u8;
            let want = match d.label(i).unwrap() {
                0 => 10..=11,
                1 => 100..=101,
                _ => 200..=201,
            };
            assert!(want.contains(&shade), "image {i}: shade {shade}");
        }
        // An image directly in the folder: no classes.
        image::GrayImage::from_pixel(4, 4, image::Luma([0]))
            .save(dir.path().join("loose.png"))
            .unwrap();
        let d = ImageFolder::open(dir.path(), 1, 4).unwrap();
        assert!(d.classes().is_empty() && d.label(0).is_none());
    }
}
