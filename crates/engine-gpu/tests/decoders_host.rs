//! The kernels' block decoders (`kernels/cuda/quant.cuh`), compiled as host C++, must give
//! exactly the engine's reference codecs' values (themselves checked against gguf-py) for
//! every format, on random blocks. Needs a C++ compiler (`$CXX` or `c++`); without one the
//! test says what it skipped.

use std::path::PathBuf;
use std::process::Command;

use engine_core::DType;
use engine_gpu::backend::FORMATS;
use rand::{Rng, SeedableRng};

fn compiler() -> Option<String> {
    let cands = [
        std::env::var("CXX").ok(),
        Some("c++".into()),
        Some("g++".into()),
    ];
    cands.into_iter().flatten().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn kernel_decoders_match_the_reference_codecs() {
    let Some(cxx) = compiler() else {
        eprintln!("SKIPPED: no C++ compiler; the GPU block decoders were not checked on the host");
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::temp_dir().join(format!("eg-decode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("decode");
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O1", "-ffp-contract=off", "-I"])
        .arg(root.join("../../kernels/cuda"))
        .arg(root.join("tests/host/decode.cpp"))
        .arg("-o")
        .arg(&exe)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for &(dt, name) in FORMATS {
        let blocks = 64;
        let (per_block, block_bytes) = match dt {
            DType::F32 | DType::F16 | DType::BF16 => (16, dt.row_bytes(16).unwrap()),
            _ => (dt.block_size(), dt.row_bytes(dt.block_size()).unwrap()),
        };
        let mut bytes = vec![0u8; blocks * block_bytes];
        rng.fill(&mut bytes[..]);
        let inp = dir.join(format!("{name}.in"));
        let outp = dir.join(format!("{name}.out"));
        std::fs::write(&inp, &bytes).unwrap();
        let st = Command::new(&exe)
            .arg(name)
            .arg(&inp)
            .arg(&outp)
            .status()
            .unwrap();
        assert!(st.success(), "{name}: harness exit {st}");
        let raw = std::fs::read(&outp).unwrap();
        let got: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let want = engine_core::quant::dequantize_to_vec(dt, &bytes, blocks * per_block).unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()),
                "{name}: element {i} (block {}): kernel {g} vs reference {w}",
                i / per_block
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
