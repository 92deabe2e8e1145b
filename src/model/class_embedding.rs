//! The class embedding of class-conditional networks: a learned vector for each class and one
//! for "no class" (the null class that classifier-free guidance samples with), added to the time
//! embedding.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{Device, Tensor, TensorData};

/// A table of `classes + 1` learned vectors (the last: the null class), applied to one-hot rows.
#[derive(Module, Debug)]
pub struct ClassEmbedding {
    table: Linear,
    classes: usize,
}

impl ClassEmbedding {
    /// `classes` classes and the null class, each a `dim`-wide vector.
    pub fn new(classes: usize, dim: usize, device: &Device) -> Self {
        Self {
            table: LinearConfig::new(classes + 1, dim)
                .with_bias(false)
                .init(device),
            classes,
        }
    }

    /// The embeddings of `cond` (`[B, classes + 1]` rows, one-hot as [`one_hot`] makes them),
    /// or of the null class for all `batch` items when `cond` is `None`; in `like`'s dtype.
    pub fn forward(&self, cond: Option<Tensor<2>>, batch: usize, like: &Tensor<2>) -> Tensor<2> {
        match cond {
            Some(c) => {
                assert_eq!(
                    c.dims()[1],
                    self.classes + 1,
                    "class rows of the wrong width (the caller checks the class count)"
                );
                self.table.forward(c.cast(like.dtype()))
            }
            None => {
                let null = self
                    .table
                    .weight
                    .val()
                    .narrow(0, self.classes, 1)
                    .cast(like.dtype());
                null.expand([batch, like.dims()[1]])
            }
        }
    }

    /// The number of classes (without the null class).
    pub fn classes(&self) -> usize {
        self.classes
    }
}

/// One-hot rows `[labels.len(), width]` on `device`: row i has a 1 at column `labels[i]`.
pub fn one_hot(labels: &[usize], width: usize, device: &Device) -> Tensor<2> {
    let mut v = vec![0.0f32; labels.len() * width];
    for (i, &l) in labels.iter().enumerate() {
        assert!(l < width, "label {l} outside {width} classes");
        v[i * width + l] = 1.0;
    }
    Tensor::<2>::from_data(TensorData::new(v, [labels.len(), width]), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_pick_their_class_and_none_is_the_null_class() {
        let dev = Device::flex();
        let e = ClassEmbedding::new(3, 5, &dev);
        let like = Tensor::<2>::zeros([2, 5], &dev);
        let w: Vec<f32> = e
            .table
            .weight
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let row = |k: usize| w[k * 5..(k + 1) * 5].to_vec();
        let out: Vec<f32> = e
            .forward(Some(one_hot(&[2, 0], 4, &dev)), 2, &like)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(out[..5], row(2)[..]);
        assert_eq!(out[5..], row(0)[..]);
        let null: Vec<f32> = e
            .forward(None, 2, &like)
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(null[..5], row(3)[..]);
        assert_eq!(null[5..], row(3)[..]);
    }
}
