//! Auth requests (register, login, refresh, API keys) and the validated values inside them.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ValidationErrors;

/// Longest password accepted: argon2 cost grows with input, so an unbounded password is a
/// denial-of-service lever.
pub const PASSWORD_MAX_CHARS: usize = 1024;
pub const PASSWORD_MIN_CHARS: usize = 8;
/// Refresh tokens are produced by the server; anything longer is not one of ours.
pub const REFRESH_TOKEN_MAX_LEN: usize = 4096;

/// An email address, trimmed and lowercased so that one mailbox has one spelling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;
    pub const MAX_LOCAL_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let email = raw.trim().to_lowercase();
        if email.is_empty() {
            return Err("must not be empty");
        }
        if email.chars().count() > Self::MAX_LEN {
            return Err("must be at most 254 characters");
        }
        if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("must not contain spaces or control characters");
        }
        let Some((local, domain)) = email.split_once('@') else {
            return Err("must contain an @");
        };
        if domain.contains('@') {
            return Err("must contain exactly one @");
        }
        if local.is_empty() || local.chars().count() > Self::MAX_LOCAL_LEN {
            return Err("the part before @ must be 1 to 64 characters");
        }
        if domain.is_empty()
            || domain.starts_with('.')
            || domain.ends_with('.')
            || domain.contains("..")
        {
            return Err("must have a domain after @");
        }
        Ok(Self(email))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The mailbox name, the part before `@`.
    pub fn local_part(&self) -> &str {
        self.0
            .split_once('@')
            .map_or(self.0.as_str(), |(local, _)| local)
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A name shown to people: 1–100 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisplayName(String);

impl DisplayName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        bounded_name(raw, Self::MAX_LEN).map(Self)
    }

    /// The default for a user who gave none: the part of the email before `@`.
    pub fn from_email(email: &Email) -> Self {
        // Email's local part is at most 64 characters without control characters, so it
        // always passes `parse`; the cut is only a guard against that rule changing.
        Self(email.local_part().chars().take(Self::MAX_LEN).collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DisplayName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a user may do: `user` (own resources), `auditor` (read everything, write nothing),
/// `admin`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    User,
    Auditor,
    Admin,
}

impl Role {
    pub const ALL: [Self; 3] = [Self::User, Self::Auditor, Self::Admin];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Auditor => "auditor",
            Self::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = &'static str;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|role| role.as_str() == raw)
            .ok_or("must be one of user, auditor, admin")
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An argon2 hash in PHC string form (`$argon2id$v=19$...`), computed by the runtime.
/// Checked so that a plain password can never be stored by mistake in its place.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PasswordHash(String);

impl PasswordHash {
    pub const MAX_LEN: usize = 512;

    pub fn from_phc(phc: impl Into<String>) -> Result<Self, &'static str> {
        let phc = phc.into();
        if !phc.starts_with("$argon2") || phc.matches('$').count() < 4 {
            return Err("must be an argon2 PHC string");
        }
        if phc.len() > Self::MAX_LEN || !phc.chars().all(|c| c.is_ascii_graphic()) {
            return Err("must be an argon2 PHC string");
        }
        Ok(Self(phc))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Redacted: a hash in a log is an offline cracking target.
impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PasswordHash(<redacted>)")
    }
}

/// The name a user gives an API key: 1–100 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKeyName(String);

impl ApiKeyName {
    pub const MAX_LEN: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        bounded_name(raw, Self::MAX_LEN).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiKeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The public part of an API key by which the runtime finds it: 1–64 of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ApiKeyPrefix(String);

impl ApiKeyPrefix {
    pub const MAX_LEN: usize = 64;

    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN {
            return Err("must be 1 to 64 characters");
        }
        if !raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err("must contain only letters, digits, `_` and `-`");
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ApiKeyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The HMAC-SHA256 of an API key's secret, 64 lowercase hex digits, computed by the
/// runtime. Checked so that the secret itself can never be stored in its place.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretHash(String);

impl SecretHash {
    pub const LEN: usize = 64;

    pub fn from_hex(hex: impl Into<String>) -> Result<Self, &'static str> {
        let hex = hex.into();
        if hex.len() != Self::LEN || !hex.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')) {
            return Err("must be 64 lowercase hex digits");
        }
        Ok(Self(hex))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(<redacted>)")
    }
}

/// `POST /api/auth/register` as the client sends it.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    #[schema(format = Email, max_length = 254)]
    pub email: String,
    #[schema(format = Password, min_length = 8, max_length = 1024)]
    pub password: String,
    /// The part of `email` before `@` when absent; trimmed, no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub display_name: Option<String>,
}

/// A registration within the rules. The password is kept only so the runtime can hash it.
#[derive(Clone, PartialEq, Eq)]
pub struct Registration {
    pub email: Email,
    pub password: String,
    pub display_name: DisplayName,
}

impl RegisterRequest {
    pub fn validate(self) -> Result<Registration, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let email = errors.check("email", Email::parse(&self.email));
        errors.check("password", check_password(&self.password));
        let display_name = match self.display_name.as_deref() {
            Some(raw) => errors.check("display_name", DisplayName::parse(raw)),
            None => email.as_ref().map(DisplayName::from_email),
        };
        match (email, display_name) {
            (Some(email), Some(display_name)) if errors.is_empty() => Ok(Registration {
                email,
                password: self.password,
                display_name,
            }),
            _ => Err(errors),
        }
    }
}

/// `POST /api/auth/login` as the client sends it.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(format = Email)]
    pub email: String,
    #[schema(format = Password, min_length = 1, max_length = 1024)]
    pub password: String,
}

/// Login credentials with the email normalized for lookup.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    pub email: Email,
    pub password: String,
}

impl LoginRequest {
    /// Only the upper bound applies to the password: one set under an older, shorter
    /// minimum must still be able to log in.
    pub fn validate(self) -> Result<Login, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let email = errors.check("email", Email::parse(&self.email));
        if self.password.is_empty() || self.password.chars().count() > PASSWORD_MAX_CHARS {
            errors.push("password", "must be 1 to 1024 characters");
        }
        match email {
            Some(email) if errors.is_empty() => Ok(Login {
                email,
                password: self.password,
            }),
            _ => Err(errors),
        }
    }
}

/// `POST /api/auth/refresh` and `/api/auth/logout` as the client sends them.
#[derive(Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(min_length = 1, max_length = 4096)]
    pub refresh_token: String,
}

impl RefreshRequest {
    /// The token, bounded; its signature and contents are for the runtime to check.
    pub fn validate(self) -> Result<String, ValidationErrors> {
        if self.refresh_token.is_empty() || self.refresh_token.len() > REFRESH_TOKEN_MAX_LEN {
            return Err(ValidationErrors::single(
                "refresh_token",
                "must be 1 to 4096 characters",
            ));
        }
        Ok(self.refresh_token)
    }
}

/// `POST /api/users/me/api-keys` as the client sends it.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKeyRequest {
    /// Trimmed; no control characters.
    #[schema(
        min_length = 1,
        max_length = 100,
        pattern = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$"
    )]
    pub name: String,
    /// The key stops working then; never when absent.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key as it may be issued. Whether `expires_at` is in the future is decided by the
/// ApiKey aggregate, which is given the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewApiKey {
    pub name: ApiKeyName,
    pub expires_at: Option<DateTime<Utc>>,
}

impl NewApiKeyRequest {
    pub fn validate(self) -> Result<NewApiKey, ValidationErrors> {
        let mut errors = ValidationErrors::default();
        let name = errors.check("name", ApiKeyName::parse(&self.name));
        let expires_at = self.expires_at;
        match name {
            Some(name) if errors.is_empty() => Ok(NewApiKey { name, expires_at }),
            _ => Err(errors),
        }
    }
}

fn check_password(password: &str) -> Result<(), &'static str> {
    let chars = password.chars().count();
    if !(PASSWORD_MIN_CHARS..=PASSWORD_MAX_CHARS).contains(&chars) {
        return Err("must be 8 to 1024 characters");
    }
    Ok(())
}

fn bounded_name(raw: &str, max_len: usize) -> Result<String, &'static str> {
    let name = raw.trim();
    // The length as sent, as the document's `maxLength` counts it.
    if name.is_empty() || raw.chars().count() > max_len {
        return Err("must be 1 to 100 characters");
    }
    // As sent: trimming would drop a trailing control character (NEL, tab) unseen.
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(name.to_owned())
}

// Requests and results that hold a password or token print it redacted, so that a
// `tracing` field or a panic message can never leak one.

impl fmt::Debug for RegisterRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegisterRequest")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .field("display_name", &self.display_name)
            .finish()
    }
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .field("display_name", &self.display_name)
            .finish()
    }
}

impl fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginRequest")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("email", &self.email)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl fmt::Debug for RefreshRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshRequest")
            .field("refresh_token", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;
    use serde_json::json;

    fn fields(errors: &ValidationErrors) -> Vec<&str> {
        errors.0.iter().map(|e| e.field.as_str()).collect()
    }

    #[rstest]
    #[case("ada@example.com", "ada@example.com")]
    #[case("  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com")]
    #[case("a+tag@sub.example.org", "a+tag@sub.example.org")]
    #[case("root@localhost", "root@localhost")]
    fn email_accepts(#[case] raw: &str, #[case] normalized: &str) {
        assert_eq!(
            Email::parse(raw).map(|e| e.to_string()),
            Ok(normalized.into())
        );
    }

    #[rstest]
    #[case::empty("")]
    #[case::blank("   ")]
    #[case::no_at("ada.example.com")]
    #[case::two_ats("ada@lovelace@example.com")]
    #[case::empty_local("@example.com")]
    #[case::empty_domain("ada@")]
    #[case::dot_domain("ada@.example.com")]
    #[case::trailing_dot("ada@example.com.")]
    #[case::double_dot("ada@example..com")]
    #[case::inner_space("ada lovelace@example.com")]
    #[case::control("ada\u{7}@example.com")]
    #[case::newline("ada@example.com\nbcc:x@y.z")]
    fn email_refuses(#[case] raw: &str) {
        assert!(Email::parse(raw).is_err());
    }

    #[test]
    fn email_length_is_bounded() {
        let at_limit = format!("{}@{}.com", "a".repeat(64), "b".repeat(185));
        assert_eq!(at_limit.len(), 254);
        assert!(Email::parse(&at_limit).is_ok());
        let too_long = format!("{}@{}.com", "a".repeat(64), "b".repeat(186));
        assert!(Email::parse(&too_long).is_err());
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(Email::parse(&long_local).is_err());
    }

    #[rstest]
    #[case("Ada", true)]
    #[case("  Ada Lovelace  ", true)]
    #[case("Zoë 🦀", true)]
    #[case("", false)]
    #[case("   ", false)]
    #[case("tab\there", false)]
    fn display_name_rules(#[case] raw: &str, #[case] ok: bool) {
        assert_eq!(DisplayName::parse(raw).is_ok(), ok);
    }

    #[test]
    fn display_name_length_is_in_characters() {
        assert!(DisplayName::parse(&"é".repeat(100)).is_ok());
        assert!(DisplayName::parse(&"é".repeat(101)).is_err());
    }

    #[rstest]
    #[case("user", Role::User)]
    #[case("auditor", Role::Auditor)]
    #[case("admin", Role::Admin)]
    fn role_parses_and_serializes(#[case] raw: &str, #[case] role: Role) {
        assert_eq!(raw.parse::<Role>(), Ok(role));
        assert_eq!(serde_json::to_value(role).expect("serializes"), json!(raw));
        assert_eq!(role.to_string(), raw);
    }

    #[rstest]
    #[case("Admin")]
    #[case("root")]
    #[case("")]
    fn role_refuses(#[case] raw: &str) {
        assert!(raw.parse::<Role>().is_err());
    }

    #[rstest]
    #[case("$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNo", true)]
    #[case("hunter2hunter2", false)]
    #[case("$argon2id$v=19 $m=1$a$b", false)]
    #[case("$argon2id$", false)]
    #[case("$2b$12$abcdefghijklmnopqrstuv", false)]
    fn password_hash_must_be_argon2_phc(#[case] raw: &str, #[case] ok: bool) {
        assert_eq!(PasswordHash::from_phc(raw).is_ok(), ok);
    }

    #[rstest]
    #[case(&"ab".repeat(32), true)]
    #[case(&"AB".repeat(32), false)]
    #[case(&"ab".repeat(31), false)]
    #[case(&"zz".repeat(32), false)]
    fn secret_hash_must_be_hex_sha256(#[case] raw: &str, #[case] ok: bool) {
        assert_eq!(SecretHash::from_hex(raw).is_ok(), ok);
    }

    #[rstest]
    #[case("chr_AbC123", true)]
    #[case("k-1", true)]
    #[case("", false)]
    #[case("has space", false)]
    #[case("dot.ted", false)]
    fn api_key_prefix_rules(#[case] raw: &str, #[case] ok: bool) {
        assert_eq!(ApiKeyPrefix::parse(raw).is_ok(), ok);
    }

    #[rstest]
    #[case("laptop", true)]
    #[case(" CI key ", true)]
    #[case("", false)]
    #[case(" ", false)]
    #[case("bell\u{7}", false)]
    fn api_key_name_rules(#[case] raw: &str, #[case] ok: bool) {
        assert_eq!(ApiKeyName::parse(raw).is_ok(), ok);
    }

    #[test]
    fn api_key_name_is_at_most_100_characters() {
        assert!(ApiKeyName::parse(&"k".repeat(100)).is_ok());
        assert!(ApiKeyName::parse(&"k".repeat(101)).is_err());
    }

    fn register(body: serde_json::Value) -> RegisterRequest {
        serde_json::from_value(body).expect("a register request")
    }

    #[test]
    fn registration_normalizes_and_defaults_display_name() {
        let registration = register(json!({
            "email": " Ada@Example.com ",
            "password": "correct horse",
        }))
        .validate()
        .expect("valid");
        assert_eq!(registration.email.as_str(), "ada@example.com");
        assert_eq!(registration.display_name.as_str(), "ada");
        assert_eq!(registration.password, "correct horse");
    }

    #[test]
    fn registration_keeps_a_given_display_name() {
        let registration = register(json!({
            "email": "ada@example.com",
            "password": "correct horse",
            "display_name": " Ada Lovelace ",
        }))
        .validate()
        .expect("valid");
        assert_eq!(registration.display_name.as_str(), "Ada Lovelace");
    }

    #[rstest]
    #[case::seven_chars("1234567", false)]
    #[case::eight_chars("12345678", true)]
    #[case::eight_multibyte("éééééééé", true)]
    #[case::max(&"p".repeat(1024), true)]
    #[case::over_max(&"p".repeat(1025), false)]
    fn registration_password_length(#[case] password: &str, #[case] ok: bool) {
        let result = register(json!({"email": "ada@example.com", "password": password})).validate();
        assert_eq!(result.is_ok(), ok);
        if let Err(errors) = result {
            assert_eq!(fields(&errors), ["password"]);
        }
    }

    #[test]
    fn registration_names_every_bad_field() {
        let errors = register(json!({
            "email": "not-an-email",
            "password": "short",
            "display_name": "",
        }))
        .validate()
        .expect_err("invalid");
        assert_eq!(fields(&errors), ["email", "password", "display_name"]);
    }

    #[test]
    fn registration_refuses_unknown_fields() {
        let parsed: Result<RegisterRequest, _> = serde_json::from_value(json!({
            "email": "ada@example.com",
            "password": "correct horse",
            "roles": ["admin"],
        }));
        assert!(parsed.is_err());
    }

    #[test]
    fn passwords_and_tokens_are_never_debug_printed() {
        let request = register(json!({"email": "ada@example.com", "password": "s3cret-pass"}));
        assert!(!format!("{request:?}").contains("s3cret-pass"));
        let registration = request.validate().expect("valid");
        assert!(!format!("{registration:?}").contains("s3cret-pass"));
        let login: LoginRequest =
            serde_json::from_value(json!({"email": "ada@example.com", "password": "s3cret-pass"}))
                .expect("a login request");
        assert!(!format!("{login:?}").contains("s3cret-pass"));
        assert!(!format!("{:?}", login.validate().expect("valid")).contains("s3cret-pass"));
        let refresh: RefreshRequest =
            serde_json::from_value(json!({"refresh_token": "tok-s3cret"})).expect("a request");
        assert!(!format!("{refresh:?}").contains("tok-s3cret"));
        let phc = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
        let hash = PasswordHash::from_phc(phc).expect("valid");
        assert!(!format!("{hash:?}").contains("c2FsdA"));
    }

    #[rstest]
    #[case::ok(json!({"email": "Ada@Example.com", "password": "short"}), &[])]
    #[case::bad_email(json!({"email": "nope", "password": "correct horse"}), &["email"])]
    #[case::empty_password(json!({"email": "ada@example.com", "password": ""}), &["password"])]
    fn login_validation(#[case] body: serde_json::Value, #[case] bad: &[&str]) {
        let request: LoginRequest = serde_json::from_value(body).expect("a login request");
        match request.validate() {
            Ok(login) => {
                assert!(bad.is_empty());
                assert_eq!(login.email.as_str(), "ada@example.com");
            }
            Err(errors) => assert_eq!(fields(&errors), bad),
        }
    }

    #[test]
    fn login_refuses_unknown_fields() {
        let parsed: Result<LoginRequest, _> =
            serde_json::from_value(json!({"email": "a@b.c", "password": "x", "otp": "1"}));
        assert!(parsed.is_err());
    }

    #[rstest]
    #[case("abc.def.ghi", true)]
    #[case("", false)]
    #[case(&"t".repeat(4097), false)]
    fn refresh_token_is_bounded(#[case] token: &str, #[case] ok: bool) {
        let request: RefreshRequest =
            serde_json::from_value(json!({"refresh_token": token})).expect("a refresh request");
        assert_eq!(request.validate().is_ok(), ok);
    }

    #[test]
    fn new_api_key_validates_name_and_keeps_expiry() {
        let request: NewApiKeyRequest = serde_json::from_value(json!({
            "name": " laptop ",
            "expires_at": "2030-01-01T00:00:00Z",
        }))
        .expect("a new key request");
        let key = request.validate().expect("valid");
        assert_eq!(key.name.as_str(), "laptop");
        assert!(key.expires_at.is_some());

        let request: NewApiKeyRequest =
            serde_json::from_value(json!({"name": ""})).expect("a new key request");
        assert_eq!(fields(&request.validate().expect_err("invalid")), ["name"]);

        let parsed: Result<NewApiKeyRequest, _> =
            serde_json::from_value(json!({"name": "x", "scopes": []}));
        assert!(parsed.is_err());
    }
}
