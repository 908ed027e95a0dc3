//! Refresh tokens: opaque to clients, `rt1.<session id>.<token id>.<tag>`, where the tag is
//! an HMAC under the server's refresh key. The Session aggregate stores only the ids, so
//! the event store alone is not enough to forge a token.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

const VERSION: &str = "rt1";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshToken {
    pub session_id: Uuid,
    pub token_id: Uuid,
}

impl RefreshToken {
    pub fn encode(&self, key: &[u8; 32]) -> String {
        let body = self.body();
        let tag = hex::encode(mac(key, &body).finalize().into_bytes());
        format!("{body}.{tag}")
    }

    /// The token's ids if `raw` is a token this server made; checked in constant time.
    pub fn decode(key: &[u8; 32], raw: &str) -> Option<Self> {
        let (body, tag) = raw.rsplit_once('.')?;
        let mut parts = body.split('.');
        let (version, session, token) = (parts.next()?, parts.next()?, parts.next()?);
        if version != VERSION || parts.next().is_some() {
            return None;
        }
        let tag = hex::decode(tag).ok()?;
        mac(key, body).verify_slice(&tag).ok()?;
        Some(Self {
            session_id: Uuid::try_parse(session).ok()?,
            token_id: Uuid::try_parse(token).ok()?,
        })
    }

    fn body(&self) -> String {
        format!(
            "{VERSION}.{}.{}",
            self.session_id.simple(),
            self.token_id.simple()
        )
    }
}

fn mac(key: &[u8; 32], body: &str) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body.as_bytes());
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_forgeries() {
        let key = [7u8; 32];
        let token = RefreshToken {
            session_id: Uuid::now_v7(),
            token_id: Uuid::new_v4(),
        };
        let raw = token.encode(&key);
        assert_eq!(RefreshToken::decode(&key, &raw), Some(token));
        assert_eq!(RefreshToken::decode(&[8u8; 32], &raw), None);
        let forged = RefreshToken {
            token_id: Uuid::new_v4(),
            ..token
        };
        let (_, tag) = raw.rsplit_once('.').expect("a tag");
        assert_eq!(
            RefreshToken::decode(&key, &format!("{}.{tag}", forged.body())),
            None
        );
        for junk in ["", "rt1", "rt1.a.b.c", "x.y.z.w.v", &raw[..raw.len() - 1]] {
            assert_eq!(RefreshToken::decode(&key, junk), None, "{junk}");
        }
    }
}
