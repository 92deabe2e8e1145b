//! Strided single-precision matrix products through the `gemm` crate (AVX-512 micro-kernels),
//! checked so that every index the strides reach lies inside the slices.

use gemm::Parallelism;

/// `dst[m×n]` = (`dst` if `accumulate`) + `a[m×k] · b[k×n]`, where element (i, j) of `a` is
/// `a[i·a_rs + j·a_cs]` and likewise for `b` and `dst`.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    dims: [usize; 3],
    dst: &mut [f32],
    dst_strides: [usize; 2],
    accumulate: bool,
    a: &[f32],
    a_strides: [usize; 2],
    b: &[f32],
    b_strides: [usize; 2],
    parallelism: Parallelism,
) {
    let [m, n, k] = dims;
    if m == 0 || n == 0 {
        return;
    }
    let last = |s: [usize; 2], rows: usize, cols: usize| (rows - 1) * s[0] + (cols - 1) * s[1];
    assert!(
        dst.len() > last(dst_strides, m, n),
        "matmul: destination too small"
    );
    assert!(
        dst_strides[0] >= n * dst_strides[1] || dst_strides[1] >= m * dst_strides[0],
        "matmul: destination entries overlap"
    );
    if k > 0 {
        assert!(a.len() > last(a_strides, m, k), "matmul: lhs too small");
        assert!(b.len() > last(b_strides, k, n), "matmul: rhs too small");
    }
    // SAFETY: the asserts above keep every index the strides reach inside the slices, and `dst`
    // does not alias `a` or `b` (a `&mut` and two `&` borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_strides[1] as isize,
            dst_strides[0] as isize,
            accumulate,
            a.as_ptr(),
            a_strides[1] as isize,
            a_strides[0] as isize,
            b.as_ptr(),
            b_strides[1] as isize,
            b_strides[0] as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
