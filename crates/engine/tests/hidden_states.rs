//! `Session::hidden_states` returns the final normalised hidden states: the logits are
//! their product with the output projection.

#[test]
fn hidden_states_match_the_logits() {
    // The logits are the output projection of the hidden states: check one row by hand.
    let path = engine_testdata::fixtures_dir().join("arch/qwen2/qwen2-F32.gguf");
    let model = engine::Model::load(
        &path,
        &engine::LoadOptions {
            threads: 1,
            n_ctx: 64,
            kv_type: engine::DType::F32,
            ..Default::default()
        },
    )
    .unwrap();
    let ids = [1u32, 20, 30, 40];
    let mut s = model.session().unwrap();
    let hidden = s.hidden_states(&ids).unwrap();
    let logits = s.logits_all(&ids).unwrap();
    let e = model.info().n_embd;
    let nv = model.info().n_vocab;
    assert_eq!(hidden.len(), ids.len() * e);
    let g = model.gguf();
    let t = g.tensor("token_embd.weight").unwrap();
    let w = engine_core::quant::dequantize_to_vec(t.dtype, g.tensor_data(t).as_slice(), nv * e)
        .unwrap();
    let last = &hidden[3 * e..4 * e];
    for v in [0usize, 7, nv - 1] {
        let want: f32 = (0..e).map(|i| last[i] * w[v * e + i]).sum();
        assert!(
            (want - logits[3 * nv + v]).abs() < 1e-3,
            "vocab {v}: {want} vs {}",
            logits[3 * nv + v]
        );
    }
}
