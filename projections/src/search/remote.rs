//! The `openai` and `ollama` embedders: a remote server turns texts into vectors.
//!
//! - `openai`: any OpenAI-compatible `POST {base}/v1/embeddings` `{model, input: [..],
//!   dimensions?}` → `{data: [{embedding, index}]}` (the answer's `index` orders it), with
//!   `Authorization: Bearer <key>` when a key is set.
//! - `ollama`: `POST {base}/api/embed` `{model, input: [..]}` → `{embeddings: [[..]]}`.
//!
//! Texts go `batch_size` per request. Each request has a connect and a total timeout; a 429
//! or 5xx answer, or a failed connection, is tried again up to `max_retries` times with
//! doubling backoff (half to all of it, at random), or after the server's `Retry-After`,
//! never longer than `max_backoff`. Any other failure — a 4xx, an answer that is not the
//! wire format, a vector of another length than the configured dimensions, or the retries
//! used up — is an error for the whole call: the search projection then writes nothing of
//! that batch and tries the same events again later (see `SearchIndex::stalled`).

use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::HeaderMap;
use reqwest::{Client, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::builtin::normalise;
use super::embedder::Embedder;
use crate::backoff::Backoff;
use crate::feed::BoxError;

/// The wire format a remote embedder speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Ollama,
}

impl Wire {
    pub fn provider(self) -> &'static str {
        match self {
            Self::OpenAi => "openai",
            Self::Ollama => "ollama",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::OpenAi => "v1/embeddings",
            Self::Ollama => "api/embed",
        }
    }
}

/// How to reach a remote embedder (no `Debug`: it holds the API key).
#[derive(Clone)]
pub struct RemoteSettings {
    pub wire: Wire,
    /// The server's root, e.g. `https://api.openai.com` or `http://127.0.0.1:11434`.
    pub base_url: String,
    pub model: String,
    pub api_key: Option<String>,
    /// The vectors' length; asked of the server once (one short text) when unset.
    pub dimensions: Option<usize>,
    pub batch_size: usize,
    pub connect_timeout: Duration,
    pub timeout: Duration,
    pub max_retries: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Why a remote embedder gave no vectors.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("the {provider} embeddings server at {url} cannot be reached: {message}")]
    Transport {
        provider: &'static str,
        url: String,
        message: String,
    },
    #[error("the {provider} embeddings server answered {status} after {retries} retries: {body}")]
    Status {
        provider: &'static str,
        status: u16,
        retries: u32,
        body: String,
    },
    #[error("the {provider} embeddings server's answer is not its wire format: {message}")]
    Malformed {
        provider: &'static str,
        message: String,
    },
    #[error(
        "the {provider} embeddings server answered a vector of {got} dimensions, \
         {want} configured (CHRONICLE_EMBEDDINGS__DIMENSIONS)"
    )]
    Dimensions {
        provider: &'static str,
        got: usize,
        want: usize,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// A remote embedder; cheap to clone.
#[derive(Clone)]
pub struct RemoteEmbedder {
    settings: RemoteSettings,
    url: String,
    client: Client,
    id: String,
    dimension: usize,
}

impl RemoteEmbedder {
    /// An embedder for `settings`; asks the server for one vector when the dimensions are
    /// not configured (and fails when it cannot).
    pub async fn connect(settings: RemoteSettings) -> Result<Self, RemoteError> {
        let client = Client::builder()
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.timeout)
            .build()
            .map_err(|e| RemoteError::Client(e.to_string()))?;
        let url = format!(
            "{}/{}",
            settings.base_url.trim_end_matches('/'),
            settings.wire.path()
        );
        let mut embedder = Self {
            url,
            client,
            id: String::new(),
            dimension: settings.dimensions.unwrap_or(0),
            settings,
        };
        if embedder.dimension == 0 {
            let probe = embedder.request(&["dimension probe".to_owned()]).await?;
            embedder.dimension = probe.first().map_or(0, Vec::len);
            if embedder.dimension == 0 {
                return Err(RemoteError::Malformed {
                    provider: embedder.provider(),
                    message: "an empty vector".into(),
                });
            }
        }
        embedder.id = format!(
            "{}:{}-{}",
            embedder.settings.wire.provider(),
            embedder.settings.model,
            embedder.dimension
        );
        Ok(embedder)
    }

    fn provider(&self) -> &'static str {
        self.settings.wire.provider()
    }

    /// The vectors of one batch, retried on 429, 5xx and failed connections.
    async fn request(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, RemoteError> {
        let body = match self.settings.wire {
            Wire::OpenAi => match self.settings.dimensions {
                Some(d) => json!({"model": self.settings.model, "input": texts, "dimensions": d}),
                None => json!({"model": self.settings.model, "input": texts}),
            },
            Wire::Ollama => json!({"model": self.settings.model, "input": texts}),
        };
        let mut retry = 0;
        loop {
            let mut request = self.client.post(&self.url).json(&body);
            if let Some(key) = &self.settings.api_key {
                request = request.bearer_auth(key);
            }
            let (again, delay, failure) = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    let answer = response.bytes().await.map_err(|e| self.transport(&e))?;
                    return self.vectors_of(&answer, texts.len());
                }
                Ok(response) => {
                    let status = response.status();
                    let again = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
                    let delay = self.delay(retry, response.headers());
                    let text = response.text().await.unwrap_or_default();
                    let failure = RemoteError::Status {
                        provider: self.provider(),
                        status: status.as_u16(),
                        retries: retry,
                        body: text.chars().take(300).collect(),
                    };
                    (again, delay, failure)
                }
                Err(error) => (
                    error.is_connect() || error.is_timeout(),
                    self.delay(retry, &HeaderMap::new()),
                    self.transport(&error),
                ),
            };
            if !again || retry >= self.settings.max_retries {
                return Err(failure);
            }
            tracing::info!(
                provider = self.provider(),
                %failure,
                retry = retry + 1,
                delay_ms = delay.as_millis() as u64,
                "the embeddings server failed; retrying"
            );
            tokio::time::sleep(delay).await;
            retry += 1;
        }
    }

    fn transport(&self, error: &reqwest::Error) -> RemoteError {
        RemoteError::Transport {
            provider: self.provider(),
            url: self.url.clone(),
            message: error.to_string(),
        }
    }

    /// The wait before retry number `retry + 1` ([`Backoff`]).
    fn delay(&self, retry: u32, headers: &HeaderMap) -> Duration {
        let backoff = Backoff {
            initial: self.settings.initial_backoff,
            max: self.settings.max_backoff,
        };
        backoff.delay(retry, headers, rand::random::<f64>())
    }

    /// The vectors in an answer, in input order, normalised, each checked for length.
    fn vectors_of(&self, answer: &[u8], count: usize) -> Result<Vec<Vec<f32>>, RemoteError> {
        let malformed = |message: String| RemoteError::Malformed {
            provider: self.provider(),
            message,
        };
        let mut vectors = match self.settings.wire {
            Wire::OpenAi => {
                #[derive(Deserialize)]
                struct Item {
                    embedding: Vec<f32>,
                    index: usize,
                }
                #[derive(Deserialize)]
                struct Answer {
                    data: Vec<Item>,
                }
                let answer: Answer =
                    serde_json::from_slice(answer).map_err(|e| malformed(e.to_string()))?;
                let mut slots: Vec<Option<Vec<f32>>> = vec![None; count];
                for item in answer.data {
                    match slots.get_mut(item.index) {
                        Some(slot) if slot.is_none() => *slot = Some(item.embedding),
                        _ => {
                            return Err(malformed(format!(
                                "index {} is out of range or repeated",
                                item.index
                            )))
                        }
                    }
                }
                slots
                    .into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| malformed(format!("fewer than {count} embeddings")))?
            }
            Wire::Ollama => {
                #[derive(Deserialize)]
                struct Answer {
                    embeddings: Vec<Vec<f32>>,
                }
                let answer: Answer =
                    serde_json::from_slice(answer).map_err(|e| malformed(e.to_string()))?;
                answer.embeddings
            }
        };
        if vectors.len() != count {
            return Err(malformed(format!(
                "{} embeddings for {count} texts",
                vectors.len()
            )));
        }
        let want = self
            .settings
            .dimensions
            .or(Some(self.dimension).filter(|d| *d > 0));
        for vector in &mut vectors {
            if let Some(want) = want {
                if vector.len() != want {
                    return Err(RemoteError::Dimensions {
                        provider: self.provider(),
                        got: vector.len(),
                        want,
                    });
                }
            }
            if vector.iter().any(|v| !v.is_finite()) {
                return Err(malformed(
                    "a vector holds a value that is not a number".into(),
                ));
            }
            normalise(vector);
        }
        Ok(vectors)
    }
}

#[async_trait]
impl Embedder for RemoteEmbedder {
    fn id(&self) -> &str {
        &self.id
    }

    fn dimension(&self) -> usize {
        self.dimension
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, BoxError> {
        let mut vectors = Vec::with_capacity(texts.len());
        for batch in texts.chunks(self.settings.batch_size.max(1)) {
            vectors.extend(self.request(batch).await?);
        }
        Ok(vectors)
    }
}

#[cfg(test)]
mod tests {
    //! Against a local HTTP server speaking each wire format.

    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap as Headers, StatusCode as Status};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};
    use reqwest::header::RETRY_AFTER;
    use serde_json::Value;

    use super::*;

    /// One answer of the fake server: a status, a `Retry-After`, a body.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        retry_after: Option<&'static str>,
        body: Value,
    }

    fn ok(body: Value) -> Reply {
        Reply {
            status: 200,
            retry_after: None,
            body,
        }
    }

    fn status(status: u16, retry_after: Option<&'static str>) -> Reply {
        Reply {
            status,
            retry_after,
            body: json!({"error": {"message": "not now"}}),
        }
    }

    /// What the fake server saw, and what it answers next (the last reply repeats).
    #[derive(Default)]
    struct Fake {
        replies: Mutex<VecDeque<Reply>>,
        requests: Mutex<Vec<(Option<String>, Value)>>,
    }

    impl Fake {
        fn requests(&self) -> Vec<(Option<String>, Value)> {
            self.requests.lock().unwrap().clone()
        }
    }

    async fn answer(
        State(fake): State<Arc<Fake>>,
        headers: Headers,
        Json(body): Json<Value>,
    ) -> Response {
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        fake.requests.lock().unwrap().push((auth, body));
        let reply = {
            let mut replies = fake.replies.lock().unwrap();
            if replies.len() > 1 {
                replies.pop_front().unwrap()
            } else {
                replies.front().cloned().unwrap()
            }
        };
        let mut response =
            (Status::from_u16(reply.status).unwrap(), Json(reply.body)).into_response();
        if let Some(after) = reply.retry_after {
            response
                .headers_mut()
                .insert("retry-after", after.parse().unwrap());
        }
        response
    }

    /// A server answering `replies` in turn on both wire formats' paths; its root URL.
    async fn serve(replies: Vec<Reply>) -> (String, Arc<Fake>) {
        let fake = Arc::new(Fake {
            replies: Mutex::new(replies.into()),
            requests: Mutex::default(),
        });
        let app = Router::new()
            .route("/v1/embeddings", post(answer))
            .route("/api/embed", post(answer))
            .with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}/"), fake)
    }

    fn settings(wire: Wire, base_url: String, dimensions: Option<usize>) -> RemoteSettings {
        RemoteSettings {
            wire,
            base_url,
            model: "test-model".into(),
            api_key: Some("sk-test".into()),
            dimensions,
            batch_size: 2,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            max_retries: 2,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        }
    }

    fn texts(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("text {i}")).collect()
    }

    /// An OpenAI answer for `n` texts, in reverse order (the `index` says which is which):
    /// text i gets [i + 1, 0, 0].
    fn openai_answer(first: usize, n: usize) -> Value {
        let data: Vec<Value> = (0..n)
            .rev()
            .map(|i| json!({"object": "embedding", "index": i, "embedding": [(first + i + 1) as f32, 0.0, 0.0]}))
            .collect();
        json!({"object": "list", "data": data, "model": "test-model",
               "usage": {"prompt_tokens": 4, "total_tokens": 4}})
    }

    #[tokio::test]
    async fn openai_batches_orders_by_index_normalises_and_sends_the_key() {
        let (url, fake) = serve(vec![ok(openai_answer(0, 2)), ok(openai_answer(2, 1))]).await;
        let embedder = RemoteEmbedder::connect(settings(Wire::OpenAi, url, Some(3)))
            .await
            .unwrap();
        assert_eq!(embedder.id(), "openai:test-model-3");
        let vectors = embedder.embed(&texts(3)).await.unwrap();
        // Each [k, 0, 0] normalised is [1, 0, 0]; the order is checked through the requests.
        assert_eq!(vectors, vec![vec![1.0, 0.0, 0.0]; 3]);
        let requests = fake.requests();
        assert_eq!(requests.len(), 2, "batches of 2");
        assert_eq!(requests[0].0.as_deref(), Some("Bearer sk-test"));
        assert_eq!(
            requests[0].1,
            json!({"model": "test-model", "input": ["text 0", "text 1"], "dimensions": 3})
        );
        assert_eq!(requests[1].1["input"], json!(["text 2"]));
    }

    #[tokio::test]
    async fn openai_answers_are_put_in_input_order() {
        let data = json!({"data": [
            {"index": 1, "embedding": [0.0, 2.0]},
            {"index": 0, "embedding": [3.0, 0.0]},
        ]});
        let (url, _) = serve(vec![ok(data)]).await;
        let embedder = RemoteEmbedder::connect(settings(Wire::OpenAi, url, Some(2)))
            .await
            .unwrap();
        let vectors = embedder.embed(&texts(2)).await.unwrap();
        assert_eq!(vectors, vec![vec![1.0, 0.0], vec![0.0, 1.0]]);
    }

    #[tokio::test]
    async fn ollama_speaks_api_embed_and_asks_the_dimensions_once() {
        let (url, fake) = serve(vec![
            ok(json!({"model": "test-model", "embeddings": [[0.0, 0.0, 0.0, 2.0]]})),
            ok(json!({"model": "test-model", "embeddings": [[0.0, 4.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]]})),
        ])
        .await;
        let mut config = settings(Wire::Ollama, url, None);
        config.api_key = None;
        let embedder = RemoteEmbedder::connect(config).await.unwrap();
        assert_eq!(embedder.dimension(), 4);
        assert_eq!(embedder.id(), "ollama:test-model-4");
        let vectors = embedder.embed(&texts(2)).await.unwrap();
        assert_eq!(
            vectors,
            vec![vec![0.0, 1.0, 0.0, 0.0], vec![1.0, 0.0, 0.0, 0.0]]
        );
        let requests = fake.requests();
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].0, None, "no key, no Authorization");
        assert_eq!(
            requests[0].1,
            json!({"model": "test-model", "input": ["dimension probe"]})
        );
        assert_eq!(
            requests[1].1,
            json!({"model": "test-model", "input": ["text 0", "text 1"]})
        );
    }

    #[tokio::test]
    async fn a_429_is_retried_after_its_retry_after() {
        let (url, fake) = serve(vec![status(429, Some("0")), ok(openai_answer(0, 1))]).await;
        let mut config = settings(Wire::OpenAi, url, Some(3));
        // Without the server's Retry-After: 0 this would wait an hour.
        config.initial_backoff = Duration::from_secs(3_600);
        config.max_backoff = Duration::from_secs(3_600);
        let embedder = RemoteEmbedder::connect(config).await.unwrap();
        let vectors = embedder.embed(&texts(1)).await.unwrap();
        assert_eq!(vectors.len(), 1);
        assert_eq!(fake.requests().len(), 2);
    }

    #[test]
    fn a_retry_after_is_capped_by_the_settings() {
        let mut headers = HeaderMap::new();
        let embedder = RemoteEmbedder {
            settings: settings(Wire::OpenAi, "http://127.0.0.1:9".into(), Some(3)),
            url: String::new(),
            client: Client::new(),
            id: String::new(),
            dimension: 3,
        };
        headers.insert(RETRY_AFTER, "120".parse().unwrap());
        assert_eq!(embedder.delay(0, &headers), Duration::from_millis(5));
    }

    #[tokio::test]
    async fn a_500_for_good_is_a_clear_error_after_the_retries() {
        let (url, fake) = serve(vec![status(500, None)]).await;
        let embedder = RemoteEmbedder::connect(settings(Wire::Ollama, url, Some(3)))
            .await
            .unwrap();
        let error = embedder.embed(&texts(1)).await.unwrap_err().to_string();
        assert!(
            error.contains("the ollama embeddings server answered 500 after 2 retries"),
            "{error}"
        );
        assert_eq!(fake.requests().len(), 3, "one try and two retries");
    }

    #[tokio::test]
    async fn a_4xx_is_not_retried() {
        let (url, fake) = serve(vec![status(401, None)]).await;
        let embedder = RemoteEmbedder::connect(settings(Wire::OpenAi, url, Some(3)))
            .await
            .unwrap();
        let error = embedder.embed(&texts(1)).await.unwrap_err().to_string();
        assert!(error.contains("answered 401 after 0 retries"), "{error}");
        assert_eq!(fake.requests().len(), 1);
    }

    #[tokio::test]
    async fn malformed_answers_are_errors() {
        let cases = [
            (Wire::OpenAi, json!({"data": "not a list"})),
            (
                Wire::OpenAi,
                json!({"data": [{"index": 0, "embedding": [1.0, 0.0, 0.0]}]}),
            ),
            (
                Wire::OpenAi,
                json!({"data": [
                    {"index": 0, "embedding": [1.0, 0.0, 0.0]},
                    {"index": 0, "embedding": [1.0, 0.0, 0.0]},
                ]}),
            ),
            (
                Wire::OpenAi,
                json!({"data": [
                    {"index": 0, "embedding": [1.0, 0.0, 0.0]},
                    {"index": 5, "embedding": [1.0, 0.0, 0.0]},
                ]}),
            ),
            (Wire::Ollama, json!({"embeddings": [[1.0, 0.0, 0.0]]})),
            (Wire::Ollama, json!({"embedding": [1.0, 0.0, 0.0]})),
        ];
        for (wire, body) in cases {
            let (url, _) = serve(vec![ok(body.clone())]).await;
            let embedder = RemoteEmbedder::connect(settings(wire, url, Some(3)))
                .await
                .unwrap();
            let error = embedder.embed(&texts(2)).await.unwrap_err().to_string();
            assert!(error.contains("is not its wire format"), "{body}: {error}");
        }
    }

    #[tokio::test]
    async fn a_vector_of_another_length_is_an_error() {
        let (url, _) = serve(vec![ok(json!({"embeddings": [[1.0, 0.0]]}))]).await;
        let embedder = RemoteEmbedder::connect(settings(Wire::Ollama, url, Some(3)))
            .await
            .unwrap();
        let error = embedder.embed(&texts(1)).await.unwrap_err().to_string();
        assert!(
            error.contains("a vector of 2 dimensions, 3 configured"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_a_clear_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let error = RemoteEmbedder::connect(settings(Wire::OpenAi, url.clone(), None))
            .await
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains(&format!(
                "the openai embeddings server at {url}/v1/embeddings cannot be reached"
            )),
            "{error}"
        );
    }
}
