//! 2-D toy distributions, scaled to lie roughly in [−1, 1]².

use super::Dataset;
use crate::rng::Rng;

/// The 2-D distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toy2d {
    /// A swiss roll: r·(cos t, sin t) with r = t/(4.5π), t ~ U(1.5π, 4.5π), plus N(0, 0.02²).
    SwissRoll,
    /// Two interleaving half circles with N(0, 0.05²) noise.
    TwoMoons,
    /// A mixture of 8 Gaussians (σ = 0.05) on a circle of radius 0.8.
    EightGaussians,
    /// Uniform on the dark squares of a 4×4 checkerboard over [−1, 1]².
    Checkerboard,
}

impl std::str::FromStr for Toy2d {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "swiss-roll" => Ok(Self::SwissRoll),
            "two-moons" => Ok(Self::TwoMoons),
            "8-gaussians" => Ok(Self::EightGaussians),
            "checkerboard" => Ok(Self::Checkerboard),
            other => Err(format!(
                "unknown toy distribution `{other}`; expected swiss-roll, two-moons, 8-gaussians or checkerboard"
            )),
        }
    }
}

impl Toy2d {
    /// One draw.
    pub fn sample(self, rng: &mut Rng) -> [f64; 2] {
        use std::f64::consts::PI;
        match self {
            Self::SwissRoll => {
                let t = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
                let r = t / (4.5 * PI);
                [
                    r * t.cos() + 0.02 * rng.normal(),
                    r * t.sin() + 0.02 * rng.normal(),
                ]
            }
            Self::TwoMoons => {
                let a = PI * rng.uniform();
                let (x, y) = if rng.below(2) == 0 {
                    (a.cos(), a.sin())
                } else {
                    (1.0 - a.cos(), 0.5 - a.sin())
                };
                // Centre and scale [−1, 2]×[−0.5, 1] into [−1, 1]².
                [
                    (x - 0.5) / 1.5 + 0.05 * rng.normal(),
                    (y - 0.25) / 1.5 * 1.6 + 0.05 * rng.normal(),
                ]
            }
            Self::EightGaussians => {
                let k = rng.below(8) as f64;
                let a = 2.0 * PI * k / 8.0;
                [
                    0.8 * a.cos() + 0.05 * rng.normal(),
                    0.8 * a.sin() + 0.05 * rng.normal(),
                ]
            }
            Self::Checkerboard => loop {
                let x = 2.0 * rng.uniform() - 1.0;
                let y = 2.0 * rng.uniform() - 1.0;
                let cx = ((x + 1.0) * 2.0).floor() as i64;
                let cy = ((y + 1.0) * 2.0).floor() as i64;
                if (cx + cy) % 2 == 0 {
                    return [x, y];
                }
            },
        }
    }
}

/// A fixed set of points drawn from a [`Toy2d`] distribution.
pub struct ToyDataset {
    kind: Toy2d,
    points: Vec<[f32; 2]>,
}

impl ToyDataset {
    /// `n` points drawn with `seed`.
    pub fn new(kind: Toy2d, n: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed ^ 0x70_7932);
        let points = (0..n)
            .map(|_| {
                let [x, y] = kind.sample(&mut rng);
                [x as f32, y as f32]
            })
            .collect();
        Self { kind, points }
    }
}

impl Dataset for ToyDataset {
    fn len(&self) -> usize {
        self.points.len()
    }
    fn item_shape(&self) -> Vec<usize> {
        vec![2]
    }
    fn get(&self, index: usize, out: &mut [f32]) {
        out.copy_from_slice(&self.points[index]);
    }
    fn describe(&self) -> String {
        format!("{:?} ({} points)", self.kind, self.points.len())
    }
}
