//! `tokenizer.json` (HF `tokenizers`) with DiffuCoder's special tokens, the Qwen chat template
//! and left-padded prompt batches.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The system message of DiffuCoder's RL and evaluation prompts.
pub const DEFAULT_SYSTEM_PROMPT: &str = "You are a helpful assistant.";

/// Special tokens by content and the id each must have. Defaults are DiffuCoder's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SpecialTokenConfig {
    pub mask: (String, u32),
    pub pad: (String, u32),
    pub im_end: (String, u32),
    pub im_start: (String, u32),
    pub eos: (String, u32),
}

impl Default for SpecialTokenConfig {
    fn default() -> Self {
        Self {
            mask: ("<|mask|>".into(), 151_666),
            pad: ("<|dlm_pad|>".into(), 151_667),
            im_end: ("<|im_end|>".into(), 151_645),
            im_start: ("<|im_start|>".into(), 151_644),
            eos: ("<|endoftext|>".into(), 151_643),
        }
    }
}

/// Resolved special-token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpecialTokens {
    /// `<|mask|>`: the diffusion mask.
    pub mask: u32,
    /// `<|dlm_pad|>`: DiffuCoder's length-filling pad; also used for left padding.
    pub pad: u32,
    /// `<|im_end|>`: end of the assistant turn (the loss mask ends here, inclusive).
    pub im_end: u32,
    pub im_start: u32,
    /// `<|endoftext|>`.
    pub eos: u32,
}

/// A batch of prompts, left-padded to a common length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptBatch {
    /// `[batch][len]` token ids (pads on the left).
    pub ids: Vec<Vec<u32>>,
    /// `[batch][len]`, 1 = token, 0 = pad.
    pub attention_mask: Vec<Vec<u32>>,
    /// Common length after padding.
    pub len: usize,
}

/// A `tokenizers` tokenizer plus resolved special tokens.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialTokens,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("special", &self.special)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

impl Tokenizer {
    /// Load `tokenizer.json` (or `tokenizer.json.gz`) with DiffuCoder's special tokens.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_file_with(path, &SpecialTokenConfig::default())
    }

    /// Load with explicit special tokens. A token missing by content is installed at its id
    /// when that id is an added-token slot holding something else (the Qwen tokenizer has
    /// `<tool_response>` at 151665/151666 where DiffuCoder has `<|beginoftext|>`/`<|mask|>`).
    pub fn from_file_with(path: impl AsRef<Path>, special: &SpecialTokenConfig) -> Result<Self> {
        let path = path.as_ref();
        let mut bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if path.extension().is_some_and(|e| e == "gz") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(bytes.as_slice())
                .read_to_end(&mut out)
                .map_err(|e| Error::io(path, e))?;
            bytes = out;
        }
        Self::from_bytes(&bytes, special, Some(path))
    }

    /// Parse tokenizer JSON bytes; `path` only names the source in errors.
    pub fn from_bytes(
        bytes: &[u8],
        special: &SpecialTokenConfig,
        path: Option<&Path>,
    ) -> Result<Self> {
        let err = |message: String| Error::Tokenizer {
            path: path.map(Path::to_path_buf),
            message,
        };
        let mut json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| err(format!("invalid JSON: {e}")))?;
        let wanted = [
            &special.mask,
            &special.pad,
            &special.im_end,
            &special.im_start,
            &special.eos,
        ];
        install_special_tokens(&mut json, &wanted).map_err(err)?;
        let fixed = serde_json::to_vec(&json).expect("JSON value serialises");
        let inner = tokenizers::Tokenizer::from_bytes(&fixed).map_err(|e| err(e.to_string()))?;
        let id = |(content, _): &(String, u32)| {
            inner.token_to_id(content).ok_or_else(|| {
                err(format!(
                    "special token `{content}` is not in the vocabulary"
                ))
            })
        };
        let special = SpecialTokens {
            mask: id(&special.mask)?,
            pad: id(&special.pad)?,
            im_end: id(&special.im_end)?,
            im_start: id(&special.im_start)?,
            eos: id(&special.eos)?,
        };
        Ok(Self {
            inner,
            special,
            path: path.map(Path::to_path_buf),
        })
    }

    /// Wrap an in-memory tokenizer (e.g. one just trained) whose vocabulary already holds the
    /// special tokens by content.
    pub fn from_tokenizers(
        inner: tokenizers::Tokenizer,
        special: &SpecialTokenConfig,
    ) -> Result<Self> {
        let json = inner.to_string(false).map_err(|e| Error::Tokenizer {
            path: None,
            message: e.to_string(),
        })?;
        Self::from_bytes(json.as_bytes(), special, None)
    }

    /// Resolved special-token ids.
    pub fn special(&self) -> &SpecialTokens {
        &self.special
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The underlying `tokenizers` object.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// Save as `tokenizer.json` (atomically).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| self.error(e.to_string()))?;
        crate::util::write_atomic(path, text.as_bytes())
    }

    fn error(&self, message: String) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }

    /// Encode text without adding special tokens (special tokens written in the text, such as
    /// the chat template's, are recognised).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| self.error(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Decode ids; `skip_special` drops special tokens (`<|im_end|>`, pads, masks).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| self.error(e.to_string()))
    }

    /// Encode prompts, keep the last `max_prompt_length` tokens of each (left truncation, as
    /// TRL does), and left-pad with `<|dlm_pad|>` to the longest.
    pub fn encode_prompts(
        &self,
        prompts: &[String],
        max_prompt_length: usize,
    ) -> Result<PromptBatch> {
        if max_prompt_length == 0 {
            return Err(Error::invalid("max_prompt_length", "must be positive"));
        }
        let encoded = prompts
            .iter()
            .map(|p| {
                let ids = self.encode(p)?;
                let start = ids.len().saturating_sub(max_prompt_length);
                Ok(ids[start..].to_vec())
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(left_pad(encoded, self.special.pad))
    }
}

/// Left-pad token sequences to the longest with `pad`, returning ids and attention mask.
pub fn left_pad(seqs: Vec<Vec<u32>>, pad: u32) -> PromptBatch {
    let len = seqs.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(seqs.len());
    let mut mask = Vec::with_capacity(seqs.len());
    for s in seqs {
        let n_pad = len - s.len();
        let mut row = vec![pad; n_pad];
        row.extend_from_slice(&s);
        let mut m = vec![0u32; n_pad];
        m.extend(std::iter::repeat_n(1u32, s.len()));
        ids.push(row);
        mask.push(m);
    }
    PromptBatch {
        ids,
        attention_mask: mask,
        len,
    }
}

/// Make each `(content, id)` present as a special added token. Only rewrites an added-token
/// slot that sits at `id` with another content; never touches the BPE vocabulary.
fn install_special_tokens(
    json: &mut serde_json::Value,
    wanted: &[&(String, u32)],
) -> std::result::Result<(), String> {
    let Some(added) = json.get_mut("added_tokens").and_then(|v| v.as_array_mut()) else {
        return Err("no `added_tokens` array".into());
    };
    for (content, id) in wanted.iter().map(|t| (&t.0, t.1)) {
        if added
            .iter()
            .any(|t| t.get("content").and_then(|c| c.as_str()) == Some(content.as_str()))
        {
            continue;
        }
        if let Some(slot) = added
            .iter_mut()
            .find(|t| t.get("id").and_then(|i| i.as_u64()) == Some(id as u64))
        {
            slot["content"] = serde_json::Value::String(content.clone());
            slot["special"] = serde_json::Value::Bool(true);
        }
        // Otherwise the token stays missing and `from_bytes` reports it by name.
    }
    Ok(())
}

/// The Qwen2.5 chat template as TRL applies it to `[system, user]` with the generation prompt,
/// optionally followed by an assistant prefill (the evaluation templates use one).
pub fn chat_prompt(system: &str, user: &str, assistant_prefill: Option<&str>) -> String {
    let mut s = format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    );
    if let Some(prefill) = assistant_prefill {
        s.push_str(prefill);
    }
    s
}

/// A byte-level BPE tokenizer with no merges: every UTF-8 byte is one token, after the five
/// special tokens `<|endoftext|>` 0, `<|im_start|>` 1, `<|im_end|>` 2, `<|mask|>` 3,
/// `<|dlm_pad|>` 4 (261 ids in all). It encodes any text, so a random `tiny` model directory is
/// complete for generation without a trained vocabulary.
pub fn byte_level_tokenizer() -> Result<Tokenizer> {
    let special = byte_level_specials();
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let specials = [
        "<|endoftext|>",
        "<|im_start|>",
        "<|im_end|>",
        "<|mask|>",
        "<|dlm_pad|>",
    ];
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: serde_json::Map<String, serde_json::Value> = specials
        .iter()
        .map(|s| s.to_string())
        .chain(alphabet.iter().map(|c| c.to_string()))
        .enumerate()
        .map(|(i, t)| (t, serde_json::Value::from(i)))
        .collect();
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                               "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    });
    Tokenizer::from_bytes(json.to_string().as_bytes(), &special, None)
}

/// The special-token layout of [`byte_level_tokenizer`] (and of the `tiny`/`small` presets).
pub fn byte_level_specials() -> SpecialTokenConfig {
    SpecialTokenConfig {
        mask: ("<|mask|>".into(), 3),
        pad: ("<|dlm_pad|>".into(), 4),
        im_end: ("<|im_end|>".into(), 2),
        im_start: ("<|im_start|>".into(), 1),
        eos: ("<|endoftext|>".into(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qwen() -> Tokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/tokenizers/qwen/tokenizer.json.gz");
        Tokenizer::from_file(path).unwrap()
    }

    #[test]
    fn qwen_ids_match_the_reference() {
        let tok = qwen();
        // Values from the Dream tokenizer docstring and Qwen's vocabulary.
        assert_eq!(tok.encode("Hello world").unwrap(), vec![9707, 1879]);
        assert_eq!(tok.encode(" Hello world").unwrap(), vec![21927, 1879]);
        let s = tok.special();
        assert_eq!(
            (s.mask, s.pad, s.im_end, s.im_start, s.eos),
            (151_666, 151_667, 151_645, 151_644, 151_643)
        );
        assert_eq!(
            tok.encode("<|mask|><|dlm_pad|>").unwrap(),
            vec![151_666, 151_667]
        );
    }

    #[test]
    fn chat_template_is_the_reference_string() {
        let prompt = chat_prompt(DEFAULT_SYSTEM_PROMPT, "Write add(a, b).", None);
        assert_eq!(
            prompt,
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWrite add(a, b).<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = qwen().encode(&prompt).unwrap();
        assert_eq!(ids[0], 151_644);
        assert_eq!(ids.iter().filter(|&&i| i == 151_645).count(), 2);
        assert_eq!(&ids[ids.len() - 3..ids.len() - 1], &[151_644, 77_091]); // <|im_start|>assistant
    }

    #[test]
    fn prompts_are_left_padded_and_left_truncated() {
        let tok = qwen();
        let batch = tok
            .encode_prompts(&["Hello world".into(), "a b c d e f".into()], 4)
            .unwrap();
        assert_eq!(batch.len, 4);
        let long = tok.encode("a b c d e f").unwrap();
        assert_eq!(
            batch.ids[1],
            long[long.len() - 4..].to_vec(),
            "keeps the last tokens"
        );
        assert_eq!(batch.ids[0], vec![151_667, 151_667, 9707, 1879]);
        assert_eq!(batch.attention_mask[0], vec![0, 0, 1, 1]);
        assert_eq!(batch.attention_mask[1], vec![1, 1, 1, 1]);
    }

    #[test]
    fn decode_skips_special_tokens() {
        let tok = qwen();
        let mut ids = tok.encode("x = 1").unwrap();
        ids.extend([151_645, 151_667, 151_667]);
        assert_eq!(tok.decode(&ids, true).unwrap(), "x = 1");
    }

    #[test]
    fn missing_special_token_is_a_named_error() {
        let json = br#"{"version":"1.0","added_tokens":[],"model":{"type":"BPE","vocab":{"a":0},"merges":[]}}"#;
        let err = Tokenizer::from_bytes(json, &SpecialTokenConfig::default(), None).unwrap_err();
        assert!(err.to_string().contains("<|mask|>"), "{err}");
    }

    #[test]
    fn byte_level_round_trips_any_text() {
        let tok = byte_level_tokenizer().unwrap();
        assert_eq!(tok.vocab_size(), 261);
        let text = "def f(x):\n    return x * 2  # é ✓";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.len());
        assert_eq!(tok.decode(&ids, true).unwrap(), text);
        assert_eq!(tok.special().mask, 3);
    }
}
