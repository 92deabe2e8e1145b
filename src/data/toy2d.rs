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
        self.sample_labelled(rng).0
    }

    /// The number of classes: the mixture components of `8-gaussians` (one per mode) and
    /// `two-moons` (one per moon); 0 for the others.
    pub fn num_classes(self) -> usize {
        match self {
            Self::EightGaussians => 8,
            Self::TwoMoons => 2,
            Self::SwissRoll | Self::Checkerboard => 0,
        }
    }

    /// One draw and the component it came from (the same draws as [`Self::sample`]).
    pub fn sample_labelled(self, rng: &mut Rng) -> ([f64; 2], Option<usize>) {
        use std::f64::consts::PI;
        match self {
            Self::SwissRoll => {
                let t = 1.5 * PI * (1.0 + 2.0 * rng.uniform());
                let r = t / (4.5 * PI);
                (
                    [
                        r * t.cos() + 0.02 * rng.normal(),
                        r * t.sin() + 0.02 * rng.normal(),
                    ],
                    None,
                )
            }
            Self::TwoMoons => {
                let a = PI * rng.uniform();
                let moon = rng.below(2);
                let (x, y) = if moon == 0 {
                    (a.cos(), a.sin())
                } else {
                    (1.0 - a.cos(), 0.5 - a.sin())
                };
                (
                    [
                        (x - 0.5) / 1.5 + 0.05 * rng.normal(),
                        (y - 0.25) / 1.5 * 1.6 + 0.05 * rng.normal(),
                    ],
                    Some(moon),
                )
            }
            Self::EightGaussians => {
                let k = rng.below(8);
                let [mx, my] = eight_gaussians_mean(k);
                (
                    [
                        mx + EIGHT_GAUSSIANS_SD * rng.normal(),
                        my + EIGHT_GAUSSIANS_SD * rng.normal(),
                    ],
                    Some(k),
                )
            }
            Self::Checkerboard => loop {
                let x = 2.0 * rng.uniform() - 1.0;
                let y = 2.0 * rng.uniform() - 1.0;
                let cx = ((x + 1.0) * 2.0).floor() as i64;
                let cy = ((y + 1.0) * 2.0).floor() as i64;
                if (cx + cy) % 2 == 0 {
                    return ([x, y], None);
                }
            },
        }
    }
}

/// The standard deviation of each `8-gaussians` component (isotropic).
pub const EIGHT_GAUSSIANS_SD: f64 = 0.05;

/// The mean of `8-gaussians` component `k`: on a circle of radius 0.8 at angle 2πk/8.
pub fn eight_gaussians_mean(k: usize) -> [f64; 2] {
    let a = 2.0 * std::f64::consts::PI * k as f64 / 8.0;
    [0.8 * a.cos(), 0.8 * a.sin()]
}

/// A fixed set of points drawn from a [`Toy2d`] distribution.
pub struct ToyDataset {
    kind: Toy2d,
    points: Vec<[f32; 2]>,
    labels: Vec<usize>,
}

impl ToyDataset {
    /// `n` points drawn with `seed`.
    pub fn new(kind: Toy2d, n: usize, seed: u64) -> Self {
        let mut rng = crate::rng::streams::toy_points(seed);
        let (mut points, mut labels) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for _ in 0..n {
            let ([x, y], k) = kind.sample_labelled(&mut rng);
            points.push([x as f32, y as f32]);
            labels.push(k.unwrap_or(0));
        }
        Self {
            kind,
            points,
            labels,
        }
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
    fn classes(&self) -> Vec<String> {
        super::numbered_classes(self.kind.num_classes())
    }
    fn label(&self, index: usize) -> Option<usize> {
        (self.kind.num_classes() > 0).then(|| self.labels[index])
    }
}
