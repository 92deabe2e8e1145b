//! Ho et al.'s self-attention block after its GroupNorm, in one pass per image:
//! y = x + W_projᵀ·attention(W_qkvᵀ·h + b_qkv) + b_proj, on `[B, C, N]` buffers (N pixels), with
//! softmax(qᵀk/√d) per head. Burn composes it from about twenty tensor operations (transposes,
//! narrow, reshape copies, matmuls, a softmax), most of them on one thread; here each image is one
//! task: forward, products on its planes (`Product`: the projections, and per head the logits
//! and the mixing) with the probabilities kept transposed (keys down, queries across) so that the
//! softmax runs along rows with the queries in the vector lanes; backward, a handful of GEMMs.

use super::fast_math::exp;
use super::matmul::matmul;
use super::product::Product;
use gemm::Parallelism;
use rayon::prelude::*;

/// The shapes of one attention block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttnGeometry {
    /// Images.
    pub batch: usize,
    /// Channels (C, a multiple of `heads`).
    pub channels: usize,
    /// Pixels (N = H·W).
    pub pixels: usize,
    /// Heads.
    pub heads: usize,
}

impl AttnGeometry {
    fn head_dim(&self) -> usize {
        self.channels / self.heads
    }

    /// 1/√d, the logits' scale.
    fn scale(&self) -> f32 {
        (1.0 / (self.head_dim() as f64).sqrt()) as f32
    }

    fn image(&self) -> usize {
        self.channels * self.pixels
    }

    /// Inside an image's task the GEMMs run on one thread, unless the images are too few to keep
    /// the pool busy.
    fn parallelism(&self) -> Parallelism {
        if self.batch >= rayon::current_num_threads() {
            Parallelism::None
        } else {
            Parallelism::Rayon(0)
        }
    }
}

/// The block's parameters, laid out as burn's `Linear` keeps them (`weight[d_in, d_out]`).
#[derive(Debug, Clone, Copy)]
pub struct AttnWeights<'a> {
    /// `[C, 3C]`: columns 0..C give q, C..2C k, 2C..3C v (head j: channels j·d..(j+1)·d of each).
    pub wqkv: &'a [f32],
    /// `[3C]`.
    pub bqkv: &'a [f32],
    /// `[C, C]`.
    pub wproj: &'a [f32],
    /// `[C]`.
    pub bproj: &'a [f32],
}

impl AttnWeights<'_> {
    fn check(&self, g: &AttnGeometry) {
        let c = g.channels;
        assert!(
            g.heads > 0 && c.is_multiple_of(g.heads),
            "attention: {c} channels, {} heads",
            g.heads
        );
        assert_eq!(self.wqkv.len(), c * 3 * c, "attention: qkv weight length");
        assert_eq!(self.bqkv.len(), 3 * c, "attention: qkv bias length");
        assert_eq!(
            self.wproj.len(),
            c * c,
            "attention: projection weight length"
        );
        assert_eq!(self.bproj.len(), c, "attention: projection bias length");
    }
}

/// What the backward pass needs from the forward pass.
#[derive(Debug, Clone)]
pub struct AttnState {
    /// q, k, v per image, `[B, 3C, N]`.
    qkv: Vec<f32>,
    /// Attention probabilities transposed, `[B, heads, N (key j), N (query i)]`: each column
    /// (query) sums to 1.
    probs: Vec<f32>,
    /// The heads' outputs before the projection, `[B, C, N]`.
    mixed: Vec<f32>,
}

/// y = x + W_projᵀ·attention(W_qkvᵀ·h + b_qkv) + b_proj for `h`, `x` of shape `[B, C, N]`.
pub fn forward(h: &[f32], x: &[f32], w: &AttnWeights, g: &AttnGeometry) -> (Vec<f32>, AttnState) {
    w.check(g);
    let (c, n, heads) = (g.channels, g.pixels, g.heads);
    let len = g.batch * g.image();
    assert_eq!(h.len(), len, "attention: input length");
    assert_eq!(x.len(), len, "attention: residual length");
    // Every element is written below (the products write whole planes).
    let mut qkv = vec![0f32; 3 * len];
    let mut probs = vec![0f32; g.batch * heads * n * n];
    let mut mixed = vec![0f32; len];
    let mut y = vec![0f32; len];
    if len == 0 {
        return (y, AttnState { qkv, probs, mixed });
    }
    let image = g.image();
    // qkv = W_qkvᵀ·h + b_qkv; y = x + W_projᵀ·mixed + b_proj.
    let project_in = Product {
        a: w.wqkv,
        ars: 1,
        acs: 3 * c,
        rows: 3 * c,
        k: c,
        plane: n,
        init: Some(w.bqkv),
    };
    let project_out = Product {
        a: w.wproj,
        ars: 1,
        acs: c,
        rows: c,
        k: c,
        plane: n,
        init: Some(w.bproj),
    };
    qkv.par_chunks_mut(3 * image)
        .zip(probs.par_chunks_mut(heads * n * n))
        .zip(mixed.par_chunks_mut(image))
        .zip(y.par_chunks_mut(image))
        .zip(h.par_chunks(image).zip(x.par_chunks(image)))
        .for_each(|((((qkv, probs), mixed), y), (h, x))| {
            project_in.run_into(h, None, qkv);
            for (head, pt) in probs.chunks_mut(n * n).enumerate() {
                head_forward(qkv, pt, mixed, head, g);
            }
            project_out.run_into(mixed, Some(x), y);
        });
    (y, AttnState { qkv, probs, mixed })
}

/// The planes of one head in an image's `[3C, N]` q, k, v: (q, k, v), each `[d, N]`.
fn head_planes<'a>(qkv: &'a [f32], head: usize, g: &AttnGeometry) -> [&'a [f32]; 3] {
    let (c, n, d) = (g.channels, g.pixels, g.head_dim());
    std::array::from_fn(|part| &qkv[(part * c + head * d) * n..(part * c + (head + 1) * d) * n])
}

/// One head of one image: pᵀ = softmax over the keys of kᵀq/√d (`[N key, N query]`), and
/// mixed[head] = v·pᵀ, both as products on the planes ([`Product`]).
fn head_forward(qkv: &[f32], pt: &mut [f32], mixed: &mut [f32], head: usize, g: &AttnGeometry) {
    let (n, d) = (g.pixels, g.head_dim());
    let [q, k, v] = head_planes(qkv, head, g);
    // logitsᵀ[j][i] = Σ_e k[e][j] q[e][i].
    Product {
        a: k,
        ars: 1,
        acs: n,
        rows: n,
        k: d,
        plane: n,
        init: None,
    }
    .run_into(q, None, pt);
    softmax_columns(pt, n, g.scale());
    // mixed[e][i] = Σ_j v[e][j] pᵀ[j][i].
    Product {
        a: v,
        ars: n,
        acs: 1,
        rows: d,
        k: n,
        plane: n,
        init: None,
    }
    .run_into(pt, None, &mut mixed[head * d * n..(head + 1) * d * n]);
}

with_avx512! {
    /// Each column of the `[rows, n]` matrix `m` ← softmax(scale · column), its maximum
    /// subtracted first: the queries lie along the rows, so every step runs across the lanes.
    fn softmax_columns(m: &mut [f32], n: usize, scale: f32) -> () {
        let mut top = vec![f32::NEG_INFINITY; n];
        for row in m.chunks(n) {
            for (t, &v) in top.iter_mut().zip(row) {
                *t = t.max(v);
            }
        }
        let mut total = vec![0f32; n];
        for row in m.chunks_mut(n) {
            for ((v, &t), s) in row.iter_mut().zip(&top).zip(total.iter_mut()) {
                *v = exp((*v - t) * scale);
                *s += *v;
            }
        }
        total.iter_mut().for_each(|s| *s = 1.0 / *s);
        for row in m.chunks_mut(n) {
            row.iter_mut().zip(&total).for_each(|(v, &r)| *v *= r);
        }
    }
}

/// `dst[j][i] = src[i][j]` for n × n matrices.
fn transpose(src: &[f32], n: usize, dst: &mut [f32]) {
    for (i, row) in src.chunks(n).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            dst[j * n + i] = v;
        }
    }
}

/// Gradients of [`forward`] (∂L/∂x is ∂L/∂y itself and is not repeated here).
#[derive(Debug, Clone, PartialEq)]
pub struct AttnGrads {
    /// ∂L/∂h, `[B, C, N]` (empty when not asked for).
    pub dh: Vec<f32>,
    /// ∂L/∂W_qkv, `[C, 3C]`.
    pub dwqkv: Vec<f32>,
    /// ∂L/∂b_qkv, `[3C]`.
    pub dbqkv: Vec<f32>,
    /// ∂L/∂W_proj, `[C, C]`.
    pub dwproj: Vec<f32>,
    /// ∂L/∂b_proj, `[C]`.
    pub dbproj: Vec<f32>,
}

/// The parameter gradients one task adds its images into.
struct Partial {
    dwqkv: Vec<f32>,
    dbqkv: Vec<f32>,
    dwproj: Vec<f32>,
    dbproj: Vec<f32>,
}

impl Partial {
    fn zeros(c: usize) -> Self {
        Self {
            dwqkv: vec![0.0; 3 * c * c],
            dbqkv: vec![0.0; 3 * c],
            dwproj: vec![0.0; c * c],
            dbproj: vec![0.0; c],
        }
    }

    fn add(mut self, other: Self) -> Self {
        let add = |a: &mut Vec<f32>, b: Vec<f32>| a.iter_mut().zip(b).for_each(|(a, b)| *a += b);
        add(&mut self.dwqkv, other.dwqkv);
        add(&mut self.dbqkv, other.dbqkv);
        add(&mut self.dwproj, other.dwproj);
        add(&mut self.dbproj, other.dbproj);
        self
    }
}

/// The backward pass of [`forward`] given ∂L/∂y; ∂L/∂h only when `input_grad`.
pub fn backward(
    h: &[f32],
    w: &AttnWeights,
    state: &AttnState,
    dy: &[f32],
    g: &AttnGeometry,
    input_grad: bool,
) -> AttnGrads {
    w.check(g);
    let (c, n, heads) = (g.channels, g.pixels, g.heads);
    let image = g.image().max(1);
    assert_eq!(
        h.len(),
        g.batch * g.image(),
        "attention backward: input length"
    );
    assert_eq!(dy.len(), h.len(), "attention backward: gradient length");
    assert_eq!(state.mixed.len(), h.len(), "attention backward: state");
    let mut dh = super::zeroed(if input_grad { h.len() } else { 0 });
    let dh_parts: Vec<Option<&mut [f32]>> = if input_grad {
        dh.chunks_mut(image).map(Some).collect()
    } else {
        (0..g.batch).map(|_| None).collect()
    };
    let par = g.parallelism();
    let sums = dh_parts
        .into_par_iter()
        .zip(h.par_chunks(image))
        .zip(dy.par_chunks(image))
        .zip(state.qkv.par_chunks(3 * image))
        .zip(state.probs.par_chunks((heads * n * n).max(1)))
        .zip(state.mixed.par_chunks(image))
        .fold(
            || {
                (
                    Partial::zeros(c),
                    vec![0f32; 4 * image],
                    vec![0f32; 2 * n * n],
                )
            },
            |(mut part, mut scratch, mut dp), (((((dh, h), dy), qkv), probs), mixed)| {
                let (dmixed, dqkv) = scratch.split_at_mut(image);
                image_backward(
                    ImageBackward {
                        h,
                        dy,
                        qkv,
                        probs,
                        mixed,
                    },
                    w,
                    g,
                    par,
                    (dmixed, dqkv, &mut dp),
                    &mut part,
                    dh,
                );
                (part, scratch, dp)
            },
        )
        .map(|(part, _, _)| part)
        .reduce(|| Partial::zeros(c), Partial::add);
    AttnGrads {
        dh,
        dwqkv: sums.dwqkv,
        dbqkv: sums.dbqkv,
        dwproj: sums.dwproj,
        dbproj: sums.dbproj,
    }
}

/// One image's inputs to the backward pass.
struct ImageBackward<'a> {
    h: &'a [f32],
    dy: &'a [f32],
    qkv: &'a [f32],
    probs: &'a [f32],
    mixed: &'a [f32],
}

/// One image: adds its parameter gradients into `part`, writes ∂L/∂h into `dh` when given.
fn image_backward(
    im: ImageBackward,
    w: &AttnWeights,
    g: &AttnGeometry,
    par: Parallelism,
    (dmixed, dqkv, dp): (&mut [f32], &mut [f32], &mut [f32]),
    part: &mut Partial,
    dh: Option<&mut [f32]>,
) {
    let (c, n, d) = (g.channels, g.pixels, g.head_dim());
    let (dp, p_buf) = dp.split_at_mut(n * n);
    // Output projection: y = x + W_projᵀ·mixed + b.
    matmul(
        [c, n, c],
        dmixed,
        [n, 1],
        false,
        w.wproj,
        [c, 1],
        im.dy,
        [n, 1],
        par,
    );
    matmul(
        [c, c, n],
        &mut part.dwproj,
        [c, 1],
        true,
        im.mixed,
        [n, 1],
        im.dy,
        [1, n],
        par,
    );
    for (s, row) in part.dbproj.iter_mut().zip(im.dy.chunks(n.max(1))) {
        *s += super::lane_sum(row, |v| v) as f32;
    }
    let scale = g.scale();
    for head in 0..g.heads {
        let span = |base: usize| (base + head * d) * n..(base + (head + 1) * d) * n;
        let [q, k, v] = head_planes(im.qkv, head, g);
        // p[i][j] (queries down) from the transposed probabilities the forward pass kept.
        transpose(&im.probs[head * n * n..(head + 1) * n * n], n, p_buf);
        let p = &*p_buf;
        let dmix = &dmixed[span(0)];
        // ∂v[c, j] = Σ_i ∂mixed[c, i] p[i, j].
        matmul(
            [d, n, n],
            &mut dqkv[span(2 * c)],
            [n, 1],
            false,
            dmix,
            [n, 1],
            p,
            [n, 1],
            par,
        );
        // ∂p[i, j] = Σ_c ∂mixed[c, i] v[c, j].
        matmul([n, n, d], dp, [n, 1], false, dmix, [1, n], v, [n, 1], par);
        // ∂logits (with the scale folded in) = scale · p ⊙ (∂p − Σ_j p ∂p).
        for (dr, pr) in dp.chunks_mut(n.max(1)).zip(p.chunks(n.max(1))) {
            let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
            dr.iter_mut()
                .zip(pr)
                .for_each(|(a, &pv)| *a = scale * pv * (*a - dot));
        }
        // ∂q[c, i] = Σ_j k[c, j] ∂s[i, j];  ∂k[c, j] = Σ_i q[c, i] ∂s[i, j].
        matmul(
            [d, n, n],
            &mut dqkv[span(0)],
            [n, 1],
            false,
            k,
            [n, 1],
            dp,
            [1, n],
            par,
        );
        matmul(
            [d, n, n],
            &mut dqkv[span(c)],
            [n, 1],
            false,
            q,
            [n, 1],
            dp,
            [n, 1],
            par,
        );
    }
    // Input projection: qkv = W_qkvᵀ·h + b.
    matmul(
        [c, 3 * c, n],
        &mut part.dwqkv,
        [3 * c, 1],
        true,
        im.h,
        [n, 1],
        dqkv,
        [1, n],
        par,
    );
    for (s, row) in part.dbqkv.iter_mut().zip(dqkv.chunks(n.max(1))) {
        *s += super::lane_sum(row, |v| v) as f32;
    }
    if let Some(dh) = dh {
        matmul(
            [c, n, 3 * c],
            dh,
            [n, 1],
            false,
            w.wqkv,
            [3 * c, 1],
            dqkv,
            [n, 1],
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: u64, scale: f64) -> Vec<f32> {
        let mut rng = crate::rng::Rng::new(seed);
        (0..len).map(|_| (scale * rng.normal()) as f32).collect()
    }

    /// The block by its definition in f64, straight from the formula with explicit sums.
    fn reference(h: &[f64], x: &[f64], p: &[Vec<f64>; 4], g: &AttnGeometry) -> Vec<f64> {
        let (c, n, d) = (g.channels, g.pixels, g.head_dim());
        let [wqkv, bqkv, wproj, bproj] = p;
        let mut y = x.to_vec();
        for b in 0..g.batch {
            let hb = &h[b * c * n..(b + 1) * c * n];
            // qkv[o][i] = b[o] + Σ_c W[c, o] h[c, i].
            let qkv: Vec<Vec<f64>> = (0..3 * c)
                .map(|o| {
                    (0..n)
                        .map(|i| {
                            bqkv[o]
                                + (0..c)
                                    .map(|ci| wqkv[ci * 3 * c + o] * hb[ci * n + i])
                                    .sum::<f64>()
                        })
                        .collect()
                })
                .collect();
            let mut mixed = vec![vec![0f64; n]; c];
            for head in 0..g.heads {
                for i in 0..n {
                    let logits: Vec<f64> = (0..n)
                        .map(|j| {
                            (0..d)
                                .map(|e| qkv[head * d + e][i] * qkv[c + head * d + e][j])
                                .sum::<f64>()
                                / (d as f64).sqrt()
                        })
                        .collect();
                    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = logits.iter().map(|l| (l - m).exp()).sum();
                    for e in 0..d {
                        mixed[head * d + e][i] = (0..n)
                            .map(|j| (logits[j] - m).exp() / z * qkv[2 * c + head * d + e][j])
                            .sum();
                    }
                }
            }
            for o in 0..c {
                for i in 0..n {
                    y[b * c * n + o * n + i] += bproj[o]
                        + (0..c)
                            .map(|ci| wproj[ci * c + o] * mixed[ci][i])
                            .sum::<f64>();
                }
            }
        }
        y
    }

    const GEOMETRY: AttnGeometry = AttnGeometry {
        batch: 2,
        channels: 6,
        pixels: 5,
        heads: 2,
    };

    struct Case {
        h: Vec<f32>,
        x: Vec<f32>,
        params: [Vec<f32>; 4],
    }

    fn case(g: &AttnGeometry) -> Case {
        let (c, len) = (g.channels, g.batch * g.channels * g.pixels);
        Case {
            h: values(len, 1, 1.0),
            x: values(len, 2, 1.0),
            params: [
                values(c * 3 * c, 3, 0.6),
                values(3 * c, 4, 0.3),
                values(c * c, 5, 0.5),
                values(c, 6, 0.3),
            ],
        }
    }

    fn weights(p: &[Vec<f32>; 4]) -> AttnWeights<'_> {
        AttnWeights {
            wqkv: &p[0],
            bqkv: &p[1],
            wproj: &p[2],
            bproj: &p[3],
        }
    }

    fn wide(v: &[f32]) -> Vec<f64> {
        v.iter().map(|&a| a as f64).collect()
    }

    #[test]
    fn forward_matches_the_definition() {
        for g in [
            GEOMETRY,
            AttnGeometry {
                batch: 3,
                channels: 8,
                pixels: 7,
                heads: 1,
            },
            // Pixels past a vector of 16 ending inside the next (the 7×7 of `mnist`), channel
            // counts that fill no register tile of the products.
            AttnGeometry {
                batch: 2,
                channels: 10,
                pixels: 49,
                heads: 2,
            },
        ] {
            let t = case(&g);
            let (y, _) = forward(&t.h, &t.x, &weights(&t.params), &g);
            let want = reference(
                &wide(&t.h),
                &wide(&t.x),
                &t.params.clone().map(|v| wide(&v)),
                &g,
            );
            for (a, e) in y.iter().zip(&want) {
                assert!(
                    (*a as f64 - e).abs() < 1e-5 * (1.0 + e.abs()),
                    "{g:?}: {a} vs {e}"
                );
            }
        }
    }

    /// Against central differences of the f64 definition of ⟨dy, y⟩ (step 1e-4: truncation
    /// error ~1e-8, far under the tolerance).
    #[test]
    fn backward_matches_finite_differences() {
        let medium = AttnGeometry {
            batch: 2,
            channels: 6,
            pixels: 19,
            heads: 2,
        };
        for g in [GEOMETRY, medium] {
            backward_case(&g);
        }
    }

    fn backward_case(g: &AttnGeometry) {
        let g = *g;
        let t = case(&g);
        let dy = values(t.h.len(), 7, 1.0);
        let (_, state) = forward(&t.h, &t.x, &weights(&t.params), &g);
        let grads = backward(&t.h, &weights(&t.params), &state, &dy, &g, true);
        let x = wide(&t.x);
        // Inputs varied: 0 h, 1..=4 the parameters.
        let base: Vec<Vec<f64>> = std::iter::once(wide(&t.h))
            .chain(t.params.iter().map(|v| wide(v)))
            .collect();
        let functional = |v: &[Vec<f64>]| -> f64 {
            let p = [v[1].clone(), v[2].clone(), v[3].clone(), v[4].clone()];
            reference(&v[0], &x, &p, &g)
                .iter()
                .zip(&dy)
                .map(|(y, d)| y * *d as f64)
                .sum()
        };
        let step = 1e-4;
        let got = [
            &grads.dh,
            &grads.dwqkv,
            &grads.dbqkv,
            &grads.dwproj,
            &grads.dbproj,
        ];
        for (which, got) in got.into_iter().enumerate() {
            assert_eq!(got.len(), base[which].len(), "input {which}");
            for (i, &v) in got.iter().enumerate() {
                let (mut plus, mut minus) = (base.clone(), base.clone());
                plus[which][i] += step;
                minus[which][i] -= step;
                let want = (functional(&plus) - functional(&minus)) / (2.0 * step);
                assert!(
                    (v as f64 - want).abs() < 1e-3 * (1.0 + want.abs()),
                    "input {which}[{i}]: {v} vs {want}"
                );
            }
        }
        let without = backward(&t.h, &weights(&t.params), &state, &dy, &g, false);
        assert!(without.dh.is_empty());
        assert_eq!(without.dwqkv, grads.dwqkv);
    }
}
