//! The harmony format end to end on the GPT-OSS fixture: the rendered conversation
//! tokenizes with each control marker as its single special token, and the model generates
//! after the `<|start|>assistant` prompt (random weights: what it says is not checked).

use engine::harmony::{self, Message, Options, Role};

#[test]
fn harmony_prompt_tokenizes_into_special_tokens_and_generates() {
    let path = engine_testdata::fixtures_dir().join("arch/gpt-oss/gpt-oss-MXFP4.gguf");
    let model = engine::Model::load(
        &path,
        &engine::LoadOptions {
            threads: 2,
            n_ctx: 512,
            ..Default::default()
        },
    )
    .unwrap();
    let opts = Options {
        current_date: Some("2025-08-05".into()),
        ..Default::default()
    };
    let text = harmony::render(
        &[
            Message::new(Role::System, "Be brief."),
            Message::new(Role::User, "the quick brown fox"),
        ],
        &opts,
        true,
    );
    let ids = model.tokenize(&text, false, true).unwrap();
    let id = |s: &str| {
        let v = model.tokenize(s, false, true).unwrap();
        assert_eq!(v.len(), 1, "{s} is not one token: {v:?}");
        v[0]
    };
    let (start, message, end) = (id("<|start|>"), id("<|message|>"), id("<|end|>"));
    // system, developer, user, then the generation prompt
    assert_eq!(ids.iter().filter(|&&t| t == start).count(), 4);
    assert_eq!(ids.iter().filter(|&&t| t == message).count(), 3);
    assert_eq!(ids.iter().filter(|&&t| t == end).count(), 3);
    assert_eq!(ids[0], start);
    let assistant = model.tokenize("assistant", false, true).unwrap();
    let tail = &ids[ids.len() - assistant.len() - 1..];
    assert_eq!(tail[0], start);
    assert_eq!(&tail[1..], &assistant[..]);
    let out = model
        .session()
        .unwrap()
        .generate(
            &engine::Prompt::Tokens(ids),
            &engine::GenerateParams {
                max_tokens: Some(8),
                sampling: engine::SamplingParams::greedy(),
                ignore_eos: true,
                ..Default::default()
            },
            |_| true,
        )
        .unwrap();
    assert_eq!(out.ids.len(), 8);
}
