//! Throughput of the fused GroupNorm (+ SiLU) kernel on the `mnist` preset's largest shape
//! (batch 64, 32 channels at 28×28, 8 groups): `cargo bench --bench group_norm`. Prints the
//! fastest of N runs in milliseconds and GB/s of input read.

use ddpm::kernels::group_norm::{NormGeometry, backward, forward};
mod common;

use common::fastest;

fn main() {
    for (name, g) in [
        (
            "64×32×28×28",
            NormGeometry {
                batch: 64,
                channels: 32,
                spatial: 784,
                groups: 8,
            },
        ),
        (
            "64×96×28×28",
            NormGeometry {
                batch: 64,
                channels: 96,
                spatial: 784,
                groups: 8,
            },
        ),
        (
            "64×64×7×7",
            NormGeometry {
                batch: 64,
                channels: 64,
                spatial: 49,
                groups: 8,
            },
        ),
    ] {
        let n = g.batch * g.channels * g.spatial;
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let dy: Vec<f32> = (0..n)
            .map(|i| ((i * 31) % 100) as f32 * 1e-2 - 0.5)
            .collect();
        let gamma = vec![1.1f32; g.channels];
        let beta = vec![0.1f32; g.channels];
        let gb = n as f64 * 4.0 * 1e-9;
        for silu in [false, true] {
            let tf = fastest(15, || {
                std::hint::black_box(forward(&x, &gamma, &beta, None, &g, 1e-5, silu));
            });
            let (_, stats) = forward(&x, &gamma, &beta, None, &g, 1e-5, silu);
            let tb = fastest(15, || {
                std::hint::black_box(backward(
                    &x, &gamma, &beta, None, &stats, &dy, None, &g, silu,
                ));
            });
            println!(
                "{name:<14} silu {silu:<5} forward {:>6.2} ms ({:>5.1} GB/s)  backward {:>6.2} ms",
                tf * 1e3,
                gb / tf,
                tb * 1e3
            );
        }
    }
}
