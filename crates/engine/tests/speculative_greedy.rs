//! Greedy speculative decoding reproduces plain greedy decoding token for token, for every
//! drafter kind:
//!
//! * on the 12 prompts of the Gemma 3 270M greedy fixtures (the real Q4_K_M file): the
//!   n-gram drafter, a draft model (the first 12 of the model's 18 blocks: the same
//!   vocabulary, often but not always right; on 3 of the prompts here, on all 12 through the
//!   server in `engine-cli`'s `serve_speculative`), and a scripted drafter that proposes the true
//!   continuation with one token corrupted at a rotating offset, so every acceptance length
//!   from 0 to the whole draft is exercised;
//! * on every tiny architecture fixture (attention, MoE, hybrid Mamba-2 with checkpointed
//!   rollback): the same three kinds, the draft model being a quantized sibling where the
//!   fixture has one.
//!
//! The remote drafter is the same verification fed over HTTP; its identity test is in
//! `engine-cli`'s `serve_speculative` tests.

use std::path::Path;
use std::sync::Arc;

use engine::speculative::draft_model::ModelDrafter;
use engine::speculative::ngram::{NgramDrafter, NgramParams};
use engine::{
    Draft, DraftRequest, Drafter, DrafterKind, GenerateParams, LoadOptions, Model, Prompt,
    SamplingParams, SpecParams,
};

/// Proposes the continuation of a known sequence, corrupting one drafted token per step at
/// an offset that rotates through `0..=max` (offset `max` corrupts nothing).
struct Scripted {
    truth: Vec<u32>,
    step: usize,
    n_vocab: u32,
}

impl Drafter for Scripted {
    fn kind(&self) -> DrafterKind {
        DrafterKind::Remote
    }

    fn draft(&mut self, req: &DraftRequest<'_>, out: &mut Draft) -> engine::Result<()> {
        out.clear();
        let h = req.history;
        if h.len() > self.truth.len() || self.truth[..h.len()] != *h {
            return Ok(()); // off script: propose nothing
        }
        let end = (h.len() + req.max).min(self.truth.len());
        out.tokens.extend_from_slice(&self.truth[h.len()..end]);
        let bad = self.step % (req.max + 1);
        self.step += 1;
        if let Some(t) = out.tokens.get_mut(bad) {
            *t = (*t + 1) % self.n_vocab;
        }
        Ok(())
    }
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: Some(n),
        sampling: SamplingParams::greedy(),
        ignore_eos: false,
        ..Default::default()
    }
}

/// A fixed draft length: the adaptive controller would rightly stop drafting with these
/// drafters (their cost is close to the target's), and every step should verify here.
fn spec(max: usize) -> SpecParams {
    SpecParams {
        draft_max: max,
        p_min: 0.0,
        adaptive: false,
        ..Default::default()
    }
}

/// Generates plainly, then with each drafter (and a scripted one following the plain
/// output), and compares; returns the failures.
fn compare(
    name: &str,
    model: &Model,
    drafters: &mut [(&str, &mut dyn Drafter)],
    prompt: &[u32],
    n: usize,
) -> Vec<String> {
    let mut session = model.session().unwrap();
    let t0 = std::time::Instant::now();
    let plain = session
        .generate(&Prompt::Tokens(prompt.to_vec()), &greedy(n), |_| true)
        .unwrap();
    eprintln!(
        "{name:24} plain    {:6.0} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    let mut scripted = Scripted {
        truth: [prompt, &plain.ids].concat(),
        step: 0,
        n_vocab: model.info().n_vocab as u32,
    };
    let mut failures = vec![];
    let all = drafters
        .iter_mut()
        .map(|(l, d)| (*l, &mut **d))
        .chain(std::iter::once((
            "scripted",
            &mut scripted as &mut dyn Drafter,
        )));
    for (label, d) in all {
        let t0 = std::time::Instant::now();
        let g = session
            .generate_speculative(
                &Prompt::Tokens(prompt.to_vec()),
                &greedy(n),
                d,
                &spec(6),
                |_| true,
            )
            .unwrap();
        let st = g.speculative.unwrap();
        eprintln!(
            "{name:24} {label:8} {:6.0} ms: drafted {:3} accepted {:3} in {:2} passes",
            t0.elapsed().as_secs_f64() * 1e3,
            st.drafted,
            st.accepted,
            st.steps
        );
        if st.drafted == 0 && label == "scripted" {
            failures.push(format!("{name}: the scripted drafter never drafted"));
        }
        if g.ids != plain.ids || g.text != plain.text || g.stop_reason != plain.stop_reason {
            let at = g
                .ids
                .iter()
                .zip(&plain.ids)
                .take_while(|(a, b)| a == b)
                .count();
            failures.push(format!(
                "{name} with {label}: differs from plain decoding at generated token {at} \
                 ({:?} vs {:?})",
                g.ids.get(at),
                plain.ids.get(at)
            ));
        }
    }
    failures
}

fn load(path: &Path, share: Option<&Model>) -> Model {
    let opts = LoadOptions {
        threads: 2,
        n_ctx: 512,
        ..Default::default()
    };
    match share {
        Some(m) => Model::load_sharing(path, &opts, m).unwrap(),
        None => Model::load(path, &opts).unwrap(),
    }
}

/// The fixtures the draft model is compared on (it agrees often on the first two and
/// rarely on the third).
const DRAFT_MODEL_ON: [&str; 3] = ["fact_en", "chat", "python"];

#[test]
fn greedy_speculative_equals_plain_on_the_gemma3_fixtures() {
    let path = engine_testdata::gemma3_model().expect("the default model is needed");
    let model = load(&path, None);
    let draft_path = engine_testdata::first_layers_model(&path, 12).unwrap();
    let draft = Arc::new(load(&draft_path, Some(&model)));
    let mut md = ModelDrafter::new(draft, &model, 1, 512, 0.0).unwrap();
    let mut ngram = NgramDrafter::new(NgramParams::default());
    let text =
        std::fs::read_to_string(engine_testdata::fixtures_dir().join("gemma3-270m/greedy.jsonl"))
            .unwrap();
    let mut failures = vec![];
    let mut records = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let name = v["name"].as_str().unwrap();
        let prompt: Vec<u32> = v["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let n = v["n_predict"].as_u64().unwrap() as usize;
        // the draft model drafts every step (a fixed length) at nearly the target's cost:
        // three prompts here; `engine-cli`'s serve_speculative test runs it on all twelve
        let drafters: &mut [(&str, &mut dyn Drafter)] = if DRAFT_MODEL_ON.contains(&name) {
            &mut [("ngram", &mut ngram), ("draft", &mut md)]
        } else {
            &mut [("ngram", &mut ngram)]
        };
        failures.extend(compare(name, &model, drafters, &prompt, n));
        records += 1;
    }
    assert_eq!(records, 12);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn greedy_speculative_equals_plain_on_every_architecture() {
    let mut failures = vec![];
    let mut seen = std::collections::BTreeSet::new();
    for f in engine_testdata::logits::arch_fixtures(None) {
        // one target per architecture: its reference file; drafter: a quantized sibling
        if !seen.insert(f.arch.clone()) {
            continue;
        }
        let model = load(&f.model, None);
        let sibling = f.model.with_file_name(format!("{}-Q4_0.gguf", f.arch));
        let draft_path = if sibling.exists() {
            sibling
        } else {
            f.model.clone()
        };
        let draft = Arc::new(load(&draft_path, Some(&model)));
        let mut md = ModelDrafter::new(draft, &model, 1, 512, 0.0).unwrap();
        let mut ngram = NgramDrafter::new(NgramParams { n_min: 1, n_max: 3 });
        let prompt = &f.tokens[..16];
        failures.extend(compare(
            &format!("{} ({})", f.arch, f.label),
            &model,
            &mut [("ngram", &mut ngram), ("draft", &mut md)],
            prompt,
            40,
        ));
    }
    assert!(seen.len() >= 10, "{seen:?}");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_incompatible_draft_model_is_refused_with_a_clear_error() {
    let fx = engine_testdata::logits::arch_fixtures(None);
    let by = |a: &str| fx.iter().find(|f| f.arch == a).unwrap().model.clone();
    let target = load(&by("llama"), None);
    let draft = Arc::new(load(&by("gemma3"), None));
    let err = ModelDrafter::new(draft, &target, 1, 64, 0.0)
        .err()
        .expect("gemma3's vocabulary cannot draft for llama's")
        .to_string();
    assert!(err.contains("cannot draft for this model"), "{err}");
    // the same file with one token respelled: refused, naming the token
    let g = engine_gguf::GgufModel::open(by("llama"), true).unwrap();
    let mut w = engine_gguf::GgufWriter::new();
    for (k, v) in g.metadata() {
        let mut v = v.clone();
        if k == "tokenizer.ggml.tokens" {
            if let engine_gguf::Value::Array(engine_gguf::Array::String(t)) = &mut v {
                t[300] = "respelled".into();
            }
        }
        w.set(k, v);
    }
    for t in g.tensors() {
        w.add_tensor(
            &t.name,
            t.dtype,
            &t.shape(),
            g.tensor_data(t).as_slice().to_vec(),
        )
        .unwrap();
    }
    let path = std::env::temp_dir().join(format!("engine-respelled-{}.gguf", std::process::id()));
    w.write_to(&path).unwrap();
    let draft = Arc::new(load(&path, None));
    let _ = std::fs::remove_file(&path);
    let err = ModelDrafter::new(draft, &target, 1, 64, 0.0)
        .err()
        .expect("a respelled token is incompatible")
        .to_string();
    assert!(err.contains("token 300"), "{err}");
    // and an identical copy is accepted
    let same = Arc::new(load(&by("llama"), None));
    assert!(ModelDrafter::new(same, &target, 1, 64, 0.0).is_ok());
}
