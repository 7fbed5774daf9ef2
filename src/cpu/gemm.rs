//! Strided f32 matrix products on raw buffers (the `gemm` crate's AVX-512/AVX2 kernels), for the
//! kernels that write where their consumer reads instead of going through flex's matmul (which
//! allocates its output zeroed and then copies it once more to re-align it).

use gemm::{gemm, Parallelism};

/// A read-only strided matrix: element `(i, j)` at `ptr + i·rs + j·cs`.
#[derive(Clone, Copy)]
pub(super) struct View {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl View {
    /// Rows `rs` apart, columns contiguous.
    pub fn rows(x: &[f32], rs: usize) -> Self {
        Self {
            ptr: x.as_ptr(),
            rs: rs as isize,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub fn t(self) -> Self {
        Self {
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

/// `dst ← lhs · rhs` (`dst += lhs · rhs` when `accumulate`) for `lhs` `m × k` and `rhs` `k × n`,
/// `dst` with rows `dst_rs` apart and contiguous columns, on the calling thread. Without
/// `accumulate`, `dst` is only written (it may be uninitialised).
///
/// # Safety
/// Every element the views and `dst` address must be in bounds, and `dst` must not overlap the
/// inputs or another thread's output.
pub(super) unsafe fn matmul(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    // SAFETY: forwarded to the caller.
    unsafe { matmul_with(dims, dst, dst_rs, lhs, rhs, accumulate, Parallelism::None) }
}

/// `lhs · rhs` for `lhs` `m × k` and `rhs` `k × n`, added to `init` when given (`m × n` values,
/// e.g. a bias repeated per row), as a new contiguous `m × n` vector; split over the rayon pool's
/// threads (call it outside a parallel loop).
///
/// # Safety
/// Every element the views address must be in bounds.
pub(super) unsafe fn matmul_to_vec(
    dims: (usize, usize, usize),
    lhs: View,
    rhs: View,
    init: Option<Vec<f32>>,
) -> Vec<f32> {
    let len = dims.0 * dims.1;
    let accumulate = init.is_some();
    let mut out = init.unwrap_or_else(|| Vec::with_capacity(len));
    assert_eq!(
        out.len(),
        if accumulate { len } else { 0 },
        "init is not m × n"
    );
    if len > 0 {
        // SAFETY: the views are in bounds (caller); `out` has room for m × n, is read only where
        // `init` filled it, and is fully written by the product.
        unsafe {
            matmul_parallel(dims, out.as_mut_ptr(), dims.1, lhs, rhs, accumulate);
            out.set_len(len);
        }
    }
    out
}

/// [`matmul`] split over the rayon pool's threads (call it outside a parallel loop).
///
/// # Safety
/// As [`matmul`].
unsafe fn matmul_parallel(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
) {
    let threads = rayon::current_num_threads();
    let par = if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    };
    // SAFETY: forwarded to the caller.
    unsafe { matmul_with(dims, dst, dst_rs, lhs, rhs, accumulate, par) }
}

unsafe fn matmul_with(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    lhs: View,
    rhs: View,
    accumulate: bool,
    par: Parallelism,
) {
    // SAFETY: the caller guarantees the extents; gemm reads `dst` only when `accumulate`.
    unsafe {
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            lhs.ptr,
            lhs.cs,
            lhs.rs,
            rhs.ptr,
            rhs.cs,
            rhs.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        )
    }
}
