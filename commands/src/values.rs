//! Validated values: once constructed, they are known to be within their rules.

use std::fmt;
use std::sync::OnceLock;

use regex::Regex;
use serde::{Deserialize, Serialize};

/// What a task asks for, e.g. `browser.navigate`, `llm.chat`, `http.request`: two or more
/// lowercase dot-separated segments.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Capability(String);

impl Capability {
    pub const MAX_LEN: usize = 128;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        static FORMAT: OnceLock<Regex> = OnceLock::new();
        let format = FORMAT.get_or_init(|| {
            Regex::new(r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$").expect("static regex")
        });
        if raw.len() > Self::MAX_LEN {
            return Err("must be at most 128 characters");
        }
        if !format.is_match(raw) {
            return Err("must be dot-separated lowercase segments, e.g. `browser.navigate`");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Task priority, 0 (lowest) to 9 (served first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Priority(u8);

impl Priority {
    pub const DEFAULT: Self = Self(5);

    pub fn new(raw: i64) -> Result<Self, &'static str> {
        u8::try_from(raw)
            .ok()
            .filter(|p| *p <= 9)
            .map(Self)
            .ok_or("must be an integer from 0 to 9")
    }

    pub fn get(self) -> u8 {
        self.0
    }
}

impl Default for Priority {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// How long a lease lasts without news from the agent, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TimeoutSecs(u32);

impl TimeoutSecs {
    pub const DEFAULT: Self = Self(300);
    /// One day: a lease is renewed by heartbeats, so no single window needs to be longer.
    pub const MAX: u32 = 86_400;

    pub fn new(raw: i64) -> Result<Self, &'static str> {
        u32::try_from(raw)
            .ok()
            .filter(|t| (1..=Self::MAX).contains(t))
            .map(Self)
            .ok_or("must be an integer from 1 to 86400 seconds")
    }

    pub fn get(self) -> u32 {
        self.0
    }
}

impl Default for TimeoutSecs {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Exponential backoff between attempts, with jitter drawn by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
}

impl RetryPolicy {
    pub const MAX_ATTEMPTS: u32 = 100;
    /// One day.
    pub const MAX_BACKOFF_MS: u64 = 86_400_000;

    pub fn new(
        max_attempts: i64,
        initial_backoff_ms: i64,
        max_backoff_ms: i64,
    ) -> Result<Self, Vec<(&'static str, &'static str)>> {
        let mut errors = Vec::new();
        let attempts = u32::try_from(max_attempts)
            .ok()
            .filter(|a| (1..=Self::MAX_ATTEMPTS).contains(a));
        if attempts.is_none() {
            errors.push(("max_attempts", "must be an integer from 1 to 100"));
        }
        let initial = u64::try_from(initial_backoff_ms)
            .ok()
            .filter(|b| *b <= Self::MAX_BACKOFF_MS);
        if initial.is_none() {
            errors.push((
                "retry.initial_backoff_ms",
                "must be from 0 to 86400000 milliseconds",
            ));
        }
        let max = u64::try_from(max_backoff_ms)
            .ok()
            .filter(|b| *b <= Self::MAX_BACKOFF_MS);
        if max.is_none() {
            errors.push((
                "retry.max_backoff_ms",
                "must be from 0 to 86400000 milliseconds",
            ));
        }
        // A cap below the initial backoff is no contradiction: every delay is the cap. (A
        // rule across two fields is one the OpenAPI document could not state.)
        match (attempts, initial, max) {
            (Some(max_attempts), Some(initial_backoff_ms), Some(max_backoff_ms)) => Ok(Self {
                max_attempts,
                initial_backoff_ms,
                max_backoff_ms,
            }),
            _ => Err(errors),
        }
    }

    /// Backoff before attempt `next_attempt` (2 for the first retry): doubling from the
    /// initial backoff, capped, then scaled by `jitter` in `[0, 1]` ("full jitter" keeps
    /// half the window so retries neither stampede nor collapse to zero).
    pub fn backoff_ms(&self, next_attempt: u32, jitter: f64) -> u64 {
        let exponent = next_attempt.saturating_sub(2).min(32);
        let base = self
            .initial_backoff_ms
            .saturating_mul(1u64 << exponent)
            .min(self.max_backoff_ms);
        let jitter = jitter.clamp(0.0, 1.0);
        let half = base / 2;
        half + (half as f64 * jitter) as u64
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 1_000,
            max_backoff_ms: 60_000,
        }
    }
}

/// Free-form labels on a task: at most 32, each 1–64 printable characters, no duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Tags(Vec<String>);

impl Tags {
    pub const MAX_COUNT: usize = 32;
    pub const MAX_LEN: usize = 64;

    pub fn new(raw: Vec<String>) -> Result<Self, &'static str> {
        if raw.len() > Self::MAX_COUNT {
            return Err("at most 32 tags");
        }
        let mut tags: Vec<String> = Vec::with_capacity(raw.len());
        for tag in raw {
            if tag.is_empty() || tag.chars().count() > Self::MAX_LEN {
                return Err("each tag must be 1 to 64 characters");
            }
            if tag.chars().any(char::is_control) {
                return Err("tags must not contain control characters");
            }
            if !tags.contains(&tag) {
                tags.push(tag);
            }
        }
        Ok(Self(tags))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// A task's place in a concurrency group: at most `limit` tasks of one owner with this
/// `key` are leased or running at once, across every node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Concurrency {
    key: String,
    limit: u32,
}

impl Concurrency {
    pub const MAX_KEY_LEN: usize = 200;
    /// A sane ceiling: a group this large is no limit in practice.
    pub const MAX_LIMIT: u32 = 1000;
    pub const DEFAULT_LIMIT: u32 = 1;

    /// The group of `key` with `limit` (1 when absent); no group without a key. Errors
    /// name their field: `concurrency_key` or `concurrency_limit`.
    pub fn new(
        key: Option<String>,
        limit: Option<i64>,
    ) -> Result<Option<Self>, Vec<(&'static str, &'static str)>> {
        let mut problems = Vec::new();
        let limit = match limit {
            None => Some(Self::DEFAULT_LIMIT),
            Some(_) if key.is_none() => {
                problems.push(("concurrency_limit", "needs a concurrency_key"));
                None
            }
            Some(raw) => match u32::try_from(raw) {
                Ok(n) if (1..=Self::MAX_LIMIT).contains(&n) => Some(n),
                _ => {
                    problems.push(("concurrency_limit", "must be 1 to 1000"));
                    None
                }
            },
        };
        let Some(key) = key else {
            return if problems.is_empty() {
                Ok(None)
            } else {
                Err(problems)
            };
        };
        if key.is_empty() || key.chars().count() > Self::MAX_KEY_LEN {
            problems.insert(0, ("concurrency_key", "must be 1 to 200 characters"));
        } else if key.chars().any(char::is_control) {
            problems.insert(
                0,
                ("concurrency_key", "must not contain control characters"),
            );
        }
        match limit {
            Some(limit) if problems.is_empty() => Ok(Some(Self { key, limit })),
            _ => Err(problems),
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("browser.navigate")]
    #[case("llm.chat")]
    #[case("http.request")]
    #[case("a.b_c.d-e")]
    fn capability_accepts(#[case] raw: &str) {
        assert_eq!(
            Capability::parse(raw).map(|c| c.to_string()),
            Ok(raw.into())
        );
    }

    #[rstest]
    #[case("")]
    #[case("browser")]
    #[case("Browser.Navigate")]
    #[case("browser..navigate")]
    #[case(".browser")]
    #[case("browser.navigate ")]
    #[case("1.x")]
    fn capability_refuses(#[case] raw: &str) {
        assert!(Capability::parse(raw).is_err());
    }

    #[rstest]
    #[case(-1, false)]
    #[case(0, true)]
    #[case(9, true)]
    #[case(10, false)]
    #[case(300, false)]
    fn priority_range(#[case] raw: i64, #[case] ok: bool) {
        assert_eq!(Priority::new(raw).is_ok(), ok);
    }

    #[rstest]
    #[case(-5, false)]
    #[case(0, false)]
    #[case(1, true)]
    #[case(86_400, true)]
    #[case(86_401, false)]
    fn timeout_range(#[case] raw: i64, #[case] ok: bool) {
        assert_eq!(TimeoutSecs::new(raw).is_ok(), ok);
    }

    #[test]
    fn a_cap_below_the_initial_backoff_caps_every_delay() {
        let policy = RetryPolicy::new(3, 5_000, 1_000).unwrap();
        assert_eq!(policy.backoff_ms(2, 1.0), 1_000);
        assert_eq!(policy.backoff_ms(3, 1.0), 1_000);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let policy = RetryPolicy::new(10, 100, 1_000).unwrap();
        assert_eq!(policy.backoff_ms(2, 1.0), 100);
        assert_eq!(policy.backoff_ms(3, 1.0), 200);
        assert_eq!(policy.backoff_ms(4, 1.0), 400);
        assert_eq!(policy.backoff_ms(6, 1.0), 1_000);
        assert_eq!(policy.backoff_ms(60, 1.0), 1_000);
        assert_eq!(policy.backoff_ms(3, 0.0), 100);
    }

    #[test]
    fn tags_deduplicate_and_limit() {
        let tags = Tags::new(vec!["a".into(), "b".into(), "a".into()]).unwrap();
        assert_eq!(tags.as_slice(), ["a", "b"]);
        assert!(Tags::new(vec![String::new()]).is_err());
        assert!(Tags::new((0..33).map(|i| i.to_string()).collect()).is_err());
    }

    #[rstest]
    #[case(Some("example.com"), None, Some(("example.com", 1)))]
    #[case(Some("example.com"), Some(1000), Some(("example.com", 1000)))]
    #[case(None, None, None)]
    fn concurrency_accepts(
        #[case] key: Option<&str>,
        #[case] limit: Option<i64>,
        #[case] expected: Option<(&str, u32)>,
    ) {
        let group = Concurrency::new(key.map(str::to_owned), limit).unwrap();
        assert_eq!(group.as_ref().map(|g| (g.key(), g.limit())), expected);
    }

    #[rstest]
    #[case(Some(String::new()), None, &["concurrency_key"])]
    #[case(Some("x".repeat(201)), None, &["concurrency_key"])]
    #[case(Some("a\nb".to_owned()), None, &["concurrency_key"])]
    #[case(Some("k".to_owned()), Some(0), &["concurrency_limit"])]
    #[case(Some("k".to_owned()), Some(1001), &["concurrency_limit"])]
    #[case(None, Some(2), &["concurrency_limit"])]
    #[case(Some(String::new()), Some(-1), &["concurrency_key", "concurrency_limit"])]
    fn concurrency_refuses(
        #[case] key: Option<String>,
        #[case] limit: Option<i64>,
        #[case] fields: &[&str],
    ) {
        let problems = Concurrency::new(key, limit).unwrap_err();
        let named: Vec<&str> = problems.iter().map(|(field, _)| *field).collect();
        assert_eq!(named, fields);
    }
}
