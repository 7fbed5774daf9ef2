//! LLaDA-8B-Instruct's released tokenizer against its own `transformers` tokenizer: the chat
//! template's string and ids, the special tokens' ids, and code strings encoded and decoded.
//!
//! Ignored by default: the tokenizer (126k tokens) cannot be fetched where CI runs. With a local
//! copy of the tokenizer files (see tests/fixtures/gen_llada_tokenizer.py) and `transformers`:
//!
//! ```text
//! LLADA_TOKENIZER_DIR=DIR [LLADA_PYTHON=python3] cargo test --test llada_tokenizer -- --ignored
//! ```

use std::path::{Path, PathBuf};
use std::process::Command;

use coupled_grpo::model::{ModelFamily, Tokenizer};
use serde_json::Value;

/// The reference: what the generator script prints for `dir`.
fn reference(dir: &Path) -> Value {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gen_llada_tokenizer.py");
    let python = std::env::var("LLADA_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = Command::new(&python)
        .arg(&script)
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {python} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the generator prints JSON")
}

fn ids(v: &Value) -> Vec<u32> {
    serde_json::from_value(v.clone()).unwrap()
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key].as_str().unwrap()
}

#[test]
#[ignore = "needs LLaDA-8B-Instruct's tokenizer files in LLADA_TOKENIZER_DIR and transformers"]
fn llada_tokenizer_matches_the_released_one() {
    let dir = PathBuf::from(
        std::env::var("LLADA_TOKENIZER_DIR")
            .expect("LLADA_TOKENIZER_DIR: a folder with LLaDA-8B-Instruct's tokenizer.json"),
    );
    let want = reference(&dir);
    let family = ModelFamily::Llada;
    let specials = family.special_tokens();
    let tok = Tokenizer::from_file_with(dir.join("tokenizer.json"), &specials).unwrap();

    // The family's special tokens are where the released tokenizer has them.
    let resolved = tok.special();
    for ((content, id), got) in [
        (&specials.mask, resolved.mask),
        (&specials.pad, resolved.pad),
        (&specials.im_end, resolved.im_end),
        (&specials.im_start, resolved.im_start),
        (&specials.eos, resolved.eos),
    ] {
        let reference = want["special"][content.as_str()].as_u64();
        assert_eq!(reference, Some(u64::from(*id)), "{content}: family table");
        assert_eq!(got, *id, "{content}: resolved from tokenizer.json");
    }

    for chat in want["chats"].as_array().unwrap() {
        let (system, user) = (str_of(chat, "system"), str_of(chat, "user"));
        let prompt = family.chat_prompt(system, user, None);
        assert_eq!(prompt, str_of(chat, "text"), "chat template for {user:?}");
        let ours = tok.encode(&prompt).unwrap();
        assert_eq!(ours, ids(&chat["ids"]), "prompt ids for {user:?}");
        if chat["call_ids"] != chat["ids"] {
            eprintln!(
                "note: tokenizer(text) adds special tokens to {user:?}: {:?}",
                chat["call_ids"]
            );
        }
    }
    for text in want["texts"].as_array().unwrap() {
        let want_ids = ids(&text["ids"]);
        assert_eq!(tok.encode(str_of(text, "text")).unwrap(), want_ids);
        assert_eq!(
            tok.decode(&want_ids, false).unwrap(),
            str_of(text, "decoded")
        );
    }
    eprintln!(
        "checked against transformers {} ({} tokens)",
        want["transformers"], want["vocab_size"]
    );
}
