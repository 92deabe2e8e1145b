//! Shuffled batches prepared on a background thread, reproducible from (seed, position).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use super::Dataset;

/// Where the stream of batches stands: item `offset` of epoch `epoch`'s permutation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Position {
    /// Epoch (each epoch is a fresh seeded permutation).
    pub epoch: u64,
    /// Items of this epoch already served.
    pub offset: usize,
}

/// One batch: `batch_size` items laid out contiguously.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Values, `[batch, item_shape…]` row-major.
    pub data: Vec<f32>,
    /// `[batch, item_shape…]`.
    pub shape: Vec<usize>,
    /// The items' classes (empty for a dataset without labels).
    pub labels: Vec<usize>,
    /// The position after this batch (store it to resume after it).
    pub next: Position,
}

/// The permutation of epoch `epoch`.
pub fn epoch_permutation(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = crate::rng::streams::epoch_order(seed, epoch);
    let mut perm: Vec<usize> = (0..n).collect();
    rng.shuffle(&mut perm);
    perm
}

fn flip_bit(seed: u64, epoch: u64, offset: usize) -> bool {
    let mut r = crate::rng::streams::flip(seed, epoch, offset);
    r.next_u64() & 1 == 1
}

/// Fills batches in order from `pos`; `hflip` mirrors images (last axis) at random.
pub struct BatchStream {
    dataset: Arc<dyn Dataset>,
    batch_size: usize,
    seed: u64,
    hflip: bool,
    pos: Position,
    perm: Vec<usize>,
}

impl BatchStream {
    /// A stream starting at `pos`.
    pub fn new(
        dataset: Arc<dyn Dataset>,
        batch_size: usize,
        seed: u64,
        hflip: bool,
        pos: Position,
    ) -> Self {
        let perm = epoch_permutation(dataset.len(), seed, pos.epoch);
        Self {
            dataset,
            batch_size,
            seed,
            hflip,
            pos,
            perm,
        }
    }

    /// The next batch.
    pub fn next_batch(&mut self) -> Batch {
        let shape = self.dataset.item_shape();
        let item: usize = shape.iter().product();
        let width = *shape.last().unwrap_or(&1);
        let mut data = vec![0.0f32; self.batch_size * item];
        let labelled = !self.dataset.classes().is_empty();
        let mut labels = Vec::with_capacity(if labelled { self.batch_size } else { 0 });
        for b in 0..self.batch_size {
            if self.pos.offset == self.perm.len() {
                self.pos = Position {
                    epoch: self.pos.epoch + 1,
                    offset: 0,
                };
                self.perm = epoch_permutation(self.dataset.len(), self.seed, self.pos.epoch);
            }
            let out = &mut data[b * item..(b + 1) * item];
            let index = self.perm[self.pos.offset];
            self.dataset.get(index, out);
            if labelled {
                labels.push(self.dataset.label(index).unwrap_or(0));
            }
            if self.hflip
                && shape.len() == 3
                && flip_bit(self.seed, self.pos.epoch, self.pos.offset)
            {
                for row in out.chunks_mut(width) {
                    row.reverse();
                }
            }
            self.pos.offset += 1;
        }
        let mut full = vec![self.batch_size];
        full.extend(shape);
        Batch {
            data,
            shape: full,
            labels,
            next: self.pos,
        }
    }
}

/// A [`BatchStream`] running on a background thread, two batches ahead.
pub struct Loader {
    rx: Receiver<Batch>,
    handle: Option<JoinHandle<()>>,
}

impl Loader {
    /// Starts the background thread.
    pub fn spawn(mut stream: BatchStream) -> Self {
        let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(2);
        let handle = std::thread::spawn(move || while tx.send(stream.next_batch()).is_ok() {});
        Self {
            rx,
            handle: Some(handle),
        }
    }

    /// The next batch (blocks until it is ready).
    pub fn next_batch(&mut self) -> Batch {
        self.rx.recv().expect("the batch thread ended")
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        // Dropping the receiver ends the thread's loop at its next send.
        let (_, dummy) = sync_channel(0);
        drop(std::mem::replace(&mut self.rx, dummy));
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::toy2d::{Toy2d, ToyDataset};

    #[test]
    fn resuming_from_a_position_continues_the_same_stream() {
        let ds: Arc<dyn Dataset> = Arc::new(ToyDataset::new(Toy2d::TwoMoons, 10, 1));
        let mut a = BatchStream::new(ds.clone(), 4, 7, false, Position::default());
        let batches: Vec<Batch> = (0..6).map(|_| a.next_batch()).collect();
        // Resume after the third batch (which crossed an epoch boundary).
        let mut b = BatchStream::new(ds.clone(), 4, 7, false, batches[2].next);
        for want in &batches[3..] {
            assert_eq!(b.next_batch().data, want.data);
        }
        // Each epoch visits every item once.
        let perm = epoch_permutation(10, 7, 0);
        let mut sorted = perm.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_ne!(perm, epoch_permutation(10, 7, 1));
    }

    #[test]
    fn background_loader_serves_the_stream_in_order() {
        let ds: Arc<dyn Dataset> = Arc::new(ToyDataset::new(Toy2d::Checkerboard, 50, 1));
        let mut direct = BatchStream::new(ds.clone(), 8, 3, false, Position::default());
        let mut bg = Loader::spawn(BatchStream::new(ds, 8, 3, false, Position::default()));
        for _ in 0..10 {
            assert_eq!(bg.next_batch().data, direct.next_batch().data);
        }
    }

    #[test]
    fn batches_carry_the_labels_of_their_items() {
        let ds: Arc<dyn Dataset> = Arc::new(ToyDataset::new(Toy2d::EightGaussians, 40, 2));
        let mut stream = BatchStream::new(ds.clone(), 7, 5, false, Position::default());
        for _ in 0..12 {
            let b = stream.next_batch();
            assert_eq!(b.labels.len(), 7);
            for (i, &l) in b.labels.iter().enumerate() {
                // The item's class is the mode it lies nearest to.
                let p = &b.data[2 * i..2 * i + 2];
                let nearest = (0..8)
                    .min_by(|&a, &c| {
                        let d = |k: usize| {
                            let m = crate::data::toy2d::eight_gaussians_mean(k);
                            (p[0] as f64 - m[0]).powi(2) + (p[1] as f64 - m[1]).powi(2)
                        };
                        d(a).total_cmp(&d(c))
                    })
                    .unwrap();
                assert_eq!(l, nearest);
            }
        }
        let unlabelled: Arc<dyn Dataset> = Arc::new(ToyDataset::new(Toy2d::SwissRoll, 10, 1));
        let b = BatchStream::new(unlabelled, 3, 5, false, Position::default()).next_batch();
        assert!(b.labels.is_empty());
    }
}
