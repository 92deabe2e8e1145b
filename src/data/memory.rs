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
    /// Items of `item_shape` laid out one after another in `data`; `labels` (one per item, each
    /// below `classes`) or none (empty).
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
