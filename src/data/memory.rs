//! Items held in memory (generated samples, say), as a dataset.

use super::Dataset;

/// `n` items of `item_shape`, row-major in `data`, optionally with labels.
pub struct InMemory {
    data: Vec<f32>,
    item_shape: Vec<usize>,
    labels: Vec<usize>,
    classes: usize,
    what: String,
}

impl InMemory {
    /// As [`Self::new`], refusing data that is not whole items, labels that are not one per
    /// item or not below `classes`, and non-finite values.
    ///
    /// ```
    /// use ddpm::{Dataset, InMemory};
    ///
    /// let points = InMemory::try_new(vec![0.5, -0.5, 0.1, 0.2], vec![2], vec![0, 1], 2, "points")?;
    /// assert_eq!((points.len(), points.classes().len()), (2, 2));
    /// let odd = InMemory::try_new(vec![0.5, -0.5, 0.1], vec![2], vec![], 0, "points");
    /// assert!(odd.is_err_and(|e| e.to_string().contains("not whole items")));
    /// # Ok::<(), anyhow::Error>(())
    /// ```
    pub fn try_new(
        data: Vec<f32>,
        item_shape: Vec<usize>,
        labels: Vec<usize>,
        classes: usize,
        what: &str,
    ) -> anyhow::Result<Self> {
        let item: usize = item_shape.iter().product();
        if item == 0 || data.is_empty() || !data.len().is_multiple_of(item) {
            anyhow::bail!(
                "{what}: {} values are not whole items of shape {item_shape:?}",
                data.len()
            );
        }
        if !labels.is_empty() && labels.len() * item != data.len() {
            anyhow::bail!(
                "{what}: {} labels for {} items",
                labels.len(),
                data.len() / item
            );
        }
        if let Some(l) = labels.iter().find(|&&l| l >= classes) {
            anyhow::bail!("{what}: label {l} is not below the {classes} classes");
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            anyhow::bail!("{what}: value {i} is {}, not a number", data[i]);
        }
        Ok(Self::new(data, item_shape, labels, classes, what))
    }

    /// Items of `item_shape` laid out one after another in `data`; `labels` (one per item, each
    /// below `classes`) or none (empty). Panics on data that is not whole items (see
    /// [`Self::try_new`]).
    pub fn new(
        data: Vec<f32>,
        item_shape: Vec<usize>,
        labels: Vec<usize>,
        classes: usize,
        what: &str,
    ) -> Self {
        let item: usize = item_shape.iter().product();
        assert!(item > 0 && data.len().is_multiple_of(item), "whole items");
        assert!(
            labels.is_empty() || labels.len() * item == data.len(),
            "a label per item"
        );
        Self {
            data,
            item_shape,
            labels,
            classes,
            what: what.to_string(),
        }
    }
}

impl Dataset for InMemory {
    fn len(&self) -> usize {
        self.data.len() / self.item_shape.iter().product::<usize>()
    }
    fn item_shape(&self) -> Vec<usize> {
        self.item_shape.clone()
    }
    fn get(&self, index: usize, out: &mut [f32]) {
        let n = out.len();
        out.copy_from_slice(&self.data[index * n..(index + 1) * n]);
    }
    fn describe(&self) -> String {
        format!("{} ({} items)", self.what, self.len())
    }
    fn classes(&self) -> Vec<String> {
        if self.labels.is_empty() {
            Vec::new()
        } else {
            super::numbered_classes(self.classes)
        }
    }
    fn label(&self, index: usize) -> Option<usize> {
        self.labels.get(index).copied()
    }
}
