//! The `builtin` embedder: feature-hashed words, word pairs and character trigrams,
//! L2-normalised. Offline and instant, and lexical, not semantic: it finds texts that share
//! words, word stems or spellings with the query ("recieve" finds "receive"), never a
//! paraphrase that shares none ("automobile repair" does not find "fixing my car").

use async_trait::async_trait;

use super::embedder::Embedder;
use crate::feed::BoxError;

/// Vector length: enough buckets that unrelated short texts rarely collide.
pub const DIMENSION: usize = 256;

const WORD_WEIGHT: f32 = 1.0;
const PAIR_WEIGHT: f32 = 0.5;
const TRIGRAM_WEIGHT: f32 = 0.35;

#[derive(Debug, Default, Clone, Copy)]
pub struct BuiltinEmbedder;

impl BuiltinEmbedder {
    /// The vector of one text; all zeros for a text without a word.
    pub fn vector(text: &str) -> Vec<f32> {
        let mut vector = vec![0.0f32; DIMENSION];
        let words: Vec<String> = text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect();
        for (i, word) in words.iter().enumerate() {
            add(&mut vector, word.as_bytes(), WORD_WEIGHT);
            if let Some(next) = words.get(i + 1) {
                add(
                    &mut vector,
                    format!("{word} {next}").as_bytes(),
                    PAIR_WEIGHT,
                );
            }
            let padded: Vec<char> = std::iter::once('#')
                .chain(word.chars())
                .chain(std::iter::once('#'))
                .collect();
            for gram in padded.windows(3) {
                let gram: String = gram.iter().collect();
                add(&mut vector, format!("#3{gram}").as_bytes(), TRIGRAM_WEIGHT);
            }
        }
        normalise(&mut vector);
        vector
    }
}

/// Adds `weight` to the bucket of `feature`, with a sign from the hash so that collisions
/// cancel out on average instead of piling up.
fn add(vector: &mut [f32], feature: &[u8], weight: f32) {
    let hash = fnv1a(feature);
    let bucket = (hash % vector.len() as u64) as usize;
    let sign = if hash >> 63 == 0 { 1.0 } else { -1.0 };
    vector[bucket] += sign * weight;
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

pub fn normalise(vector: &mut [f32]) {
    let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt();
    if norm > 0.0 {
        for v in vector.iter_mut() {
            *v /= norm;
        }
    }
}

#[async_trait]
impl Embedder for BuiltinEmbedder {
    fn id(&self) -> &str {
        "builtin:hashed-ngrams-v1-256"
    }

    fn dimension(&self) -> usize {
        DIMENSION
    }

    fn lexical(&self) -> bool {
        true
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, BoxError> {
        Ok(texts.iter().map(|t| Self::vector(t)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(a: &str, b: &str) -> f32 {
        let (a, b) = (BuiltinEmbedder::vector(a), BuiltinEmbedder::vector(b));
        a.iter().zip(&b).map(|(x, y)| x * y).sum()
    }

    #[test]
    fn vectors_are_unit_length_or_zero() {
        let v = BuiltinEmbedder::vector("Receive the payment");
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(BuiltinEmbedder::vector(" ,;").iter().all(|x| *x == 0.0));
    }

    #[test]
    fn a_misspelling_is_closer_than_an_unrelated_word() {
        assert!(cosine("recieve", "receive") > cosine("recieve", "invoice"));
    }

    #[test]
    fn a_paraphrase_without_a_shared_word_is_not_close() {
        assert!(cosine("automobile repair", "fixing my car") < 0.3);
        assert!(cosine("automobile repair", "automobile repairs") > 0.5);
    }
}
