//! Algorithm 1 by hand: two training steps of the loop's parts (drawing the micro-batch, the
//! loss and its gradient, the clipped AdamW update, the EMA) on a denoiser small enough to
//! differentiate on paper, against the same steps computed in f64 from the formulas.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use super::learner::{Grads, Learner, Share, accumulate};
use super::micro_batch::{MicroBatch, Times};
use super::objective::Objective;
use crate::data::loader::{Batch, Position};
use crate::diffusion::losses::{LossConfig, LossKind, Weighting};
use crate::diffusion::{Denoiser, GaussianDiffusion, Parameterization, VarianceType};
use crate::model::precision::Precision;
use crate::optim::adamw::{AdamW, AdamWConfig};
use crate::optim::ema::{Ema, EmaConfig};
use crate::rng::Rng;
use crate::schedule::{BetaSchedule, NoiseSchedule};
use crate::store::params::named_params;

const DIM: usize = 3;
const BATCH: usize = 4;
const BETAS: [f64; 5] = [0.05, 0.1, 0.2, 0.3, 0.4];

/// ε_θ(x_t, t) = x_t·W + t·b: linear in its parameters, so its gradient is a sum of products.
#[derive(Module, Debug)]
struct LinearDenoiser {
    w: Param<Tensor<2>>,
    b: Param<Tensor<1>>,
}

impl Denoiser<2> for LinearDenoiser {
    fn forward(&self, x_t: Tensor<2>, t: Tensor<1>) -> Tensor<2> {
        x_t.matmul(self.w.val()) + t.unsqueeze_dim::<2>(1) * self.b.val().unsqueeze_dim::<2>(0)
    }
}

/// The same parameters on the host: W row-major `[DIM, DIM]`, then b.
#[derive(Debug, Clone, PartialEq)]
struct Host {
    w: Vec<f64>,
    b: Vec<f64>,
}

fn host_of(model: &LinearDenoiser) -> Host {
    let v = |t: Tensor<1>| t.into_data().convert::<f64>().try_to_vec::<f64>().unwrap();
    let named = named_params(model);
    Host {
        w: v(named["w"].value.clone()),
        b: v(named["b"].value.clone()),
    }
}

fn ema_of(ema: &Ema) -> Host {
    let v = |t: &Tensor<1>| {
        t.clone()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .unwrap()
    };
    Host {
        w: v(&ema.params["w"]),
        b: v(&ema.params["b"]),
    }
}

/// One step of Algorithm 1 in f64: x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε, L = mean over the batch of
/// the mean over dimensions of (ε − ε_θ(x_t, t))², its gradient by the chain rule, clipping to
/// a global norm `clip`, AdamW (`m`, `v` carried, step `k`) and the EMA. Returns the per-example
/// losses and the gradient norm.
struct HandAdam {
    m: Vec<f64>,
    v: Vec<f64>,
    k: i32,
}

fn hand_step(
    theta: &mut Host,
    adam: &mut HandAdam,
    (x0, eps, t): (&[f64], &[f64], &[usize]),
    (lr, wd, clip): (f64, f64, f64),
    c: AdamWConfig,
) -> (Vec<f64>, f64) {
    let mut abar = Vec::new();
    let mut prod = 1.0;
    for beta in BETAS {
        prod *= 1.0 - beta;
        abar.push(prod);
    }
    let n = t.len();
    let mut losses = vec![0.0; n];
    let mut gw = vec![0.0; DIM * DIM];
    let mut gb = vec![0.0; DIM];
    for r in 0..n {
        let a = abar[t[r]];
        let xt: Vec<f64> = (0..DIM)
            .map(|i| a.sqrt() * x0[r * DIM + i] + (1.0 - a).sqrt() * eps[r * DIM + i])
            .collect();
        // The network sees the 0-based step as its time.
        let time = t[r] as f64;
        for j in 0..DIM {
            let pred: f64 =
                (0..DIM).map(|i| xt[i] * theta.w[i * DIM + j]).sum::<f64>() + time * theta.b[j];
            let err = pred - eps[r * DIM + j];
            losses[r] += err * err / DIM as f64;
            // ∂L/∂pred for L = (1/n) Σ_r (1/DIM) Σ_j err².
            let g = 2.0 * err / (n * DIM) as f64;
            for i in 0..DIM {
                gw[i * DIM + j] += xt[i] * g;
            }
            gb[j] += time * g;
        }
    }
    let mut grads: Vec<f64> = gw.into_iter().chain(gb).collect();
    let norm = grads.iter().map(|g| g * g).sum::<f64>().sqrt();
    if norm > clip {
        let f = clip / (norm + 1e-6);
        grads.iter_mut().for_each(|g| *g *= f);
    }
    adam.k += 1;
    let (bc1, bc2) = (1.0 - c.beta1.powi(adam.k), 1.0 - c.beta2.powi(adam.k));
    let mut params: Vec<f64> = theta.w.iter().chain(&theta.b).copied().collect();
    for (i, p) in params.iter_mut().enumerate() {
        adam.m[i] = c.beta1 * adam.m[i] + (1.0 - c.beta1) * grads[i];
        adam.v[i] = c.beta2 * adam.v[i] + (1.0 - c.beta2) * grads[i] * grads[i];
        let update = lr * (adam.m[i] / bc1) / ((adam.v[i] / bc2).sqrt() + c.eps);
        *p = *p * (1.0 - lr * wd) - update;
    }
    theta.w = params[..DIM * DIM].to_vec();
    theta.b = params[DIM * DIM..].to_vec();
    (losses, norm)
}

fn close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 2e-5 * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, by hand {w}"
        );
    }
}

fn chain() -> GaussianDiffusion {
    let schedule = NoiseSchedule::new(&BetaSchedule::Custom(BETAS.to_vec()), BETAS.len(), false)
        .expect("schedule");
    GaussianDiffusion::new(schedule, Parameterization::Eps, VarianceType::FixedLarge)
}

fn micro_batch(
    x0: &[f32],
    t: &[usize],
    rng: &mut Rng,
    rows: std::ops::Range<usize>,
    device: &Device,
) -> MicroBatch<2> {
    let n = t.len();
    let batch = Batch {
        data: x0.to_vec(),
        shape: vec![n, DIM],
        labels: Vec::new(),
        next: Position::default(),
    };
    let times = Times {
        steps: t.to_vec(),
        weights: vec![1.0; n],
        continuous: None,
        sigmas: None,
    };
    MicroBatch::new(batch, times, rng, rows, None, device)
}

#[test]
fn two_training_steps_equal_algorithm_1_computed_by_hand() {
    let device = crate::device::by_name("cpu").unwrap().autodiff();
    let init = Host {
        w: (0..DIM * DIM).map(|i| 0.3 - 0.07 * i as f64).collect(),
        b: vec![0.05, -0.02, 0.01],
    };
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let model = LinearDenoiser {
        w: Param::from_tensor(Tensor::from_data(
            TensorData::new(f32s(&init.w), [DIM, DIM]),
            &device,
        )),
        b: Param::from_tensor(Tensor::from_data(
            TensorData::new(f32s(&init.b), [DIM]),
            &device,
        )),
    };
    let adam = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let ema_cfg = EmaConfig {
        decay: 0.9,
        warmup_power: None,
    };
    let mut learner = Learner::new(model, AdamW::new(adam), Ema::new(ema_cfg), Precision::F32);
    let objective = Objective::Chain {
        diffusion: chain(),
        loss: LossConfig {
            kind: LossKind::Simple,
            weighting: Weighting::None,
        },
    };
    let mut theta = init.clone();
    let mut hand = HandAdam {
        m: vec![0.0; DIM * DIM + DIM],
        v: vec![0.0; DIM * DIM + DIM],
        k: 0,
    };
    let mut data = Rng::new(11);
    let mut noise = Rng::new(12);
    let (lr, clip) = (0.05, 0.5);
    let mut thetas = Vec::new();
    for (step, t) in [[0, 2, 4, 3], [1, 1, 3, 0]].iter().enumerate() {
        let x0 = data.normal_f32(BATCH * DIM);
        // The micro-batch draws its ε from `noise`: the same values from a copy.
        let eps: Vec<f64> = noise
            .clone()
            .normal_f32(BATCH * DIM)
            .iter()
            .map(|&e| e as f64)
            .collect();
        let batch = micro_batch(&x0, t, &mut noise, 0..BATCH, &device);
        let share = Share {
            accum: 1,
            micro: BATCH,
            distributed: false,
        };
        let out = learner.micro_step(&objective, &batch, share);
        let norm = learner.update(out.grads, lr, Some(clip)).unwrap();
        let x0: Vec<f64> = x0.iter().map(|&x| x as f64).collect();
        let (losses, hand_norm) = hand_step(
            &mut theta,
            &mut hand,
            (&x0, &eps, t),
            (lr, adam.weight_decay, clip),
            adam,
        );
        close(
            &out.losses,
            &losses,
            &format!("step {step}: per-example loss"),
        );
        close(
            &[norm],
            &[hand_norm],
            &format!("step {step}: gradient norm"),
        );
        assert!(hand_norm > clip, "the test means to exercise clipping");
        let got = host_of(learner.model());
        close(&got.w, &theta.w, &format!("step {step}: W after AdamW"));
        close(&got.b, &theta.b, &format!("step {step}: b after AdamW"));
        thetas.push(theta.clone());
    }
    // The EMA's first update copies the weights; the second is 0.9·θ_1 + 0.1·θ_2.
    let mix = |a: &[f64], b: &[f64]| -> Vec<f64> {
        a.iter().zip(b).map(|(x, y)| 0.9 * x + 0.1 * y).collect()
    };
    let ema = ema_of(&learner.ema);
    close(&ema.w, &mix(&thetas[0].w, &thetas[1].w), "EMA of W");
    close(&ema.b, &mix(&thetas[0].b, &thetas[1].b), "EMA of b");
    assert_eq!((learner.opt.step, learner.ema.updates), (2, 2));
}

/// A step's batch split into two micro-batches (gradient accumulation), or its rows split over
/// two "ranks" whose sums are added (what the all-reduce does), takes the same step as the
/// whole batch at once.
#[test]
fn micro_batches_and_rank_shares_sum_to_the_whole_batch_gradient() {
    let device = crate::device::by_name("cpu").unwrap().autodiff();
    let model = || LinearDenoiser {
        w: Param::from_tensor(Tensor::from_data(
            TensorData::new(
                (0..9).map(|i| 0.1 * i as f32 - 0.4).collect::<Vec<f32>>(),
                [3, 3],
            ),
            &device,
        )),
        b: Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.1f32, 0.0, -0.1], [3]),
            &device,
        )),
    };
    let learner = Learner::new(
        model(),
        AdamW::new(AdamWConfig::default()),
        Ema::new(EmaConfig::default()),
        Precision::F32,
    );
    let objective = Objective::Chain {
        diffusion: chain(),
        loss: LossConfig {
            kind: LossKind::Simple,
            weighting: Weighting::None,
        },
    };
    let x0 = Rng::new(3).normal_f32(BATCH * DIM);
    let t = [4, 0, 2, 1];
    let whole = learner.micro_step(
        &objective,
        &micro_batch(&x0, &t, &mut Rng::new(4), 0..BATCH, &device),
        Share {
            accum: 1,
            micro: BATCH,
            distributed: false,
        },
    );
    let flat = |g: &Grads| -> Vec<f64> {
        g.values()
            .flat_map(|t| {
                t.clone()
                    .into_data()
                    .convert::<f64>()
                    .try_to_vec::<f64>()
                    .unwrap()
            })
            .collect()
    };
    // Two micro-batches of two: the second draws its noise after the first.
    let mut rng = Rng::new(4);
    let mut accumulated = Grads::new();
    for half in 0..2 {
        let rows = half * 2..half * 2 + 2;
        let part = micro_batch(
            &x0[rows.start * DIM..rows.end * DIM],
            &t[rows.clone()],
            &mut rng,
            0..2,
            &device,
        );
        let share = Share {
            accum: 2,
            micro: 2,
            distributed: false,
        };
        accumulate(
            &mut accumulated,
            learner.micro_step(&objective, &part, share).grads,
        );
    }
    close(
        &flat(&accumulated),
        &flat(&whole.grads),
        "accumulated gradients",
    );
    // Two ranks, each with its rows of the same micro-batch.
    let mut summed = Grads::new();
    for rank in 0..2 {
        let rows = rank * 2..rank * 2 + 2;
        let mine = micro_batch(&x0, &t, &mut Rng::new(4), rows, &device);
        let share = Share {
            accum: 1,
            micro: BATCH,
            distributed: true,
        };
        accumulate(
            &mut summed,
            learner.micro_step(&objective, &mine, share).grads,
        );
    }
    close(
        &flat(&summed),
        &flat(&whole.grads),
        "gradients summed over ranks",
    );
}

/// EDM's loss (Karras et al. 2022, Table 1) of one micro-batch and its gradient norm in f64:
/// x = y + σn, F = (c_in·x)·W + c_noise·b, D = c_skip·x + c_out·F, L_r = λ(σ_r)·mean_j (D − y)².
#[test]
fn edm_loss_and_gradient_equal_their_formulas_by_hand() {
    use crate::diffusion::edm::{EdmPrecond, LogNormalSigma, edm_chain};
    let device = crate::device::by_name("cpu").unwrap().autodiff();
    let w0: Vec<f64> = (0..DIM * DIM).map(|i| 0.2 - 0.05 * i as f64).collect();
    let b0 = [0.3, -0.1, 0.2];
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let model = LinearDenoiser {
        w: Param::from_tensor(Tensor::from_data(
            TensorData::new(f32s(&w0), [DIM, DIM]),
            &device,
        )),
        b: Param::from_tensor(Tensor::from_data(
            TensorData::new(f32s(&b0), [DIM]),
            &device,
        )),
    };
    let ema = Ema::new(EmaConfig {
        decay: 0.9,
        warmup_power: None,
    });
    let mut learner = Learner::new(
        model,
        AdamW::new(AdamWConfig::default()),
        ema,
        Precision::F32,
    );
    let precond = EdmPrecond { sigma_data: 0.5 };
    let objective = Objective::Edm {
        precond,
        noise: LogNormalSigma {
            p_mean: -1.2,
            p_std: 1.2,
        },
        chain: GaussianDiffusion::new(
            edm_chain(50, 0.002, 80.0).unwrap(),
            Parameterization::X0,
            VarianceType::FixedLarge,
        ),
    };
    let sigmas = [0.01, 0.4, 2.5, 60.0];
    let mut data = Rng::new(5);
    let mut noise = Rng::new(6);
    let y = data.normal_f32(BATCH * DIM);
    let n: Vec<f64> = noise
        .clone()
        .normal_f32(BATCH * DIM)
        .iter()
        .map(|&e| e as f64)
        .collect();
    let batch = Batch {
        data: y.clone(),
        shape: vec![BATCH, DIM],
        labels: Vec::new(),
        next: Position::default(),
    };
    let times = Times {
        steps: vec![0; BATCH],
        weights: vec![1.0; BATCH],
        continuous: None,
        sigmas: Some(sigmas.to_vec()),
    };
    let batch = MicroBatch::<2>::new(batch, times, &mut noise, 0..BATCH, None, &device);
    let share = Share {
        accum: 1,
        micro: BATCH,
        distributed: false,
    };
    let out = learner.micro_step(&objective, &batch, share);
    let norm = learner.update(out.grads, 1e-3, Some(1e9)).unwrap();

    let mut losses = vec![0.0; BATCH];
    let mut grads = [0.0; DIM * DIM + DIM];
    for r in 0..BATCH {
        let s = sigmas[r];
        let x: Vec<f64> = (0..DIM)
            .map(|i| y[r * DIM + i] as f64 + s * n[r * DIM + i])
            .collect();
        let u: Vec<f64> = x.iter().map(|v| v * precond.c_in(s)).collect();
        let c = EdmPrecond::c_noise(s);
        let lambda = precond.loss_weight(s);
        for j in 0..DIM {
            let f = (0..DIM).map(|i| u[i] * w0[i * DIM + j]).sum::<f64>() + c * b0[j];
            let d = precond.c_skip(s) * x[j] + precond.c_out(s) * f;
            let err = d - y[r * DIM + j] as f64;
            losses[r] += lambda * err * err / DIM as f64;
            // ∂(mean over the batch of L_r)/∂F_j.
            let g = lambda * 2.0 * err * precond.c_out(s) / (BATCH * DIM) as f64;
            for i in 0..DIM {
                grads[i * DIM + j] += u[i] * g;
            }
            grads[DIM * DIM + j] += c * g;
        }
    }
    let hand_norm = grads.iter().map(|g| g * g).sum::<f64>().sqrt();
    for (i, (g, w)) in out.losses.iter().zip(&losses).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "loss[{i}]: {g} vs {w}"
        );
    }
    assert!(
        (norm - hand_norm).abs() <= 1e-4 * hand_norm,
        "gradient norm {norm} vs {hand_norm}"
    );
}
