//! The learned noise schedule of Variational Diffusion Models (Kingma et al. 2021, Appendix
//! H): γ_η(t) = γ₀ + (γ₁ − γ₀)·(γ̃(t) − γ̃(0)) / (γ̃(1) − γ̃(0)), with γ̃ a monotone network —
//! linear layers whose weights are made positive (their absolute values), a sigmoid hidden layer
//! between them — so γ is strictly increasing and its endpoints are exactly the learned scalars
//! γ₀ and γ₁ = γ₀ + softplus(ρ).

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::{sigmoid, softplus};
use burn::tensor::{Device, Distribution, Tensor};

/// Width of the hidden layer (VDM uses 1024).
pub const HIDDEN: usize = 1024;

/// The parameters that set γ(0) and γ(1) (the rest shape the schedule between them).
pub const ENDPOINT_PARAMS: [&str; 2] = ["gamma0", "range"];

/// The monotone γ network with its two endpoint parameters.
#[derive(Module, Debug)]
pub struct LearnedGamma {
    l1: Linear,
    l2: Linear,
    l3: Linear,
    gamma0: Param<Tensor<1>>,
    range: Param<Tensor<1>>,
}

impl LearnedGamma {
    /// A schedule starting close to linear in γ from `gamma_min` to `gamma_max` (the network's
    /// hidden part starts small), on `device` (its generator seeds the weights).
    pub fn new(gamma_min: f64, gamma_max: f64, device: &Device) -> Self {
        assert!(gamma_max > gamma_min, "γ_max must exceed γ_min");
        let small = |shape: [usize; 2]| {
            Param::from_tensor(Tensor::<2>::random(
                shape,
                Distribution::Normal(0.0, 0.1),
                device,
            ))
        };
        let mut l1 = LinearConfig::new(1, 1).init(device);
        l1.weight = Param::from_tensor(Tensor::<2>::ones([1, 1], device));
        let mut l2 = LinearConfig::new(1, HIDDEN).init(device);
        l2.weight = small([1, HIDDEN]);
        let mut l3 = LinearConfig::new(HIDDEN, 1).with_bias(false).init(device);
        l3.weight = small([HIDDEN, 1]);
        // softplus(ρ) = γ_max − γ_min.
        let span = gamma_max - gamma_min;
        let rho = span + (-(-span).exp_m1()).ln();
        Self {
            l1,
            l2,
            l3,
            gamma0: Param::from_tensor(Tensor::<1>::from_floats([gamma_min as f32], device)),
            range: Param::from_tensor(Tensor::<1>::from_floats([rho as f32], device)),
        }
    }

    /// The unnormalized monotone γ̃(t) and dγ̃/dt for times `t` (`[B]`, in [0, 1]).
    fn raw(&self, t: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let b = t.dims()[0];
        let x: Tensor<2> = t.reshape([b, 1]);
        let w1 = self.l1.weight.val().abs();
        let w2 = self.l2.weight.val().abs();
        let w3 = self.l3.weight.val().abs();
        let b1 = self.l1.bias.as_ref().expect("l1 has a bias").val();
        let b2 = self.l2.bias.as_ref().expect("l2 has a bias").val();
        let h1 = x.clone().matmul(w1.clone()) + b1.unsqueeze();
        // The hidden part on 2(t − ½), as in VDM: sigmoid, then centred and scaled by 1/H.
        let z = (x * 2.0 - 1.0).matmul(w2.clone()) + b2.unsqueeze();
        let s = sigmoid(z);
        let h2 = ((s.clone() - 0.5) * 2.0).matmul(w3.clone()) / HIDDEN as f64;
        let value = (h1 + h2).reshape([b]);
        // d/dt: w1 + Σ_j (2/H)·w3_j·σ'(z_j)·2·w2_j, σ' = σ(1 − σ).
        let ds = s.clone() * (s.neg() + 1.0) * w2.mul_scalar(2.0);
        let d = ds.matmul(w3) * (2.0 / HIDDEN as f64) + w1;
        (value, d.reshape([b]))
    }

    /// γ(t) and γ'(t) for times `t` (`[B]`).
    pub fn gamma(&self, t: Tensor<1>) -> (Tensor<1>, Tensor<1>) {
        let device = t.device();
        let ends = Tensor::<1>::from_floats([0.0, 1.0], &device).cast(t.dtype());
        let (e, _) = self.raw(ends);
        let e0 = e.clone().narrow(0, 0, 1);
        let span = e.narrow(0, 1, 1) - e0.clone();
        let (g0, g1) = self.endpoints_t();
        let scale = (g1 - g0.clone()) / span;
        let (v, d) = self.raw(t);
        ((v - e0) * scale.clone() + g0, d * scale)
    }

    /// (γ(0), γ(1)) as tensors of the graph.
    pub fn endpoints_t(&self) -> (Tensor<1>, Tensor<1>) {
        let g0 = self.gamma0.val();
        (g0.clone(), g0 + softplus(self.range.val(), 1.0))
    }

    /// The device the schedule's parameters live on.
    pub fn device(&self) -> Device {
        self.gamma0.val().device()
    }

    /// The parameters' float type.
    pub fn dtype(&self) -> burn::tensor::DType {
        self.gamma0.val().dtype()
    }

    /// (γ(0), γ(1)): the learned endpoints.
    pub fn endpoints(&self) -> (f64, f64) {
        let (a, b) = self.endpoints_t();
        (a.into_scalar::<f64>(), b.into_scalar::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    fn host(t: Tensor<1>) -> Vec<f64> {
        t.into_data().convert::<f64>().try_into_vec().unwrap()
    }

    /// A schedule with every weight and bias drawn at random (signs included).
    fn random_schedule(seed: u64, dev: &Device) -> LearnedGamma {
        dev.seed(seed);
        let mut g = LearnedGamma::new(-13.3, 5.0, dev);
        let r = |shape: [usize; 2], sd: f64| {
            Param::from_tensor(Tensor::<2>::random(
                shape,
                Distribution::Normal(0.0, sd),
                dev,
            ))
        };
        let r1 = |n: usize, sd: f64| {
            Param::from_tensor(Tensor::<1>::random([n], Distribution::Normal(0.0, sd), dev))
        };
        g.l1.weight = r([1, 1], 2.0);
        g.l1.bias = Some(r1(1, 2.0));
        g.l2.weight = r([1, HIDDEN], 5.0);
        g.l2.bias = Some(r1(HIDDEN, 5.0));
        g.l3.weight = r([HIDDEN, 1], 3.0);
        g.gamma0 = r1(1, 5.0);
        g.range = r1(1, 3.0);
        g
    }

    #[test]
    fn random_schedules_increase_strictly_and_end_at_the_learned_scalars() {
        let dev = Device::flex();
        let n = 513;
        let ts: Vec<f32> = (0..n).map(|i| i as f32 / (n - 1) as f32).collect();
        for seed in 0..6 {
            let g = random_schedule(seed, &dev);
            let t = Tensor::<1>::from_data(TensorData::new(ts.clone(), [n]), &dev);
            let (v, d) = g.gamma(t);
            let (v, d) = (host(v), host(d));
            let (g0, g1) = g.endpoints();
            assert!(g1 > g0);
            assert!(
                (v[0] - g0).abs() < 1e-4 * g0.abs().max(1.0),
                "γ(0) {} vs γ₀ {g0}",
                v[0]
            );
            assert!(
                (v[n - 1] - g1).abs() < 1e-4 * g1.abs().max(1.0),
                "γ(1) {} vs γ₁ {g1}",
                v[n - 1]
            );
            for i in 1..n {
                assert!(
                    v[i] > v[i - 1],
                    "seed {seed}: not increasing at t = {}",
                    ts[i]
                );
                assert!(d[i] > 0.0);
            }
            // γ' against finite differences of γ.
            for i in (8..n - 8).step_by(50) {
                let h = (ts[i + 8] - ts[i - 8]) as f64;
                let fd = (v[i + 8] - v[i - 8]) / h;
                assert!(
                    (fd - d[i]).abs() < 0.02 * d[i].abs() + 1e-3,
                    "seed {seed} t {}: γ' {} vs {fd}",
                    ts[i],
                    d[i]
                );
            }
        }
    }

    #[test]
    fn a_new_schedule_is_close_to_linear_between_its_endpoints() {
        let dev = Device::flex();
        dev.seed(1);
        let g = LearnedGamma::new(-13.3, 5.0, &dev);
        let (g0, g1) = g.endpoints();
        assert!(
            (g0 + 13.3).abs() < 1e-5 && (g1 - 5.0).abs() < 1e-4,
            "{g0} {g1}"
        );
        let (v, _) = g.gamma(Tensor::<1>::from_floats([0.5], &dev));
        let mid = host(v)[0];
        assert!((mid - (-4.15)).abs() < 1.0, "γ(½) = {mid}");
    }
}
