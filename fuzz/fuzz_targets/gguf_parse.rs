//! Fuzzes the GGUF parser: any byte string must parse or fail with an error, never panic,
//! hang, or allocate without bound. Valid parses also have every tensor view read back.

#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = engine_gguf::GgufFile::parse(Arc::new(data.to_vec())) {
        for t in f.tensors() {
            let bytes = f.tensor_data(t);
            assert_eq!(bytes.len(), t.size);
        }
        for (k, v) in f.metadata() {
            let _ = format!("{k}={v}");
        }
    }
});
