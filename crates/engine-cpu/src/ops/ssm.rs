//! Mamba-2 recurrent operators on f32 rows: the causal depthwise convolution with its rolling
//! state, and the selective scan with grouped B/C, the `D` skip and softplus time steps.
//!
//! Both work on one sequence run at a time (its rows and its state slot) and a range of
//! channels or heads, so [`crate::CpuBackend`] can spread runs and channels over threads
//! while each sequence's numbers stay independent of what else is in the batch.

use crate::ops::activation::silu;

/// Largest convolution kernel supported (Mamba uses 4).
pub const MAX_CONV: usize = 64;

/// `softplus(x)` as ggml computes it (`x` itself above 20).
#[inline]
pub fn softplus(x: f32) -> f32 {
    if x > 20.0 {
        x
    } else {
        (1.0 + x.exp()).ln()
    }
}

/// The convolution of one run for channels `c0..c1`.
pub struct ConvRun<'a> {
    /// The run's input rows, `len * channels`.
    pub x: &'a [f32],
    /// Kernel, `[channels, d_conv]`.
    pub w: &'a [f32],
    /// Optional bias, `[channels]`.
    pub b: Option<&'a [f32]>,
    /// Channels per row.
    pub channels: usize,
    /// Kernel width.
    pub d_conv: usize,
    /// Rows in the run.
    pub len: usize,
    /// Whether the sequence starts here (zero history).
    pub fresh: bool,
}

/// Convolves channels `c0..c1` of a run. `state` is this slot's history for exactly those
/// channels (`(c1 - c0) * (d_conv - 1)` values, channel-major, oldest first) and is left
/// holding the last `d_conv - 1` inputs; `out(t)` gives row `t`'s output slice for those
/// channels.
pub fn conv_channels<'o>(
    run: &ConvRun,
    c0: usize,
    c1: usize,
    state: &mut [f32],
    mut out: impl FnMut(usize) -> &'o mut [f32],
) {
    let (ch, dc, h) = (run.channels, run.d_conv, run.d_conv - 1);
    if run.fresh {
        state.fill(0.0);
    }
    for t in 0..run.len {
        let o = out(t);
        for c in c0..c1 {
            let hist = &mut state[(c - c0) * h..(c - c0 + 1) * h];
            let w = &run.w[c * dc..(c + 1) * dc];
            let xv = run.x[t * ch + c];
            let mut sum = 0.0f32;
            for j in 0..h {
                sum += hist[j] * w[j];
            }
            sum += xv * w[h];
            if h > 0 {
                hist.copy_within(1.., 0);
                hist[h - 1] = xv;
            }
            if let Some(b) = run.b {
                sum += b[c];
            }
            o[c - c0] = silu(sum);
        }
    }
}

/// One run of the selective scan.
pub struct ScanRun<'a> {
    /// The run's `[x | B | C]` rows.
    pub xbc: &'a [f32],
    /// Width of an `xbc` row.
    pub xbc_cols: usize,
    /// The run's raw time steps, `len * n_head`.
    pub dt: &'a [f32],
    /// Per-head decay, time-step bias and skip.
    pub a: &'a [f32],
    /// Time-step bias per head.
    pub dt_bias: &'a [f32],
    /// Skip per head.
    pub d: &'a [f32],
    /// Heads.
    pub n_head: usize,
    /// Channels per head.
    pub head_dim: usize,
    /// State per channel.
    pub d_state: usize,
    /// B/C groups.
    pub n_group: usize,
    /// Rows in the run.
    pub len: usize,
    /// Whether the sequence starts here (zero state).
    pub fresh: bool,
}

/// Scans head `h` over a run. `state` is this slot's state of head `h`
/// (`head_dim * d_state`, channel-major) and `y(t)` gives row `t`'s `head_dim` outputs.
pub fn scan_head<'o>(
    run: &ScanRun,
    h: usize,
    state: &mut [f32],
    mut y: impl FnMut(usize) -> &'o mut [f32],
) {
    let (hd, ds) = (run.head_dim, run.d_state);
    let d_inner = run.n_head * hd;
    let g = h / (run.n_head / run.n_group);
    if run.fresh {
        state.fill(0.0);
    }
    for t in 0..run.len {
        let row = &run.xbc[t * run.xbc_cols..(t + 1) * run.xbc_cols];
        let dt = softplus(run.dt[t * run.n_head + h] + run.dt_bias[h]);
        let da = (dt * run.a[h]).exp();
        let b = &row[d_inner + g * ds..d_inner + (g + 1) * ds];
        let c = &row[d_inner + (run.n_group + g) * ds..d_inner + (run.n_group + g + 1) * ds];
        let out = y(t);
        for i in 0..hd {
            let xv = row[h * hd + i];
            let x_dt = xv * dt;
            let s = &mut state[i * ds..(i + 1) * ds];
            let mut sum = 0.0f32;
            for k in 0..ds {
                let v = s[k] * da + b[k] * x_dt;
                sum += v * c[k];
                s[k] = v;
            }
            out[i] = sum + xv * run.d[h];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct evaluation of the convolution formula, for comparison.
    fn conv_direct(x: &[f32], w: &[f32], ch: usize, dc: usize, hist: &[f32], t: usize) -> Vec<f32> {
        (0..ch)
            .map(|c| {
                let mut s = 0.0f32;
                for j in 0..dc {
                    // input index t - (dc - 1) + j; negative ones come from the history
                    let k = t as isize - (dc as isize - 1) + j as isize;
                    let v = if k >= 0 {
                        x[k as usize * ch + c]
                    } else {
                        hist[c * (dc - 1) + ((dc - 1) as isize + k) as usize]
                    };
                    s += v * w[c * dc + j];
                }
                silu(s)
            })
            .collect()
    }

    #[test]
    fn conv_uses_history_and_rolls_it() {
        let (ch, dc, len) = (3, 4, 5);
        let x: Vec<f32> = (0..len * ch).map(|i| (i as f32 * 0.37).sin()).collect();
        let w: Vec<f32> = (0..ch * dc).map(|i| (i as f32 * 0.91).cos()).collect();
        let hist0: Vec<f32> = (0..ch * (dc - 1)).map(|i| i as f32 * 0.1 - 0.4).collect();
        let mut state = hist0.clone();
        let mut out = vec![0.0f32; len * ch];
        let run = ConvRun {
            x: &x,
            w: &w,
            b: None,
            channels: ch,
            d_conv: dc,
            len,
            fresh: false,
        };
        {
            let op = crate::pool::SendPtr(out.as_mut_ptr());
            // SAFETY: one row slice at a time.
            conv_channels(&run, 0, ch, &mut state, |t| unsafe { op.slice(t * ch, ch) });
        }
        for t in 0..len {
            let want = conv_direct(&x, &w, ch, dc, &hist0, t);
            for c in 0..ch {
                assert!((out[t * ch + c] - want[c]).abs() < 1e-6, "t {t} c {c}");
            }
        }
        // the state now holds the last three inputs of each channel, oldest first
        for c in 0..ch {
            for j in 0..dc - 1 {
                assert_eq!(state[c * (dc - 1) + j], x[(len - (dc - 1) + j) * ch + c]);
            }
        }
    }

    #[test]
    fn conv_in_two_runs_equals_one_run() {
        let (ch, dc, len) = (4, 4, 7);
        let x: Vec<f32> = (0..len * ch).map(|i| (i as f32 * 0.53).sin()).collect();
        let w: Vec<f32> = (0..ch * dc).map(|i| (i as f32 * 0.29).cos()).collect();
        let b: Vec<f32> = (0..ch).map(|i| i as f32 * 0.05).collect();
        let conv = |rows: std::ops::Range<usize>, state: &mut Vec<f32>, fresh: bool| {
            let mut out = vec![0.0f32; rows.len() * ch];
            let run = ConvRun {
                x: &x[rows.start * ch..rows.end * ch],
                w: &w,
                b: Some(&b),
                channels: ch,
                d_conv: dc,
                len: rows.len(),
                fresh,
            };
            let op = crate::pool::SendPtr(out.as_mut_ptr());
            // SAFETY: one row slice at a time.
            conv_channels(&run, 0, ch, state, |t| unsafe { op.slice(t * ch, ch) });
            out
        };
        let mut s1 = vec![9.0; ch * (dc - 1)];
        let whole = conv(0..len, &mut s1, true);
        let mut s2 = vec![0.0; ch * (dc - 1)];
        let mut parts = conv(0..3, &mut s2, true);
        parts.extend(conv(3..len, &mut s2, false));
        assert_eq!(whole, parts);
        assert_eq!(s1, s2);
    }

    #[test]
    fn scan_matches_the_recurrence_and_resumes() {
        let (nh, hd, ds, ng, len) = (4, 2, 3, 2, 5);
        let d_inner = nh * hd;
        let cols = d_inner + 2 * ng * ds;
        let xbc: Vec<f32> = (0..len * cols).map(|i| (i as f32 * 0.17).sin()).collect();
        let dt: Vec<f32> = (0..len * nh).map(|i| (i as f32 * 0.7).cos()).collect();
        let a = [-0.5f32, -1.0, -2.0, -0.25];
        let dtb = [0.1f32, -0.2, 0.3, 0.0];
        let d = [1.0f32, 0.5, -0.5, 2.0];
        let run = |rows: std::ops::Range<usize>, state: &mut [f32], fresh: bool| {
            let r = ScanRun {
                xbc: &xbc[rows.start * cols..rows.end * cols],
                xbc_cols: cols,
                dt: &dt[rows.start * nh..rows.end * nh],
                a: &a,
                dt_bias: &dtb,
                d: &d,
                n_head: nh,
                head_dim: hd,
                d_state: ds,
                n_group: ng,
                len: rows.len(),
                fresh,
            };
            let mut y = vec![0.0f32; rows.len() * d_inner];
            for h in 0..nh {
                let yp = crate::pool::SendPtr(y.as_mut_ptr());
                // SAFETY: one (row, head) slice at a time.
                scan_head(
                    &r,
                    h,
                    &mut state[h * hd * ds..(h + 1) * hd * ds],
                    |t| unsafe { yp.slice(t * d_inner + h * hd, hd) },
                );
            }
            y
        };
        let mut state = vec![0.0f32; nh * hd * ds];
        let y = run(0..len, &mut state, true);
        // float64 reference of the recurrence
        let mut s = vec![0.0f64; nh * hd * ds];
        for t in 0..len {
            let row = &xbc[t * cols..(t + 1) * cols];
            for h in 0..nh {
                let g = h / (nh / ng);
                let dtv = {
                    let v = (dt[t * nh + h] + dtb[h]) as f64;
                    (1.0 + v.exp()).ln()
                };
                let da = (dtv * a[h] as f64).exp();
                for i in 0..hd {
                    let xv = row[h * hd + i] as f64;
                    let mut sum = 0.0;
                    for k in 0..ds {
                        let st = &mut s[(h * hd + i) * ds + k];
                        *st = *st * da + row[d_inner + g * ds + k] as f64 * xv * dtv;
                        sum += *st * row[d_inner + (ng + g) * ds + k] as f64;
                    }
                    let want = sum + xv * d[h] as f64;
                    let got = y[t * d_inner + h * hd + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-5,
                        "t {t} h {h} i {i}: {got} vs {want}"
                    );
                }
            }
        }
        // resuming from the state of the first two rows gives the same rows 2..
        let mut st2 = vec![7.0f32; nh * hd * ds];
        let _ = run(0..2, &mut st2, true);
        let rest = run(2..len, &mut st2, false);
        assert_eq!(&y[2 * d_inner..], &rest[..]);
        assert_eq!(state, st2);
    }
}
