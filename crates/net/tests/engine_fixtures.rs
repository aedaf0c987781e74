//! vLLM's and SGLang's request and answer shapes, against fixtures written from their
//! documented schemas (`scripts/make_engine_fixtures.py`; neither engine runs without a GPU):
//! the request hlm sends is the fixture's, the rows it reads are the fixture's, and answers
//! that are cut short or out of line are refused by name.

use std::path::PathBuf;

use hlm_core::TokenId;
use hlm_net::engines::{sglang, vllm};
use serde_json::Value;

struct Fixture {
    from: usize,
    request: Value,
    response: Value,
    rows: Vec<Vec<(TokenId, f32)>>,
}

fn fixture(name: &str) -> Fixture {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture"))
        .expect("fixture JSON");
    Fixture {
        from: v["from"].as_u64().unwrap() as usize,
        request: v["request"].clone(),
        response: v["response"].clone(),
        rows: serde_json::from_value(v["rows"].clone()).unwrap(),
    }
}

fn sorted(mut rows: Vec<Vec<(TokenId, f32)>>) -> Vec<Vec<(TokenId, f32)>> {
    for r in &mut rows {
        r.sort_by_key(|e| e.0);
    }
    rows
}

const TOKENS: [TokenId; 3] = [3, 1, 2];

#[test]
fn vllm_request_and_answer_follow_the_schema() {
    let f = fixture("vllm-completions.json");
    assert_eq!(vllm::completions_request("tiny", &TOKENS), f.request);
    let s = vllm::parse_completions(f.response.clone(), TOKENS.len(), f.from).expect("parses");
    assert_eq!(sorted(s.rows), f.rows);
    assert_eq!(s.computed_positions, Some(3));
    // From the last prefix only: just the generated token's row.
    let s = vllm::parse_completions(f.response.clone(), TOKENS.len(), 3).expect("parses");
    assert_eq!(sorted(s.rows), f.rows[2..]);

    let refused = |edit: &dyn Fn(&mut Value)| {
        let mut r = f.response.clone();
        edit(&mut r);
        vllm::parse_completions(r, TOKENS.len(), f.from)
            .expect_err("refused")
            .to_string()
    };
    let e = refused(&|r| r["choices"][0]["prompt_logprobs"] = Value::Null);
    assert!(e.contains("no prompt_logprobs"), "{e}");
    let e = refused(&|r| {
        r["choices"][0]["prompt_logprobs"]
            .as_array_mut()
            .unwrap()
            .pop();
    });
    assert!(e.contains("2 prompt positions scored for 3 tokens"), "{e}");
    let e = refused(&|r| {
        let top = &mut r["choices"][0]["logprobs"]["top_logprobs"][0];
        let v = top["token_id:0"].take();
        top.as_object_mut().unwrap().remove("token_id:0");
        top["a"] = v;
    });
    assert!(e.contains("keyed \"a\""), "{e}");
}

#[test]
fn sglang_request_and_answer_follow_the_schema() {
    let f = fixture("sglang-generate.json");
    assert_eq!(sglang::generate_request(&TOKENS, f.from, 4), f.request);
    let s = sglang::parse_generate(f.response.clone(), &TOKENS, f.from).expect("parses");
    assert_eq!(sorted(s.rows), f.rows);
    // 3 prompt tokens, 1 of them from the radix cache.
    assert_eq!(s.computed_positions, Some(2));

    let refused = |edit: &dyn Fn(&mut Value)| {
        let mut r = f.response.clone();
        edit(&mut r);
        sglang::parse_generate(r, &TOKENS, f.from)
            .expect_err("refused")
            .to_string()
    };
    // An answer whose entries sit one position off (another convention, or another
    // sequence) is caught by the token each entry names.
    let e = refused(&|r| r["meta_info"]["input_token_logprobs"][1][1] = 2.into());
    assert!(
        e.contains("input entry 1 is on token 2, not on token 1"),
        "{e}"
    );
    let e = refused(&|r| r["meta_info"]["input_top_logprobs"][2] = Value::Null);
    assert!(e.contains("position 2 has no distribution"), "{e}");
    let e = refused(&|r| r["meta_info"]["output_top_logprobs"] = Value::Array(vec![]));
    assert!(e.contains("no distribution after the last token"), "{e}");
    let e = refused(&|r| r["meta_info"]["input_top_logprobs"] = Value::Array(vec![]));
    assert!(e.contains("0 input positions scored from 0 of 3"), "{e}");
    let e = sglang::parse_generate(f.response.clone(), &TOKENS, 0)
        .expect_err("from 0")
        .to_string();
    assert!(e.contains("rows from prefix 0 of 3 tokens"), "{e}");

    // Rows from a later prefix: the first input entry is padded, the rows follow it.
    let f = fixture("sglang-generate-from-2.json");
    assert_eq!(sglang::generate_request(&TOKENS, f.from, 4), f.request);
    let s = sglang::parse_generate(f.response.clone(), &TOKENS, f.from).expect("parses");
    assert_eq!(sorted(s.rows), f.rows);
    assert_eq!(s.computed_positions, Some(1));
}

/// vLLM's point queries of `distribution = "sampled"`: a drafted token's own probability (the
/// last `prompt_logprobs` entry, where vLLM adds the token beside the top k) and a draw at
/// temperature 1, each read back as the fixture says, with the asked top k only.
#[test]
fn vllm_point_queries_follow_the_schema() {
    use hlm_net::engines::PointQuery;
    for name in ["vllm-point-token.json", "vllm-point-sample.json"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture"))
            .expect("fixture JSON");
        let query = match (v["query"]["token"].as_u64(), v["query"]["sample"].as_u64()) {
            (Some(t), _) => PointQuery::Token(t as TokenId),
            (_, Some(seed)) => PointQuery::Sample(seed),
            _ => panic!("{name}: no query"),
        };
        let prefix: Vec<TokenId> = serde_json::from_value(v["prefix"].clone()).unwrap();
        let top = v["top"].as_u64().unwrap() as usize;
        assert_eq!(
            vllm::point_request("tiny", &prefix, query, top),
            v["request"],
            "{name}"
        );
        let p = vllm::parse_point(v["response"].clone(), query, prefix.len(), top)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = &v["point"];
        assert_eq!(
            u64::from(p.token),
            want["token"].as_u64().unwrap(),
            "{name}"
        );
        assert_eq!(
            p.logprob,
            want["logprob"].as_f64().unwrap() as f32,
            "{name}"
        );
        let top_want: Vec<(TokenId, f32)> = serde_json::from_value(want["top"].clone()).unwrap();
        assert_eq!(p.top, top_want, "{name}");
        assert_eq!(
            p.computed_positions,
            want["computed_positions"].as_u64(),
            "{name}"
        );
    }
    // Answers that do not hold what was asked are refused by name.
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vllm-point-token.json");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let token = |r: Value, t: TokenId, prefix: usize| {
        vllm::parse_point(r, PointQuery::Token(t), prefix, 2)
            .expect_err("refused")
            .to_string()
    };
    let e = token(v["response"].clone(), 0, 2);
    assert!(e.contains("no log-probability of token 0"), "{e}");
    let e = token(v["response"].clone(), 1, 3);
    assert!(e.contains("3 prompt positions scored for 4"), "{e}");
    let e = vllm::parse_point(v["response"].clone(), PointQuery::Sample(1), 2, 2)
        .expect_err("no logprobs")
        .to_string();
    assert!(e.contains("no logprobs of the generated token"), "{e}");
}
