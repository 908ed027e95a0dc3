//! The `local` embedder: a sentence-transformers BERT model (all-MiniLM-L6-v2 or another of
//! its shape) run in process with candle, on the CPU. It loads `config.json`,
//! `tokenizer.json`, `model.safetensors` and `sentence_bert_config.json` from a folder the
//! operator names (nothing is downloaded), truncates each text at the model's
//! `max_seq_length`, pads only to the longest text of a batch, and mean-pools the last hidden
//! states over the attention mask into an L2-normalised vector.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::embedder::Embedder;
use crate::feed::BoxError;

/// Texts per forward pass: a batch is padded to its longest text.
const BATCH: usize = 16;

/// Why the model folder could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LocalModelError {
    #[error("cannot read {path}: {message} (CHRONICLE_EMBEDDINGS__MODEL_DIR)")]
    Read { path: PathBuf, message: String },
    #[error("{path} is not a valid model file: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error(
        "{0} asks for a pooling other than the mean of the tokens; only mean pooling is supported"
    )]
    Pooling(PathBuf),
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: usize,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
}

/// A loaded model; cheap to clone.
#[derive(Clone)]
pub struct LocalEmbedder {
    inner: Arc<Model>,
}

struct Model {
    id: String,
    dimension: usize,
    max_tokens: usize,
    bert: BertModel,
    tokenizer: Tokenizer,
    device: Device,
}

impl LocalEmbedder {
    /// Loads the model in `dir`. Its id is `local:<folder name>-<dims>-<sha-256 prefix of
    /// model.safetensors>`: other weights are another embedder, even in the same folder.
    pub fn load(dir: &Path) -> Result<Self, LocalModelError> {
        let config_path = dir.join("config.json");
        let config: Config = parse_json(&config_path)?;
        let dimension = hidden_size(&config_path)?;
        let sbert_path = dir.join("sentence_bert_config.json");
        let sbert: SentenceBertConfig = parse_json(&sbert_path)?;
        let max_tokens = sbert.max_seq_length.min(max_positions(&config_path)?);
        let pooling_path = dir.join("1_Pooling").join("config.json");
        if pooling_path.exists() {
            let pooling: PoolingConfig = parse_json(&pooling_path)?;
            if !pooling.pooling_mode_mean_tokens {
                return Err(LocalModelError::Pooling(pooling_path));
            }
        }
        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer =
            Tokenizer::from_file(&tokenizer_path).map_err(|e| LocalModelError::Invalid {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let pad_id = tokenizer
            .get_padding()
            .map(|p| (p.pad_id, p.pad_token.clone(), p.pad_type_id))
            .unwrap_or_else(|| (0, "[PAD]".to_owned(), 0));
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id: pad_id.0,
            pad_token: pad_id.1,
            pad_type_id: pad_id.2,
            ..PaddingParams::default()
        }));
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| LocalModelError::Invalid {
                path: tokenizer_path.clone(),
                message: e.to_string(),
            })?;
        let weights_path = dir.join("model.safetensors");
        let weights = read(&weights_path)?;
        let digest = hex_prefix(&Sha256::digest(&weights));
        let device = Device::Cpu;
        let invalid = |e: candle_core::Error| LocalModelError::Invalid {
            path: weights_path.clone(),
            message: e.to_string(),
        };
        let vb =
            VarBuilder::from_buffered_safetensors(weights, DType::F32, &device).map_err(invalid)?;
        let bert = BertModel::load(vb, &config).map_err(invalid)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".to_owned());
        Ok(Self {
            inner: Arc::new(Model {
                id: format!("local:{name}-{dimension}-{digest}"),
                dimension,
                max_tokens,
                bert,
                tokenizer,
                device,
            }),
        })
    }

    /// Tokens a text is cut at (the model's `max_seq_length`, special tokens included).
    pub fn max_tokens(&self) -> usize {
        self.inner.max_tokens
    }

    /// Tokens `text` becomes before truncation would apply, special tokens included.
    pub fn token_count(&self, text: &str) -> Result<usize, BoxError> {
        let encoding = self.inner.tokenizer.encode(text, true)?;
        Ok(encoding.len()
            + encoding
                .get_overflowing()
                .iter()
                .map(|o| o.len())
                .sum::<usize>())
    }

    /// The vectors of `texts`, computed on this thread (CPU-bound: call it off the async
    /// runtime), [`BATCH`] texts per forward pass.
    pub fn embed_blocking(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, BoxError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(BATCH) {
            vectors.extend(self.inner.embed_batch(chunk)?);
        }
        Ok(vectors)
    }
}

impl Model {
    fn embed_batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, BoxError> {
        let encodings = self.tokenizer.encode_batch(texts.to_vec(), true)?;
        let rows = encodings.len();
        let Some(width) = encodings.first().map(|e| e.len()) else {
            return Ok(Vec::new());
        };
        let mut ids = Vec::with_capacity(rows * width);
        let mut types = Vec::with_capacity(rows * width);
        let mut mask = Vec::with_capacity(rows * width);
        for encoding in &encodings {
            ids.extend_from_slice(encoding.get_ids());
            types.extend_from_slice(encoding.get_type_ids());
            mask.extend_from_slice(encoding.get_attention_mask());
        }
        let ids = Tensor::from_vec(ids, (rows, width), &self.device)?;
        let types = Tensor::from_vec(types, (rows, width), &self.device)?;
        let mask = Tensor::from_vec(mask, (rows, width), &self.device)?;
        let hidden = self.bert.forward(&ids, &types, Some(&mask))?;
        // Mean over the tokens the mask keeps (padding contributes nothing).
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean
            .sqr()?
            .sum_keepdim(1)?
            .sqrt()?
            .clamp(1e-12f32, f32::MAX)?;
        let normalised = mean.broadcast_div(&norms)?;
        Ok(normalised.to_vec2::<f32>()?)
    }
}

#[async_trait]
impl Embedder for LocalEmbedder {
    fn id(&self) -> &str {
        &self.inner.id
    }

    fn dimension(&self) -> usize {
        self.inner.dimension
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, BoxError> {
        let this = self.clone();
        let texts = texts.to_vec();
        tokio::task::spawn_blocking(move || this.embed_blocking(&texts)).await?
    }
}

fn read(path: &Path) -> Result<Vec<u8>, LocalModelError> {
    std::fs::read(path).map_err(|e| LocalModelError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, LocalModelError> {
    serde_json::from_slice(&read(path)?).map_err(|e| LocalModelError::Invalid {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

fn config_number(path: &Path, field: &str) -> Result<usize, LocalModelError> {
    let value: serde_json::Value = parse_json(path)?;
    value
        .get(field)
        .and_then(serde_json::Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| LocalModelError::Invalid {
            path: path.to_owned(),
            message: format!("no {field}"),
        })
}

fn hidden_size(config: &Path) -> Result<usize, LocalModelError> {
    config_number(config, "hidden_size")
}

fn max_positions(config: &Path) -> Result<usize, LocalModelError> {
    config_number(config, "max_position_embeddings")
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    //! Against the model `scripts/fetch-test-model` puts in `.models/all-MiniLM-L6-v2`
    //! (or `CHRONICLE_TEST_MODEL_DIR`): these fail, never skip, when it is missing.

    use super::*;

    fn model() -> LocalEmbedder {
        let dir = std::env::var_os("CHRONICLE_TEST_MODEL_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../.models/all-MiniLM-L6-v2")
            });
        match LocalEmbedder::load(&dir) {
            Ok(model) => model,
            Err(error) => panic!("{error}: run ./scripts/fetch-test-model first"),
        }
    }

    fn embed(model: &LocalEmbedder, texts: &[&str]) -> Vec<Vec<f32>> {
        let texts: Vec<String> = texts.iter().map(|t| (*t).to_owned()).collect();
        model.embed_blocking(&texts).expect("embeds")
    }

    fn dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn hello_world_matches_the_reference_vector() {
        let model = model();
        assert_eq!(model.dimension(), 384);
        assert_eq!(model.max_tokens(), 256);
        let vector = &embed(&model, &["hello world"])[0];
        // fastembed's test vector for this model.
        let expected = [-0.034478f32, 0.03102, 0.00673, 0.02611, -0.039362];
        for (i, (got, want)) in vector.iter().zip(expected).enumerate() {
            assert!((got - want).abs() < 1e-4, "dimension {i}: {got} != {want}");
        }
        assert!((dot(vector, vector).sqrt() - 1.0).abs() < 1e-5);
    }

    #[test]
    fn near_sentences_are_near() {
        let model = model();
        let v = embed(
            &model,
            &["That is a happy person", "That is a very happy person"],
        );
        let cosine = dot(&v[0], &v[1]);
        assert!((cosine - 0.943).abs() < 0.01, "cosine {cosine}");
    }

    #[test]
    fn a_sentence_alone_equals_it_in_a_padded_batch() {
        let model = model();
        let short = "The cat sits on the mat.";
        let long = "A much longer sentence that needs many more tokens than the short one, \
                    so that the short one is padded to its length within the batch, which \
                    must change nothing in its vector.";
        let alone = &embed(&model, &[short])[0];
        let batch = embed(&model, &[long, short]);
        for (i, (a, b)) in alone.iter().zip(&batch[1]).enumerate() {
            assert!((a - b).abs() < 1e-5, "dimension {i}: {a} != {b}");
        }
    }

    #[test]
    fn a_long_text_is_cut_at_the_models_max_seq_length() {
        let model = model();
        let head: Vec<String> = (0..300).map(|i| format!("word{}", i % 7)).collect();
        let long = head.join(" ");
        assert!(model.token_count(&long).expect("tokenizes") > 256);
        let tail = format!("{long} and then a completely different ending about volcanoes");
        let v = embed(&model, &[&long, &tail]);
        // Everything past token 256 is cut: both texts embed the same first 256 tokens.
        for (a, b) in v[0].iter().zip(&v[1]) {
            assert!((a - b).abs() < 1e-5);
        }
        // And the cut is not at 128 (tokenizer.json's own setting): text between tokens 128
        // and 256 still counts.
        let short_head: Vec<String> = (0..70).map(|i| format!("word{}", i % 7)).collect();
        let a = format!("{} volcanoes erupt", short_head.join(" "));
        let b = format!("{} kittens sleep", short_head.join(" "));
        assert!(model.token_count(&a).expect("tokenizes") > 128);
        assert!(model.token_count(&a).expect("tokenizes") < 256);
        let v = embed(&model, &[&a, &b]);
        assert!(dot(&v[0], &v[1]) < 0.9999);
    }
}
