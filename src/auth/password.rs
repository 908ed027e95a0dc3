//! Password hashing with argon2id, always on the blocking pool. A login for an unknown
//! email still verifies against a dummy hash, so timing does not tell which emails exist.

use std::sync::LazyLock;

use argon2::password_hash::{PasswordHash as Phc, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use chronicle_commands::auth::PasswordHash;
use rand::RngCore;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("the password hashing task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A hash of a random password nobody knows, verified against when the user is unknown.
static DUMMY: LazyLock<Option<String>> = LazyLock::new(|| {
    let mut password = [0u8; 32];
    rand::rng().fill_bytes(&mut password);
    hash_blocking(&hex::encode(password)).ok()
});

fn hash_blocking(password: &str) -> Result<String, PasswordError> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

fn verify_blocking(password: &str, phc: &str) -> bool {
    Phc::new(phc).is_ok_and(|parsed| {
        Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok()
    })
}

pub async fn hash(password: String) -> Result<PasswordHash, PasswordError> {
    let phc = tokio::task::spawn_blocking(move || hash_blocking(&password)).await??;
    PasswordHash::from_phc(phc).map_err(|e| PasswordError::Hash(e.to_owned()))
}

/// Whether `password` matches `stored`; with no stored hash, spends the same time and
/// answers `false`.
pub async fn verify(password: String, stored: Option<PasswordHash>) -> Result<bool, PasswordError> {
    let verified = tokio::task::spawn_blocking(move || match stored {
        Some(stored) => verify_blocking(&password, stored.as_str()),
        None => {
            if let Some(dummy) = DUMMY.as_deref() {
                verify_blocking(&password, dummy);
            }
            false
        }
    })
    .await?;
    Ok(verified)
}

/// Computes the dummy hash now rather than on the first unknown-email login, which would
/// otherwise be measurably slower than the rest.
pub fn warm_up() {
    tokio::task::spawn_blocking(|| LazyLock::force(&DUMMY));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_only_their_password() {
        let stored = hash("correct horse".into()).await.expect("hashed");
        assert!(stored.as_str().starts_with("$argon2id$"));
        assert!(!stored.as_str().contains("correct horse"));
        assert!(verify("correct horse".into(), Some(stored.clone()))
            .await
            .expect("ran"));
        assert!(!verify("wrong horse".into(), Some(stored))
            .await
            .expect("ran"));
        assert!(!verify("correct horse".into(), None).await.expect("ran"));
    }
}
