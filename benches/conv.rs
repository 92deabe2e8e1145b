//! Throughput of the convolution kernels on the `mnist` preset's shapes (batch 64):
//! `cargo bench --bench conv`. Prints milliseconds and GFLOP/s per call, forward and backward,
//! for the GEMM route and the direct AVX-512 route (where it applies: stride 1, not 1×1, at least
//! 8 output channels, and 8 input channels for the backward pass; else both rows are the GEMM).

use ddpm::kernels::conv::{ConvGeometry, Route, backward_with, forward_with};
mod common;

use common::fastest;

fn geometry(cin: usize, cout: usize, size: usize, k: usize, stride: usize) -> ConvGeometry {
    ConvGeometry {
        batch: 64,
        cin,
        h: size,
        w: size,
        cout,
        kh: k,
        kw: k,
        stride: [stride, stride],
        pad: [k / 2, k / 2],
    }
}

fn main() {
    let shapes = [
        ("conv_in 1→32 @28", geometry(1, 32, 28, 3, 1)),
        ("32→32 @28", geometry(32, 32, 28, 3, 1)),
        ("96→32 @28", geometry(96, 32, 28, 3, 1)),
        ("down 32→32 @28 s2", geometry(32, 32, 28, 3, 2)),
        ("64→64 @14", geometry(64, 64, 14, 3, 1)),
        ("128→64 @7", geometry(128, 64, 7, 3, 1)),
        ("skip 1×1 128→64 @7", geometry(128, 64, 7, 1, 1)),
        ("conv_out 32→1 @28", geometry(32, 1, 28, 3, 1)),
    ];
    println!(
        "{:<22} {:>7} {:>10} {:>9} {:>10} {:>9}",
        "shape", "route", "fwd ms", "GFLOP/s", "bwd ms", "GFLOP/s"
    );
    for (name, g) in shapes {
        let x: Vec<f32> = (0..g.batch * g.cin * g.h * g.w)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let w: Vec<f32> = (0..g.cout * g.cin * g.kh * g.kw)
            .map(|i| ((i * 104729) % 1000) as f32 * 1e-3 - 0.5)
            .collect();
        let b = vec![0.1f32; g.cout];
        let dy: Vec<f32> = (0..g.batch * g.cout * g.out_h() * g.out_w())
            .map(|i| ((i * 31) % 100) as f32 * 1e-2 - 0.5)
            .collect();
        let flop = 2.0 * (g.batch * g.cout * g.out_h() * g.out_w() * g.cin * g.kh * g.kw) as f64;
        for (route, direct) in [
            ("gemm", Route::Gemm),
            ("direct", Route::Direct),
            ("winograd", Route::Winograd),
        ] {
            let tf = fastest(15, || {
                std::hint::black_box(forward_with(&x, &w, &b, &g, direct));
            });
            let tb = fastest(9, || {
                std::hint::black_box(backward_with(&x, &w, &dy, &g, direct, true));
            });
            println!(
                "{:<22} {:>7} {:>10.2} {:>9.1} {:>10.2} {:>9.1}",
                name,
                route,
                tf * 1e3,
                flop / tf * 1e-9,
                tb * 1e3,
                2.0 * flop / tb * 1e-9
            );
        }
    }
}
