//! The default dataset compiled into the binary: the first 10,000 MNIST training digits
//! (CC BY-SA 3.0; see `data/README.md`).

use anyhow::Result;

use super::idx::{IdxImages, gunzip_if_needed};

const IMAGES: &[u8] = include_bytes!("../../data/mnist-10k/train-images-idx3-ubyte.gz");

/// The bundled 10,000 MNIST digits, with their labels.
pub fn mnist_10k() -> Result<IdxImages> {
    let bytes = gunzip_if_needed(IMAGES.to_vec(), "bundled MNIST")?;
    IdxImages::parse(bytes, "bundled MNIST (first 10,000 training digits)")?
        .with_labels(mnist_10k_labels()?)
}

const LABELS: &[u8] = include_bytes!("../../data/mnist-10k/train-labels-idx1-ubyte.gz");

/// The labels of the bundled digits.
pub fn mnist_10k_labels() -> Result<Vec<u8>> {
    let bytes = gunzip_if_needed(LABELS.to_vec(), "bundled MNIST labels")?;
    super::idx::parse_labels(&bytes, "bundled MNIST labels")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Dataset;
    use std::io::Read;

    #[test]
    fn labels_line_up_with_the_raw_file() {
        let d = mnist_10k().unwrap();
        assert_eq!(d.classes().len(), 10);
        // The raw label file, read independently: magic, count, then one byte per image.
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(LABELS)
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(raw.len(), 8 + d.len());
        for i in [0, 1, 2, 3, 4, 1234, 9999] {
            assert_eq!(d.label(i), Some(raw[8 + i] as usize), "item {i}");
        }
        // MNIST's first training digits are 5, 0, 4, 1, 9.
        assert_eq!(
            (0..5).map(|i| d.label(i).unwrap()).collect::<Vec<_>>(),
            [5, 0, 4, 1, 9]
        );
    }
}
