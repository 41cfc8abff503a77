//! Row-level helpers for mixture-of-experts execution: weighted sums of expert outputs.

/// `out = sum_j weights[j] * rows[j]` with `rows` holding `weights.len()` rows of
/// `out.len()` values, added in order `j = 0, 1, ...` (as ggml adds the expert views).
pub fn weighted_sum(rows: &[f32], weights: &[f32], out: &mut [f32]) {
    let cols = out.len();
    for (j, &w) in weights.iter().enumerate() {
        let r = &rows[j * cols..(j + 1) * cols];
        if j == 0 {
            for (o, &v) in out.iter_mut().zip(r) {
                *o = v * w;
            }
        } else {
            for (o, &v) in out.iter_mut().zip(r) {
                *o += v * w;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn weighted_sum_of_three_rows() {
        let rows = [1.0, 2.0, 10.0, 20.0, 100.0, 200.0];
        let mut out = [0.0; 2];
        super::weighted_sum(&rows, &[0.5, 0.25, 0.0], &mut out);
        assert_eq!(out, [3.0, 6.0]);
    }
}
