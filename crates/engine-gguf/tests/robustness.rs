//! The GGUF reader and writer: round trips of every value type, and a deterministic mutation
//! test (truncations, byte flips, patched counts and offsets) showing that any input either
//! parses or fails with an error, never a panic.

use std::sync::Arc;

use engine_core::DType;
use engine_gguf::{Array, GgufFile, GgufWriter, Value};
use rand::{Rng, SeedableRng};

fn sample() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .set("u8", Value::U8(7))
        .set("i8", Value::I8(-7))
        .set("u16", Value::U16(65535))
        .set("i16", Value::I16(-300))
        .set("u32", Value::U32(1 << 31))
        .set("i32", Value::I32(-5))
        .set("f32", Value::F32(1.5))
        .set("bool", Value::Bool(true))
        .set("u64", Value::U64(u64::MAX))
        .set("i64", Value::I64(i64::MIN))
        .set("f64", Value::F64(-2.25))
        .set(
            "strs",
            Value::Array(Array::String(vec!["a".into(), "".into(), "ü".into()])),
        )
        .set(
            "nested",
            Value::Array(Array::Array(vec![
                Array::I32(vec![1, 2]),
                Array::F32(vec![0.5]),
            ])),
        )
        .set("bools", Value::Array(Array::Bool(vec![true, false])));
    let q: Vec<u8> = (0..18 * 4).map(|i| i as u8).collect();
    w.add_tensor("a", DType::Q4_0, &[2, 64], q).unwrap();
    w.add_tensor("b", DType::F32, &[3], vec![0; 12]).unwrap();
    w
}

#[test]
fn round_trip_every_value_type() {
    let w = sample();
    let bytes = w.to_bytes();
    let f = GgufFile::parse(Arc::new(bytes)).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.get("u16"), Some(&Value::U16(65535)));
    assert_eq!(f.get("i64"), Some(&Value::I64(i64::MIN)));
    assert_eq!(f.get("f64"), Some(&Value::F64(-2.25)));
    assert_eq!(f.get("strs").unwrap().as_array().unwrap().len(), 3);
    assert_eq!(
        f.get("nested"),
        Some(&Value::Array(Array::Array(vec![
            Array::I32(vec![1, 2]),
            Array::F32(vec![0.5])
        ])))
    );
    let t = &f.tensors()[0];
    assert_eq!(
        (t.name.as_str(), t.dtype, t.shape()),
        ("a", DType::Q4_0, vec![2, 64])
    );
    assert_eq!(
        f.tensor_data(t).as_slice(),
        (0..72).map(|i| i as u8).collect::<Vec<_>>().as_slice()
    );
    assert_eq!(t.offset % f.alignment(), 0);
}

#[test]
fn alignment_is_honoured() {
    let mut w = sample();
    w.set("general.alignment", Value::U32(64));
    let f = GgufFile::parse(Arc::new(w.to_bytes())).unwrap();
    assert_eq!(f.alignment(), 64);
    for t in f.tensors() {
        assert_eq!(t.offset % 64, 0);
    }
    let mut bad = sample();
    bad.set("general.alignment", Value::U32(48));
    assert!(GgufFile::parse(Arc::new(bad.to_bytes())).is_err());
}

#[test]
fn mutations_never_panic() {
    let good = sample().to_bytes();
    let mut inputs: Vec<Vec<u8>> = (0..good.len()).map(|n| good[..n].to_vec()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    for _ in 0..20_000 {
        let mut b = good.clone();
        for _ in 0..rng.gen_range(1..4) {
            let i = rng.gen_range(0..b.len());
            match rng.gen_range(0..3) {
                0 => b[i] = rng.gen(),
                1 => b[i] ^= 1 << rng.gen_range(0..8),
                _ => {
                    // plant an extreme u64 (counts, lengths, dims, offsets)
                    let at = i.min(b.len().saturating_sub(8));
                    let v = [u64::MAX, u64::MAX / 2, 1 << 40, 0, 1 << 32][rng.gen_range(0..5)];
                    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                }
            }
        }
        inputs.push(b);
    }
    let mut ok = 0;
    for b in inputs {
        let r = std::panic::catch_unwind(|| {
            GgufFile::parse(Arc::new(b.clone())).map(|f| {
                for t in f.tensors() {
                    assert_eq!(f.tensor_data(t).len(), t.size);
                }
            })
        });
        match r {
            Ok(Ok(())) => ok += 1,
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
            Err(_) => panic!("parser panicked on input of {} bytes", b.len()),
        }
    }
    assert!(ok > 0, "some mutations (e.g. in tensor data) still parse");
}

#[test]
fn split_files_are_joined() {
    let dir = std::env::temp_dir().join(format!("engine-gguf-split-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (i, name) in ["x", "y"].iter().enumerate() {
        let mut w = GgufWriter::new();
        w.set("split.no", Value::U16(i as u16))
            .set("split.count", Value::U16(2))
            .set("split.tensors.count", Value::I32(2));
        if i == 0 {
            w.set("general.architecture", Value::String("llama".into()));
        }
        w.add_tensor(name, DType::F32, &[4], vec![i as u8; 16])
            .unwrap();
        w.write_to(dir.join(format!("m-{:05}-of-00002.gguf", i + 1)))
            .unwrap();
    }
    // opening either part opens the set
    for part in ["m-00001-of-00002.gguf", "m-00002-of-00002.gguf"] {
        let m = engine_gguf::GgufModel::open(dir.join(part), true).unwrap();
        assert_eq!(m.tensors().len(), 2);
        assert_eq!(m.tensor_data(m.tensor("y").unwrap()).as_slice(), &[1u8; 16]);
        assert_eq!(m.get_str("general.architecture").unwrap(), Some("llama"));
    }
    // a missing part is an error naming it
    std::fs::remove_file(dir.join("m-00002-of-00002.gguf")).unwrap();
    let e = engine_gguf::GgufModel::open(dir.join("m-00001-of-00002.gguf"), true)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("m-00002-of-00002.gguf"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
