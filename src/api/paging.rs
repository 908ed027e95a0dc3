//! Cursor pagination as API.md's Conventions describe it: `?limit=` (default 50, max 500)
//! and an opaque `?cursor=`, answered as `{"items": [...], "next_cursor": ...}`. Lists are
//! newest first by UUIDv7 id, so the cursor is the last id of the page.

use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::ApiError;

/// `limit` when the client gives none.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest `limit` a client may ask for.
pub const MAX_LIMIT: u32 = 500;

/// One page of a list; `next_cursor` is `null` on the last.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T: ToSchema> {
    #[schema(schema_with = references::<T>)]
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// An array of `$ref`s to `T`: utoipa 5 would inline `T` in every `Page_T`.
fn references<T: ToSchema>() -> utoipa::openapi::Array {
    utoipa::openapi::Array::new(utoipa::openapi::Ref::from_schema_name(T::name()))
}

/// A validated `limit` and `cursor`.
#[derive(Debug, Clone, Copy)]
pub struct Paging {
    pub limit: u32,
    /// Only items older than this one.
    pub before_id: Option<Uuid>,
}

impl Paging {
    pub fn parse(limit: Option<u32>, cursor: Option<&str>) -> Result<Self, ApiError> {
        let limit = match limit {
            None => DEFAULT_LIMIT,
            Some(limit @ 1..=MAX_LIMIT) => limit,
            Some(_) => {
                return Err(ApiError::validation(
                    "limit",
                    format!("must be from 1 to {MAX_LIMIT}"),
                ))
            }
        };
        // Exactly the form `next_cursor` takes (the pattern the document gives).
        let before_id = cursor
            .map(|cursor| {
                Uuid::try_parse(cursor)
                    .ok()
                    .filter(|id| id.hyphenated().to_string() == cursor)
                    .ok_or_else(|| ApiError::validation("cursor", "is not a cursor from this API"))
            })
            .transpose()?;
        Ok(Self { limit, before_id })
    }

    /// How many rows to read: one more than the page, to know whether another follows.
    pub fn fetch(&self) -> u32 {
        self.limit + 1
    }

    /// The page from rows read with [`Paging::fetch`], newest first.
    pub fn page<R, T: ToSchema>(
        &self,
        rows: impl IntoIterator<Item = R>,
        view: impl FnMut(R) -> Option<T>,
        id: impl Fn(&T) -> Uuid,
    ) -> Page<T> {
        let mut items: Vec<T> = rows.into_iter().filter_map(view).collect();
        let has_more = items.len() > self.limit as usize;
        items.truncate(self.limit as usize);
        let next_cursor = if has_more {
            items.last().map(|item| id(item).to_string())
        } else {
            None
        };
        Page { items, next_cursor }
    }
}
