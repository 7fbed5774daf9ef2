//! The unbiased pass@k estimator (Chen et al. 2021): `1 − C(n−c, k) / C(n, k)`.

/// pass@k from `n` samples of which `c` passed, computed as a stable product.
/// `k > n` is clamped to `n` (any sample set of size n is then the whole set).
pub fn pass_at_k(n: usize, c: usize, k: usize) -> f64 {
    let k = k.min(n);
    if k == 0 || c == 0 {
        return 0.0;
    }
    if n - c < k {
        return 1.0;
    }
    // C(n−c, k)/C(n, k) = Π_{i=n−c+1}^{n} (1 − k/i)
    let fail: f64 = ((n - c + 1)..=n)
        .map(|i| 1.0 - k as f64 / i as f64)
        .product();
    1.0 - fail
}

/// Mean pass@k over problems given `(n, c)` per problem.
pub fn mean_pass_at_k(results: &[(usize, usize)], k: usize) -> f64 {
    if results.is_empty() {
        return 0.0;
    }
    results
        .iter()
        .map(|&(n, c)| pass_at_k(n, c, k))
        .sum::<f64>()
        / results.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        assert_eq!(pass_at_k(10, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-12);
        assert_eq!(pass_at_k(10, 8, 5), 1.0);
        // 1 − C(5,2)/C(10,2) = 1 − 10/45
        assert!((pass_at_k(10, 5, 2) - (1.0 - 10.0 / 45.0)).abs() < 1e-12);
        assert!((mean_pass_at_k(&[(4, 1), (4, 3)], 1) - 0.5).abs() < 1e-12);
    }
}
