//! Block codecs against the `gguf` Python package's numpy reference (`gguf.quants`).
//!
//! `tools/quant_refs.py` writes random blocks of every type with gguf-py's decoding (and,
//! for the types gguf-py can encode, its encoding of random floats). Decoding must agree
//! bit for bit: both sides do the same f32 operations in the same order. Encoders must
//! produce the same bytes. Q8_1 and Q8_K have no reference there; they are tested by round
//! trip below.

use engine_core::quant::{dequantize, dequantize_to_vec, quantize};
use engine_core::DType;
use engine_gguf::GgufModel;

fn f32s(m: &GgufModel, name: &str) -> Vec<f32> {
    let t = m
        .tensor(name)
        .unwrap_or_else(|| panic!("reference tensor {name} missing"));
    assert_eq!(t.dtype, DType::F32);
    dequantize_to_vec(DType::F32, m.tensor_data(t).as_slice(), t.numel() as usize).unwrap()
}

fn same_bits(a: &[f32], b: &[f32]) -> Option<usize> {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .position(|(x, y)| x.to_bits() != y.to_bits() && !(x.is_nan() && y.is_nan()))
}

fn references() -> GgufModel {
    let dir = std::env::temp_dir().join(format!("engine-quant-refs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("refs.gguf");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/quant_refs.py");
    let out = engine_testdata::python_with_gguf()
        .expect("python3 with pip is needed for the gguf-py reference")
        .arg(script)
        .arg(&path)
        .output()
        .expect("python3 is needed for the gguf-py reference (pip install gguf)");
    assert!(
        out.status.success(),
        "quant_refs.py failed (is the `gguf` package installed? `pip install gguf`):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    GgufModel::open(&path, false).expect("reference file parses")
}

#[test]
fn decoders_match_gguf_py_bit_for_bit() {
    let m = references();
    let types = [
        DType::F16,
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::Q2_K,
        DType::Q3_K,
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::IQ4_NL,
        DType::IQ4_XS,
        DType::MXFP4,
    ];
    for t in types {
        let q = m.tensor(&format!("{}.rand", t.name())).unwrap();
        assert_eq!(q.dtype, t);
        let want = f32s(&m, &format!("{}.rand.f32", t.name()));
        let mut got = vec![0.0; want.len()];
        dequantize(t, m.tensor_data(q).as_slice(), &mut got).unwrap();
        if let Some(i) = same_bits(&got, &want) {
            panic!(
                "{t}: element {i} decodes to {} but gguf-py says {}",
                got[i], want[i]
            );
        }
    }
}

#[test]
fn encoders_match_gguf_py_byte_for_byte() {
    let m = references();
    for t in [
        DType::BF16,
        DType::Q4_0,
        DType::Q4_1,
        DType::Q5_0,
        DType::Q5_1,
        DType::Q8_0,
        DType::MXFP4,
    ] {
        let src = f32s(&m, &format!("{}.src", t.name()));
        let q = m.tensor(&format!("{}.q", t.name())).unwrap();
        let want = m.tensor_data(q);
        let mut got = vec![0u8; want.len()];
        quantize(t, &src, &mut got).unwrap();
        if let Some(i) = got.iter().zip(want.as_slice()).position(|(a, b)| a != b) {
            let block = i / t.type_size();
            panic!(
                "{t}: byte {i} (block {block}) is {:#04x}, gguf-py wrote {:#04x}",
                got[i],
                want.as_slice()[i]
            );
        }
        let deq = f32s(&m, &format!("{}.q.f32", t.name()));
        let mine = dequantize_to_vec(t, &got, src.len()).unwrap();
        assert_eq!(
            same_bits(&mine, &deq),
            None,
            "{t}: round trip differs from gguf-py"
        );
    }
}

/// Q8_1 and Q8_K have no gguf-py reference: encode random data, decode, and check the
/// error is within half a quantization step of each block (plus the f16 rounding of Q8_1's
/// scale), and that Q8_K's block sums and Q8_1's scaled sum are consistent.
#[test]
fn q8_activation_types_round_trip() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let x: Vec<f32> = (0..4096)
        .map(|i| rng.gen_range(-1.0f32..1.0) * (1 + i % 7) as f32)
        .collect();

    let mut q = vec![0u8; DType::Q8_K.row_bytes(x.len()).unwrap()];
    quantize(DType::Q8_K, &x, &mut q).unwrap();
    let y = dequantize_to_vec(DType::Q8_K, &q, x.len()).unwrap();
    for (b, blk) in q.chunks_exact(292).enumerate() {
        let d = f32::from_le_bytes(blk[0..4].try_into().unwrap()).abs();
        for j in 0..256 {
            let i = b * 256 + j;
            assert!(
                (x[i] - y[i]).abs() <= d * 0.5 + 1e-6,
                "Q8_K element {i}: {} vs {}",
                x[i],
                y[i]
            );
        }
        for g in 0..16 {
            let s: i32 = (0..16).map(|k| blk[4 + g * 16 + k] as i8 as i32).sum();
            assert_eq!(
                s,
                i16::from_le_bytes([blk[260 + 2 * g], blk[261 + 2 * g]]) as i32
            );
        }
    }

    let mut q = vec![0u8; DType::Q8_1.row_bytes(x.len()).unwrap()];
    quantize(DType::Q8_1, &x, &mut q).unwrap();
    let y = dequantize_to_vec(DType::Q8_1, &q, x.len()).unwrap();
    for (b, blk) in q.chunks_exact(36).enumerate() {
        let d = engine_core::quant::f16_at(blk, 0);
        let amax = x[b * 32..b * 32 + 32]
            .iter()
            .fold(0f32, |a, v| a.max(v.abs()));
        for j in 0..32 {
            let i = b * 32 + j;
            // half a step, plus the f16 rounding of d (relative 2^-11) times 127 steps
            let tol = d * 0.5 + amax * 1e-3;
            assert!(
                (x[i] - y[i]).abs() <= tol,
                "Q8_1 element {i}: {} vs {}",
                x[i],
                y[i]
            );
        }
        let s: i32 = (0..32).map(|k| blk[4 + k] as i8 as i32).sum();
        let stored = engine_core::quant::f16_at(blk, 2);
        assert!((stored - s as f32 * d).abs() <= (s as f32 * d).abs() * 1e-3 + 1e-6);
    }
}

#[test]
fn bad_sizes_are_errors_not_panics() {
    let mut out = vec![0.0; 33];
    assert!(dequantize(DType::Q4_0, &[0; 18], &mut out).is_err());
    let mut out = vec![0.0; 64];
    assert!(dequantize(DType::Q4_0, &[0; 18], &mut out).is_err());
    assert!(dequantize(DType::IQ2_XXS, &[0; 66], &mut vec![0.0; 256]).is_err());
    assert!(quantize(DType::Q4_K, &[0.0; 256], &mut [0; 144]).is_err());
}
