//! Access tokens: HS256 JWTs, pinned to that one algorithm, carrying who the caller is
//! (`sub`), what they may do (`roles`) and which session issued them (`sid`).

use chronicle_commands::auth::Role;
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub const ISSUER: &str = "chronicle";
pub const AUDIENCE: &str = "chronicle-api";
/// Clock skew tolerated on `exp` between nodes.
const LEEWAY_SECS: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub aud: String,
    pub sub: Uuid,
    pub iat: i64,
    pub exp: i64,
    pub roles: Vec<Role>,
    pub sid: Uuid,
}

impl AccessClaims {
    pub fn new(
        user_id: Uuid,
        roles: Vec<Role>,
        session_id: Uuid,
        now: DateTime<Utc>,
        ttl_secs: u64,
    ) -> Self {
        let iat = now.timestamp();
        Self {
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            sub: user_id,
            iat,
            exp: iat.saturating_add(i64::try_from(ttl_secs).unwrap_or(i64::MAX)),
            roles,
            sid: session_id,
        }
    }
}

/// Signs and checks access tokens with the server's access-token key.
#[derive(Clone)]
pub struct JwtCodec {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtCodec {
    pub fn new(key: &[u8]) -> Self {
        // `Validation::new` allows exactly the one algorithm given: a token whose header
        // says `none`, `HS384` or `RS256` is refused before its signature is looked at.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        Self {
            encoding: EncodingKey::from_secret(key),
            decoding: DecodingKey::from_secret(key),
            validation,
        }
    }

    pub fn issue(&self, claims: &AccessClaims) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
    }

    /// The claims of a token this server signed and that has not expired.
    pub fn verify(&self, token: &str) -> Result<AccessClaims, jsonwebtoken::errors::Error> {
        jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use chrono::Duration;

    fn claims(now: DateTime<Utc>) -> AccessClaims {
        AccessClaims::new(Uuid::now_v7(), vec![Role::User], Uuid::now_v7(), now, 900)
    }

    #[test]
    fn a_fresh_token_round_trips() {
        let codec = JwtCodec::new(b"key one");
        let claims = claims(Utc::now());
        let token = codec.issue(&claims).expect("signed");
        assert_eq!(codec.verify(&token).expect("valid"), claims);
    }

    #[test]
    fn expired_wrong_key_and_tampered_tokens_are_refused() {
        let codec = JwtCodec::new(b"key one");
        let expired = codec
            .issue(&claims(Utc::now() - Duration::hours(1)))
            .expect("signed");
        assert!(codec.verify(&expired).is_err());

        let other = JwtCodec::new(b"key two")
            .issue(&claims(Utc::now()))
            .expect("signed");
        assert!(codec.verify(&other).is_err());

        let token = codec.issue(&claims(Utc::now())).expect("signed");
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        let mut payload: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(&parts[1]).expect("base64"))
                .expect("json");
        payload["roles"] = serde_json::json!(["admin"]);
        parts[1] = URL_SAFE_NO_PAD.encode(payload.to_string());
        assert!(codec.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn other_algorithms_are_refused() {
        let codec = JwtCodec::new(b"key one");
        let claims = claims(Utc::now());
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("json"));
        let none = format!(
            "{}.{body}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
        );
        assert!(codec.verify(&none).is_err());
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims,
            &EncodingKey::from_secret(b"key one"),
        )
        .expect("signed");
        assert!(codec.verify(&hs384).is_err());
    }
}
