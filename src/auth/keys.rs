//! API keys: `chr_<key id>_<secret>`. The key id makes a key self-locating (its ApiKey
//! aggregate is loaded by id, no read model needed); the secret is stored only as
//! HMAC-SHA256 under the server's API-key key — fast enough to check on every request,
//! useless to whoever reads the event store.

use chronicle_commands::auth::{ApiKeyPrefix, SecretHash};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use uuid::Uuid;

pub const KEY_PREFIX: &str = "chr_";
const SECRET_BYTES: usize = 32;
/// How much of the secret the public prefix shows, so rotated keys can be told apart.
const SHOWN_SECRET_CHARS: usize = 6;

/// A freshly drawn key: `key` is shown once to its owner, the rest is stored.
pub struct NewKey {
    pub key: String,
    pub prefix: ApiKeyPrefix,
    pub secret_hash: SecretHash,
}

/// A key as presented by a client, not yet checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedKey {
    pub key_id: Uuid,
    secret: String,
}

pub fn generate(hmac_key: &[u8; 32], key_id: Uuid) -> Result<NewKey, &'static str> {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    let id = key_id.simple().to_string();
    let prefix = ApiKeyPrefix::parse(&format!(
        "{KEY_PREFIX}{id}_{}",
        &secret[..SHOWN_SECRET_CHARS]
    ))?;
    let secret_hash = SecretHash::from_hex(hex::encode(
        mac(hmac_key, key_id, &secret).finalize().into_bytes(),
    ))?;
    Ok(NewKey {
        key: format!("{KEY_PREFIX}{id}_{secret}"),
        prefix,
        secret_hash,
    })
}

/// Splits `chr_<32 hex>_<64 hex>`; anything else is not a key.
pub fn parse(raw: &str) -> Option<PresentedKey> {
    let rest = raw.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    if id.len() != 32 || secret.len() != SECRET_BYTES * 2 {
        return None;
    }
    if !secret.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
        return None;
    }
    Some(PresentedKey {
        key_id: Uuid::try_parse(id).ok()?,
        secret: secret.to_owned(),
    })
}

impl PresentedKey {
    /// Whether this key's secret is the one `stored` was made from; constant time.
    pub fn matches(&self, hmac_key: &[u8; 32], stored: &SecretHash) -> bool {
        let Ok(stored) = hex::decode(stored.as_str()) else {
            return false;
        };
        mac(hmac_key, self.key_id, &self.secret)
            .verify_slice(&stored)
            .is_ok()
    }
}

fn mac(hmac_key: &[u8; 32], key_id: Uuid, secret: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(hmac_key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(key_id.as_bytes());
    mac.update(secret.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_parses_and_matches_its_hash_only() {
        let hmac_key = [1u8; 32];
        let id = Uuid::now_v7();
        let new = generate(&hmac_key, id).expect("a key");
        assert!(new.key.starts_with("chr_"));
        assert!(new.key.starts_with(new.prefix.as_str()));
        assert!(!new.secret_hash.as_str().contains(&new.key[37..]));
        let presented = parse(&new.key).expect("parses");
        assert_eq!(presented.key_id, id);
        assert!(presented.matches(&hmac_key, &new.secret_hash));
        assert!(!presented.matches(&[2u8; 32], &new.secret_hash));
        let other = generate(&hmac_key, id).expect("a key");
        assert!(!presented.matches(&hmac_key, &other.secret_hash));
    }

    #[test]
    fn junk_is_not_a_key() {
        let good = generate(&[1u8; 32], Uuid::now_v7()).expect("a key").key;
        for junk in [
            "",
            "chr_",
            "chr_abc_def",
            &good.replace("chr_", "chx_"),
            &good[..good.len() - 1],
            &good.to_uppercase(),
        ] {
            assert_eq!(parse(junk), None, "{junk}");
        }
    }
}
