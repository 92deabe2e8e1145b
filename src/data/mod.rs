//! Datasets: every item is a float vector in [−1, 1] of a fixed shape.

pub mod bundled;
pub mod cifar;
pub mod fetch;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod memory;
pub mod toy2d;

use anyhow::{Result, bail};

/// A finite collection of same-shaped items with values in [−1, 1].
pub trait Dataset: Send + Sync {
    /// Number of items.
    fn len(&self) -> usize;
    /// Whether there are no items.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape of one item, e.g. `[1, 28, 28]` for MNIST or `[2]` for 2-D points.
    fn item_shape(&self) -> Vec<usize>;
    /// Writes item `index` into `out` (`out.len()` = the product of `item_shape`).
    fn get(&self, index: usize, out: &mut [f32]);
    /// A human-readable description.
    fn describe(&self) -> String;
    /// The names of the classes in label order; empty for a dataset without labels.
    fn classes(&self) -> Vec<String> {
        Vec::new()
    }
    /// The class of item `index` (below `classes().len()`), for a dataset with labels.
    fn label(&self, _index: usize) -> Option<usize> {
        None
    }
}

/// The class name of each of the first `n` items, or an error naming `what` when the dataset
/// has no labels.
pub fn item_class_names(data: &dyn Dataset, n: usize, what: &str) -> anyhow::Result<Vec<String>> {
    let classes = data.classes();
    if classes.is_empty() {
        anyhow::bail!(
            "{what} {}: no classes (a folder needs one sub-directory per class, as `ddpm sample \
             --class` writes; IDX needs its labels file)",
            data.describe()
        );
    }
    (0..n.min(data.len()))
        .map(|i| {
            data.label(i)
                .and_then(|l| classes.get(l).cloned())
                .ok_or_else(|| anyhow::anyhow!("{what}: item {i} has no class"))
        })
        .collect()
}

/// Class names "0", "1", … for datasets whose labels are the digits or indices themselves.
pub fn numbered_classes(n: usize) -> Vec<String> {
    (0..n).map(|i| i.to_string()).collect()
}

/// Which part of a dataset to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// The training images.
    Train,
    /// The test images.
    Test,
}

impl std::str::FromStr for Split {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "train" => Ok(Self::Train),
            "test" => Ok(Self::Test),
            other => Err(format!("unknown split `{other}`; expected train or test")),
        }
    }
}

/// Opens a dataset from a specification:
/// `bundled` (the first 10,000 MNIST training digits compiled into the binary),
/// `idx:DIR` (MNIST / Fashion-MNIST IDX files, gzipped or raw, in DIR),
/// `cifar10:DIR` (CIFAR-10 binary batches), `folder:DIR` (PNG/JPEG images, resized and
/// centre-cropped to `image` = (channels, size), the network's input),
/// `toy:swiss-roll|two-moons|8-gaussians|checkerboard` (2-D points, 10,000 drawn from `seed`).
pub fn open(
    spec: &str,
    split: Split,
    seed: u64,
    image: Option<(usize, usize)>,
) -> Result<Box<dyn Dataset>> {
    if spec == "bundled" {
        if split == Split::Test {
            bail!(
                "--data bundled: the bundled dataset has only training digits; use --data idx:DIR for a test split"
            );
        }
        return Ok(Box::new(bundled::mnist_10k()?));
    }
    if let Some(dir) = spec.strip_prefix("idx:") {
        return Ok(Box::new(idx::IdxImages::open_dir(
            std::path::Path::new(dir),
            split,
        )?));
    }
    if let Some(dir) = spec.strip_prefix("cifar10:") {
        return Ok(Box::new(cifar::Cifar10::open_dir(
            std::path::Path::new(dir),
            split,
        )?));
    }
    if let Some(dir) = spec.strip_prefix("folder:") {
        let (c, s) = image.unwrap_or((3, 32));
        return Ok(Box::new(folder::ImageFolder::open(
            std::path::Path::new(dir),
            c,
            s,
        )?));
    }
    if let Some(name) = spec.strip_prefix("toy:") {
        let kind: toy2d::Toy2d = name
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--data {spec}: {e}"))?;
        return Ok(Box::new(toy2d::ToyDataset::new(kind, 10_000, seed)));
    }
    bail!(
        "--data {spec}: unknown dataset; expected bundled, idx:DIR, cifar10:DIR, folder:DIR or toy:NAME"
    )
}

/// The class labels of a labelled dataset (`bundled` or `idx:DIR`), in item order.
pub fn open_labels(spec: &str, split: Split) -> Result<Vec<u8>> {
    if spec == "bundled" && split == Split::Train {
        return bundled::mnist_10k_labels();
    }
    if let Some(dir) = spec.strip_prefix("idx:") {
        return idx::open_labels_dir(std::path::Path::new(dir), split);
    }
    bail!("--data {spec}: labels are read from bundled (train) or idx:DIR datasets")
}
