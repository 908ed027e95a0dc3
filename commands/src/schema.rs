//! JSON Schema fragments for the rules a field's type does not say, so that the OpenAPI
//! document states every rule the validation applies (`scripts/fuzz-api` holds the server
//! to it). Each pattern is the one its value type checks, written for ECMA-262 and Python
//! alike (no `\p{…}` classes).

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{Array, Object};

/// [`crate::values::Capability`]: dot-separated lowercase segments, at most 128 characters.
pub const CAPABILITY_PATTERN: &str = r"^[a-z][a-z0-9_-]*(\.[a-z][a-z0-9_-]*)+$";

/// A name shown to people (agent, API key, display name): no control characters and not
/// only white space (names are trimmed).
pub const NAME_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*[^\s\u0000-\u001f\u007f-\u009f][^\u0000-\u001f\u007f-\u009f]*$";

/// [`crate::values::Tags`]: one tag, no control characters.
pub const TAG_PATTERN: &str = r"^[^\u0000-\u001f\u007f-\u009f]*$";

fn string(pattern: &str, min: Option<usize>, max: usize) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(pattern))
        .min_length(min)
        .max_length(Some(max))
        .build()
}

/// An agent's capabilities: 1–64 of them.
pub fn capabilities() -> Array {
    ArrayBuilder::new()
        .items(string(CAPABILITY_PATTERN, None, 128))
        .min_items(Some(1))
        .max_items(Some(64))
        .build()
}

/// Tags, or `null` for none given: at most 32, each 1–64 characters.
pub fn optional_tags() -> Array {
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(string(TAG_PATTERN, Some(1), 64))
        .max_items(Some(32))
        .build()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::values::{Capability, Tags};
    use regex::Regex;

    fn name_rule(raw: &str) -> bool {
        crate::agent::AgentName::parse(raw).is_ok()
    }

    #[test]
    fn the_patterns_are_the_rules() {
        let capability = Regex::new(CAPABILITY_PATTERN).unwrap();
        for raw in [
            "browser.navigate",
            "a.b-c_d.e9",
            "browser",
            "Browser.x",
            "a..b",
            ".a",
            "a.",
            "",
        ] {
            assert_eq!(
                capability.is_match(raw),
                Capability::parse(raw).is_ok(),
                "{raw:?}"
            );
        }
        let name = Regex::new(NAME_PATTERN).unwrap();
        for raw in [
            "ext", " ext ", "é 😀", "", " ", "\t", "a\u{7}b", "a\u{85}", "\u{a0}",
        ] {
            assert_eq!(name.is_match(raw), name_rule(raw), "{raw:?}");
        }
        let tag = Regex::new(TAG_PATTERN).unwrap();
        for raw in ["demo", "two words", "a\u{0}", "a\u{9f}"] {
            assert_eq!(
                tag.is_match(raw),
                Tags::new(vec![raw.to_owned()]).is_ok(),
                "{raw:?}"
            );
        }
    }
}
