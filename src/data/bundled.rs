//! The default dataset compiled into the binary: the first 10,000 MNIST training digits
//! (CC BY-SA 3.0; see `data/README.md`).

use anyhow::Result;

use super::idx::{IdxImages, gunzip_if_needed};

const IMAGES: &[u8] = include_bytes!("../../data/mnist-10k/train-images-idx3-ubyte.gz");

/// The bundled 10,000 MNIST digits.
pub fn mnist_10k() -> Result<IdxImages> {
    let bytes = gunzip_if_needed(IMAGES.to_vec(), "bundled MNIST")?;
    IdxImages::parse(&bytes, "bundled MNIST (first 10,000 training digits)")
}

const LABELS: &[u8] = include_bytes!("../../data/mnist-10k/train-labels-idx1-ubyte.gz");

/// The labels of the bundled digits.
pub fn mnist_10k_labels() -> Result<Vec<u8>> {
    let bytes = gunzip_if_needed(LABELS.to_vec(), "bundled MNIST labels")?;
    super::idx::parse_labels(&bytes, "bundled MNIST labels")
}
