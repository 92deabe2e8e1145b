//! CIFAR-10 binary batches (Krizhevsky 2009): records of 1 label byte + 3072 pixel bytes (the
//! red, green and blue 32×32 planes).

use std::path::Path;

use anyhow::{Context, Result, bail};

use super::{Dataset, Split};

const RECORD: usize = 1 + 3 * 32 * 32;

/// CIFAR-10 images scaled to [−1, 1], `[3, 32, 32]`.
pub struct Cifar10 {
    pixels: Vec<u8>,
    labels: Vec<u8>,
    count: usize,
    source: String,
}

impl Cifar10 {
    /// Reads `data_batch_1..5.bin` (train) or `test_batch.bin` (test) from `dir` or
    /// `dir/cifar-10-batches-bin`.
    pub fn open_dir(dir: &Path, split: Split) -> Result<Self> {
        let base = if dir.join("cifar-10-batches-bin").is_dir() {
            dir.join("cifar-10-batches-bin")
        } else {
            dir.to_path_buf()
        };
        let names: Vec<String> = match split {
            Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
            Split::Test => vec!["test_batch.bin".into()],
        };
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        let mut count = 0;
        for n in &names {
            let p = base.join(n);
            let bytes = crate::files::read_capped(&p, 64 << 20).with_context(|| {
                format!("cannot read {} (expected the CIFAR-10 binary batches; `ddpm data fetch cifar10 --dir {}` downloads them)", p.display(), dir.display())
            })?;
            if bytes.is_empty() || bytes.len() % RECORD != 0 {
                bail!(
                    "{}: {} bytes is not a whole number of 3073-byte CIFAR-10 records (truncated?)",
                    p.display(),
                    bytes.len()
                );
            }
            for rec in bytes.chunks_exact(RECORD) {
                if rec[0] > 9 {
                    bail!(
                        "{}: label {} outside 0..=9 (not a CIFAR-10 batch?)",
                        p.display(),
                        rec[0]
                    );
                }
                pixels.extend_from_slice(&rec[1..]);
                labels.push(rec[0]);
                count += 1;
            }
        }
        Ok(Self {
            pixels,
            labels,
            count,
            source: base.display().to_string(),
        })
    }
}

impl Dataset for Cifar10 {
    fn len(&self) -> usize {
        self.count
    }
    fn item_shape(&self) -> Vec<usize> {
        vec![3, 32, 32]
    }
    fn get(&self, index: usize, out: &mut [f32]) {
        let n = RECORD - 1;
        for (o, &p) in out.iter_mut().zip(&self.pixels[index * n..(index + 1) * n]) {
            *o = p as f32 / 127.5 - 1.0;
        }
    }
    fn describe(&self) -> String {
        format!("CIFAR-10 {} ({} images)", self.source, self.count)
    }
    fn classes(&self) -> Vec<String> {
        CLASSES.iter().map(|c| c.to_string()).collect()
    }
    fn label(&self, index: usize) -> Option<usize> {
        Some(self.labels[index] as usize)
    }
}

/// CIFAR-10's class names in label order (`batches.meta.txt`).
const CLASSES: [&str; 10] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_records_and_rejects_truncated_batches() {
        let dir = tempfile::tempdir().unwrap();
        let mut rec = vec![3u8];
        rec.extend((0..3072).map(|i| (i % 256) as u8));
        let two: Vec<u8> = rec.iter().chain(rec.iter()).copied().collect();
        std::fs::write(dir.path().join("test_batch.bin"), &two).unwrap();
        let d = Cifar10::open_dir(dir.path(), Split::Test).unwrap();
        assert_eq!(d.len(), 2);
        assert_eq!(d.label(1), Some(3));
        assert_eq!(d.classes()[3], "cat");
        let mut out = vec![0.0; 3072];
        d.get(1, &mut out);
        assert_eq!(out[0], -1.0);
        std::fs::write(dir.path().join("test_batch.bin"), &two[..5000]).unwrap();
        let e = Cifar10::open_dir(dir.path(), Split::Test)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = Cifar10::open_dir(dir.path(), Split::Train)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
    }
}
