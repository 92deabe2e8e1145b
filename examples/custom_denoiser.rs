//! Your own network with the crate's diffusion: a small MLP written here with burn, trained
//! with Algorithm 1 (`q_sample`, `training_losses`, AdamW) on points of a ring, then sampled
//! with DDIM and with the ancestral sampler. Runs in seconds:
//!
//! ```sh
//! cargo run --release --example custom_denoiser
//! ```

use anyhow::Result;
use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, TensorData};
use ddpm::diffusion::losses::LossConfig;
use ddpm::diffusion::{Parameterization, VarianceType, X0Clip};
use ddpm::optim::adamw::{AdamW, AdamWConfig};
use ddpm::rng::Rng;
use ddpm::sample::ddim::spaced_steps;
use ddpm::sample::{Ancestral, Ddim, Spacing, sample_loop};
use ddpm::store::params::named_grads;
use ddpm::{BetaSchedule, Denoiser, GaussianDiffusion, NoiseSchedule};

/// ε_θ(x_t, t): the point and t/T in, ε out.
#[derive(Module, Debug)]
struct PointNet {
    l1: Linear,
    l2: Linear,
    l3: Linear,
}

impl PointNet {
    fn new(device: &burn::tensor::Device) -> Self {
        Self {
            l1: LinearConfig::new(3, 128).init(device),
            l2: LinearConfig::new(128, 128).init(device),
            l3: LinearConfig::new(128, 2).init(device),
        }
    }
}

impl Denoiser<2> for PointNet {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        let input = Tensor::cat(vec![x_t, (t / 100.0).unsqueeze_dim(1)], 1);
        self.l3
            .forward(silu(self.l2.forward(silu(self.l1.forward(input)))))
    }
}

/// `n` points on the circle of radius 0.7, with a little noise.
fn ring(n: usize, rng: &mut Rng) -> Vec<f32> {
    (0..n)
        .flat_map(|_| {
            let a = rng.uniform() * std::f64::consts::TAU;
            let r = 0.7 + 0.02 * rng.normal_f32(1)[0] as f64;
            [(r * a.cos()) as f32, (r * a.sin()) as f32]
        })
        .collect()
}

fn main() -> Result<()> {
    let device = ddpm::device::by_name("cpu")?.autodiff();
    let schedule =
        NoiseSchedule::new(&BetaSchedule::named("cosine", 100, None, None)?, 100, false)?;
    let q = GaussianDiffusion::new(schedule, Parameterization::Eps, VarianceType::FixedLarge);
    let mut net = PointNet::new(&device);
    let mut opt = AdamW::new(AdamWConfig::default());
    let mut rng = Rng::new(0);
    let batch = 256;
    for step in 1..=4000 {
        // Algorithm 1: x_0 ~ q(x_0), t ~ Uniform, ε ~ N(0, I), a gradient step on L_simple.
        let x0 =
            Tensor::<2>::from_data(TensorData::new(ring(batch, &mut rng), [batch, 2]), &device);
        let t: Vec<usize> = (0..batch).map(|_| rng.below(q.num_timesteps())).collect();
        let eps = Tensor::<2>::from_data(
            TensorData::new(rng.normal_f32(batch * 2), [batch, 2]),
            &device,
        );
        let x_t = q.q_sample(x0.clone(), &t, eps.clone());
        let out = net.forward(x_t.clone(), q.model_timesteps(&t, &x_t));
        let loss = q
            .training_losses(&LossConfig::default(), out, x0, x_t, &t, eps)
            .loss
            .mean();
        if step % 1000 == 0 {
            println!(
                "step {step}: L_simple {:.4}",
                loss.clone().into_scalar::<f32>()
            );
        }
        let grads = named_grads(&net, &loss.backward());
        let lr = if step < 3000 { 2e-3 } else { 5e-4 };
        net = opt.step(net, &grads, lr, 1.0);
    }
    // Sampling needs no gradients: the same weights without autodiff.
    let net = net.valid();
    let inner = device.inner();
    for name in ["ddim (20 steps)", "ancestral (100 steps)"] {
        let mut noise = Rng::new(1);
        let x = if name.starts_with("ddim") {
            let mut s = Ddim::new(
                &q,
                spaced_steps(100, 20, Spacing::Linspace),
                0.0,
                X0Clip::Clip,
            );
            sample_loop(&net, &mut s, [1000, 2], &inner, &mut noise, |_, _, _, _| {})
        } else {
            let all: Vec<usize> = (0..100).collect();
            let mut s = Ancestral::new(&q, &all, X0Clip::Clip);
            sample_loop(&net, &mut s, [1000, 2], &inner, &mut noise, |_, _, _, _| {})
        };
        let points: Vec<f32> = x.into_data().iter::<f32>().collect();
        let radii: Vec<f32> = points.chunks(2).map(|p| p[0].hypot(p[1])).collect();
        let mean = radii.iter().sum::<f32>() / radii.len() as f32;
        let near = radii.iter().filter(|r| (*r - 0.7).abs() < 0.1).count();
        println!(
            "{name}: mean radius {mean:.3} (the ring's is 0.7), {near} of 1000 within 0.1 of it"
        );
    }
    Ok(())
}
