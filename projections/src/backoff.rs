//! How a client of a remote HTTP service (an embeddings provider, an LLM provider) waits
//! before it retries a 429 or a 5xx: the server's `Retry-After` when it sent one, else
//! exponential backoff with jitter; never more than the cap.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};

/// The retry delays of one client.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The wait before the first retry, doubled for each one after it.
    pub initial: Duration,
    /// No wait is longer, whatever the server asks.
    pub max: Duration,
}

impl Backoff {
    /// The wait before retry number `retry + 1`. `jitter` is a draw in `[0, 1]`: the delay
    /// is between half and all of the doubled one, so that many clients' retries spread.
    pub fn delay(&self, retry: u32, headers: &HeaderMap, jitter: f64) -> Duration {
        if let Some(asked) = retry_after(headers) {
            return asked.min(self.max);
        }
        let base = self
            .initial
            .saturating_mul(2u32.saturating_pow(retry.min(20)));
        base.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
            .min(self.max)
    }
}

/// `Retry-After` as seconds or as an HTTP date (RFC 9110 §10.2.3).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut headers = HeaderMap::new();
        assert_eq!(retry_after(&headers), None);
        headers.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&headers), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(retry_after(&headers), None);
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        let backoff = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1_000),
        };
        let none = HeaderMap::new();
        assert_eq!(backoff.delay(0, &none, 1.0), Duration::from_millis(100));
        assert_eq!(backoff.delay(0, &none, 0.0), Duration::from_millis(50));
        assert_eq!(backoff.delay(2, &none, 1.0), Duration::from_millis(400));
        assert_eq!(backoff.delay(10, &none, 1.0), Duration::from_millis(1_000));
        let mut asked = HeaderMap::new();
        asked.insert(RETRY_AFTER, "60".parse().unwrap());
        assert_eq!(backoff.delay(0, &asked, 0.5), Duration::from_millis(1_000));
    }
}
