use engine_core::DType;
use engine_cpu::kernels::{self, act, Isa};
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let t: DType = args
        .get(1)
        .map(|s| DType::from_name(s).unwrap())
        .unwrap_or(DType::Q8_0);
    let m: usize = args.get(2).map(|s| s.parse().unwrap()).unwrap_or(262144);
    let k: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(640);
    let nc: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(1);
    let kern = kernels::kernel(t, Isa::detect()).unwrap();
    let row = t.row_bytes(k).unwrap();
    let mut w: Vec<u8> = (0..m * row).map(|i| (i * 7 % 251) as u8).collect();
    // sane scales: zero high byte of f16 scales roughly
    for b in w.chunks_exact_mut(t.type_size()) {
        if b.len() > 2 {
            b[1] = 0x20;
        }
    }
    let x: Vec<f32> = (0..k * nc)
        .map(|i| ((i * 13 % 97) as f32 - 48.0) / 50.0)
        .collect();
    let ar = kern.act.row_bytes(k).unwrap();
    let mut a = vec![0u8; ar * nc];
    for c in 0..nc {
        act::quantize_row(
            kern.act,
            &x[c * k..(c + 1) * k],
            &mut a[c * ar..(c + 1) * ar],
        );
    }
    let mut out = vec![0f32; m * nc];
    let gemm = kern.base.gemm.unwrap();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t0 = Instant::now();
        unsafe { gemm(k, &w, m, &a, ar, nc, out.as_mut_ptr(), m) };
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let macs = (m * k * nc) as f64;
    println!(
        "{t} m={m} k={k} nc={nc}: {:.2} ms  {:.2} GB/s weights  {:.2} GMAC/s  ({} )",
        best * 1e3,
        (m * row) as f64 / best / 1e9,
        macs / best / 1e9,
        out[3]
    );
}
