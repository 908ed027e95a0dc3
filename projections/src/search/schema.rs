//! The fields of a search document in tantivy.

use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, FAST, INDEXED, STORED, STRING,
};

/// Field handles of the search schema.
#[derive(Debug, Clone, Copy)]
pub struct Fields {
    /// `<kind>:<id>`: the term a changed document is deleted by before it is added again.
    pub key: Field,
    pub kind: Field,
    pub id: Field,
    pub owner: Field,
    /// The team the document belongs to now, if any.
    pub team: Field,
    pub status: Field,
    /// Creation time, epoch milliseconds.
    pub time: Field,
    pub title: Field,
    pub body: Field,
    /// The aggregate's state as JSON and the version it reflects: the next event is
    /// folded onto it.
    pub state: Field,
    pub version: Field,
    /// The embedding of title and body, little-endian `f32`s: the vector index is built
    /// from these at start.
    pub vector: Field,
}

impl Fields {
    pub fn schema() -> (Schema, Self) {
        let mut builder = Schema::builder();
        let english = TextOptions::default()
            .set_indexing_options(
                TextFieldIndexing::default()
                    .set_tokenizer("en_stem")
                    .set_index_option(IndexRecordOption::WithFreqsAndPositions),
            )
            .set_stored();
        let fields = Self {
            key: builder.add_text_field("key", STRING | STORED),
            kind: builder.add_text_field("kind", STRING | STORED),
            id: builder.add_text_field("id", STRING | STORED),
            owner: builder.add_text_field("owner", STRING | STORED),
            team: builder.add_text_field("team", STRING | STORED),
            status: builder.add_text_field("status", STRING | STORED),
            time: builder.add_i64_field("time", INDEXED | STORED | FAST),
            title: builder.add_text_field("title", english.clone()),
            body: builder.add_text_field("body", english),
            state: builder.add_bytes_field("state", STORED),
            version: builder.add_i64_field("version", STORED),
            vector: builder.add_bytes_field("vector", STORED),
        };
        (builder.build(), fields)
    }
}
