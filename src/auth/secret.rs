//! The server secret behind access tokens, refresh tokens and API-key hashes: from
//! `CHRONICLE_JWT_SECRET`, or in development generated once into `<data_dir>/jwt_secret`.

use std::fmt;
use std::io::{ErrorKind, Write};
use std::path::Path;

use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::ExposeSecret;
use sha2::Sha256;

use crate::config::{Profile, Settings};

const SECRET_FILE: &str = "jwt_secret";
const GENERATED_BYTES: usize = 32;

/// Keys derived from the one server secret, one per use, so that a value made for one use
/// can never be accepted as another.
#[derive(Clone)]
pub struct ServerKeys {
    pub jwt: [u8; 32],
    pub refresh: [u8; 32],
    pub api_key: [u8; 32],
    /// The chain checkpoints' MAC key, unless `CHRONICLE_AUDIT__KEY` is set.
    pub audit: [u8; 32],
}

impl fmt::Debug for ServerKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerKeys(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("CHRONICLE_JWT_SECRET: required when CHRONICLE_PROFILE=production")]
    Missing,
    #[error("CHRONICLE_JWT_SECRET: must not be empty")]
    Empty,
    #[error("cannot read or create the JWT secret at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ServerKeys {
    pub fn from_secret(secret: &[u8]) -> Self {
        Self {
            jwt: derive(secret, b"chronicle/access-token/v1"),
            refresh: derive(secret, b"chronicle/refresh-token/v1"),
            api_key: derive(secret, b"chronicle/api-key/v1"),
            audit: derive(secret, b"chronicle/audit-checkpoint/v1"),
        }
    }

    /// The configured secret; in development without one, the secret in the data dir,
    /// generated on first start.
    pub fn load(settings: &Settings) -> Result<Self, SecretError> {
        if let Some(secret) = &settings.jwt_secret {
            let secret = secret.expose_secret();
            if secret.is_empty() {
                return Err(SecretError::Empty);
            }
            if secret.len() < 32 {
                tracing::warn!("CHRONICLE_JWT_SECRET is shorter than 32 bytes; use a longer one");
            }
            return Ok(Self::from_secret(secret.as_bytes()));
        }
        if settings.profile == Profile::Production {
            return Err(SecretError::Missing);
        }
        load_or_generate(&settings.data_dir).map(|secret| Self::from_secret(&secret))
    }
}

fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(label);
    mac.finalize().into_bytes().into()
}

/// Reads `<dir>/jwt_secret`, creating it (mode 0600) with a random secret if absent. Two
/// processes starting at once agree: only one `create_new` succeeds, the other reads.
fn load_or_generate(dir: &Path) -> Result<Vec<u8>, SecretError> {
    let path = dir.join(SECRET_FILE);
    let io = |source| SecretError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let mut bytes = [0u8; GENERATED_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    let generated = hex::encode(bytes);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(generated.as_bytes()).map_err(io)?;
            file.sync_all().map_err(io)?;
            tracing::info!(path = %path.display(), "generated a JWT secret for development");
            Ok(generated.into_bytes())
        }
        Err(error) if error.kind() == ErrorKind::AlreadyExists => {
            let stored = std::fs::read_to_string(&path).map_err(io)?;
            let stored = stored.trim();
            if stored.is_empty() {
                return Err(SecretError::Empty);
            }
            Ok(stored.as_bytes().to_vec())
        }
        Err(error) => Err(io(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_keys_differ_per_use_and_per_secret() {
        let a = ServerKeys::from_secret(b"one secret");
        let b = ServerKeys::from_secret(b"another secret");
        assert_ne!(a.jwt, a.refresh);
        assert_ne!(a.jwt, a.api_key);
        assert_ne!(a.jwt, b.jwt);
        assert_eq!(a.jwt, ServerKeys::from_secret(b"one secret").jwt);
        assert!(!format!("{a:?}").contains(&hex::encode(a.jwt)));
    }

    #[test]
    fn development_secret_is_generated_once_with_private_permissions() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("nested/data");
        let first = load_or_generate(&data).expect("generated");
        let second = load_or_generate(&data).expect("reused");
        assert_eq!(first, second);
        assert_eq!(first.len(), GENERATED_BYTES * 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(data.join(SECRET_FILE))
                .expect("secret file")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn production_refuses_without_a_secret() {
        let settings = Settings {
            profile: Profile::Production,
            ..Settings::default()
        };
        assert!(matches!(
            ServerKeys::load(&settings),
            Err(SecretError::Missing)
        ));
    }
}
