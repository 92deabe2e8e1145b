//! What the Winograd F(4×4, 3×3) kernels (`winograd4`, `winograd4_grad`)
//! share: the shapes of a convolution, and the spacing of the planes of a transformed tensor.

/// The shapes of one Winograd convolution (3×3, stride 1, padding 1: output size = input size),
/// for the F(4×4) kernels of `winograd4` and `winograd4_grad`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WinoGeometry {
    /// Images.
    pub batch: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Height (input and output).
    pub h: usize,
    /// Width (input and output).
    pub w: usize,
}

/// The distance between the planes of a transformed tensor (V, M, Z) for `n` floats per plane:
/// rounded up so that consecutive planes start one cache line apart modulo 4 KiB. The transforms
/// touch all planes at the same offset at once; with plane sizes that are multiples of 2 KiB (32
/// input channels × 208 tiles is 26 KiB) those streams fell into two sets of the L1 cache.
pub(super) fn spread(n: usize) -> usize {
    const LINE: usize = 16;
    const PAGE: usize = 1024;
    let n = n.next_multiple_of(LINE);
    let lines = (n % PAGE) / LINE;
    n + (PAGE / LINE + 1 - lines) % (PAGE / LINE) * LINE
}
