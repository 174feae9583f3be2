//! HTTP transport: one streaming POST per attempt, retried with backoff before the first
//! chunk, bounded by a connect timeout and a per-attempt deadline.

use std::error::Error as _;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource as _};
use futures::StreamExt as _;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use tokio::time::Instant;

use super::config::{MAX_RETRY_DELAY_MS, Protocol, ProviderConfig};
use super::decode::{Decoded, StreamDecoder, truncate};
use super::error::ProviderError;
use super::types::{Chunk, ModelRequest, ModelResponse, RetryEvent};
use super::{ModelClient, anthropic, openai};

/// Cap on how much of an error response body we read (it only feeds the message).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// Live client for one provider config.
pub struct HttpModelClient {
    config: ProviderConfig,
    api_key: String,
    http: reqwest::Client,
    url: String,
    headers: HeaderMap,
}

impl std::fmt::Debug for HttpModelClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpModelClient")
            .field("config", &self.config)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl HttpModelClient {
    pub fn new(config: ProviderConfig) -> Result<Self, ProviderError> {
        let provider = config.key.clone();
        let client_err = |message: String| ProviderError::Client {
            provider: provider.clone(),
            message,
        };
        let api_key = config
            .api_key
            .clone()
            .filter(|k| !k.is_empty())
            .ok_or_else(|| ProviderError::MissingApiKey {
                provider: provider.clone(),
            })?;

        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
        let bad_key = || ProviderError::InvalidConfig {
            provider: provider.clone(),
            message: "the API key contains characters that are not allowed in an HTTP header"
                .to_string(),
        };
        match config.protocol {
            Protocol::Anthropic => {
                let mut v = HeaderValue::from_str(&api_key).map_err(|_| bad_key())?;
                v.set_sensitive(true);
                headers.insert(HeaderName::from_static("x-api-key"), v);
                headers.insert(
                    HeaderName::from_static("anthropic-version"),
                    HeaderValue::from_static(anthropic::ANTHROPIC_VERSION),
                );
            }
            Protocol::OpenAiCompatible => {
                let mut v =
                    HeaderValue::from_str(&format!("Bearer {api_key}")).map_err(|_| bad_key())?;
                v.set_sensitive(true);
                headers.insert(AUTHORIZATION, v);
            }
        }
        for (name, value) in &config.headers {
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                ProviderError::InvalidConfig {
                    provider: provider.clone(),
                    message: format!("'{name}' is not a valid HTTP header name"),
                }
            })?;
            let mut value =
                HeaderValue::from_str(value).map_err(|_| ProviderError::InvalidConfig {
                    provider: provider.clone(),
                    message: format!("header '{name}' has a value that is not valid in HTTP"),
                })?;
            // Extra headers often carry gateway credentials.
            value.set_sensitive(true);
            headers.insert(name, value);
        }

        install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .user_agent(concat!("flowai/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| client_err(error_chain(&e)))?;

        let url = match config.protocol {
            Protocol::Anthropic => anthropic::endpoint(&config.base_url),
            Protocol::OpenAiCompatible => openai::endpoint(&config.base_url),
        };
        Ok(HttpModelClient {
            config,
            api_key,
            http,
            url,
            headers,
        })
    }

    /// The JSON body this client would send for `req` (what the server receives).
    pub fn request_body(&self, req: &ModelRequest) -> Result<serde_json::Value, ProviderError> {
        match self.config.protocol {
            Protocol::Anthropic => anthropic::request_body(&self.config.key, req),
            Protocol::OpenAiCompatible => Ok(openai::request_body(req, &self.config.base_url)),
        }
    }

    pub fn config(&self) -> &ProviderConfig {
        &self.config
    }

    async fn run<'f>(
        &self,
        req: &ModelRequest,
        on_chunk: &'f mut (dyn FnMut(&Chunk) + Send + 'f),
    ) -> Result<ModelResponse, ProviderError> {
        let provider = self.config.key.as_str();
        let body = serde_json::to_vec(&self.request_body(req)?).map_err(|e| {
            ProviderError::InvalidRequest {
                provider: provider.to_string(),
                message: e.to_string(),
            }
        })?;
        let body = Bytes::from(body);
        let sink: Sink<'f> = Sink {
            on_chunk: Mutex::new(on_chunk),
            start: Instant::now(),
            first_chunk_ms: Mutex::new(None),
            emitted: AtomicBool::new(false),
            had_timeout: AtomicBool::new(false),
            attempts: AtomicU32::new(0),
        };

        let backoff = ExponentialBuilder::new()
            .with_min_delay(Duration::from_millis(self.config.retry_base_delay_ms))
            .with_max_delay(Duration::from_millis(MAX_RETRY_DELAY_MS))
            .with_max_times(self.config.max_retries as usize)
            .with_jitter()
            .with_jitter_seed(jitter_seed());
        let mut retry_events: Vec<RetryEvent> = Vec::new();
        let result = (|| self.attempt(&body, &sink))
            .retry(backoff)
            .when(|e: &AttemptError| e.retry.is_some())
            .adjust(|e: &AttemptError, next: Option<Duration>| {
                // `next` is None once the retry budget is spent; retry-after does not
                // extend the budget, it only replaces the computed delay.
                let next = next?;
                match e.retry.as_ref().and_then(|r| r.retry_after) {
                    Some(after) => Some(after.min(Duration::from_millis(MAX_RETRY_DELAY_MS))),
                    None => Some(next),
                }
            })
            .notify(|e: &AttemptError, delay: Duration| {
                let attempt = retry_events.len() as u32 + 1;
                let (kind, status) = e
                    .retry
                    .as_ref()
                    .map(|r| (r.kind, r.status))
                    .unwrap_or(("error", None));
                // The provider's message may echo the key (some 401 bodies do).
                let error = e.error.clone().redact(&self.api_key);
                tracing::warn!(
                    provider,
                    attempt,
                    kind,
                    status,
                    delay_ms = delay.as_millis() as u64,
                    %error,
                    "provider call failed; retrying"
                );
                retry_events.push(RetryEvent {
                    attempt,
                    status,
                    error: kind.to_string(),
                    delay_ms: delay.as_millis() as u64,
                });
            })
            .await;

        let retries = retry_events.len() as u32;
        let duration_ms = sink.start.elapsed().as_millis() as u64;
        let decoded: Decoded = result.map_err(|e| e.error.after_retries(retries))?;
        let ttft_ms = *lock(&sink.first_chunk_ms);
        tracing::debug!(
            provider,
            retries,
            duration_ms,
            ttft_ms,
            finish_reason = decoded.finish_reason.as_str(),
            "provider call finished"
        );
        Ok(ModelResponse {
            chunks: decoded.chunks,
            tool_calls: decoded.tool_calls,
            usage: decoded.usage,
            finish_reason: decoded.finish_reason,
            retries,
            retry_events,
            ttft_ms,
            duration_ms,
            had_timeout: sink.had_timeout.load(Ordering::Relaxed),
        })
    }

    async fn attempt(&self, body: &Bytes, sink: &Sink<'_>) -> Result<Decoded, AttemptError> {
        let provider = self.config.key.as_str();
        let attempt = sink.attempts.fetch_add(1, Ordering::Relaxed) + 1;
        let deadline = Instant::now() + Duration::from_millis(self.config.timeout_ms);
        let timed_out = |what: &str| {
            sink.had_timeout.store(true, Ordering::Relaxed);
            let error = ProviderError::Timeout {
                provider: provider.to_string(),
                message: format!(
                    "{what} within the {} ms budget of attempt {attempt}",
                    self.config.timeout_ms
                ),
            };
            sink.failure(error, "timeout", None, None)
        };
        tracing::debug!(provider, attempt, url = %self.url, "provider request");

        let send = self
            .http
            .post(&self.url)
            .headers(self.headers.clone())
            .body(body.clone())
            .send();
        let resp = match tokio::time::timeout_at(deadline, send).await {
            Err(_) => return Err(timed_out("no response")),
            Ok(Err(e)) if e.is_timeout() => {
                sink.had_timeout.store(true, Ordering::Relaxed);
                let error = ProviderError::Timeout {
                    provider: provider.to_string(),
                    message: format!(
                        "could not connect within {} ms: {}",
                        self.config.connect_timeout_ms,
                        error_chain(&e)
                    ),
                };
                return Err(sink.failure(error, "timeout", None, None));
            }
            Ok(Err(e)) => {
                let error = ProviderError::Connect {
                    provider: provider.to_string(),
                    message: error_chain(&e),
                };
                return Err(sink.failure(error, "connect", None, None));
            }
            Ok(Ok(resp)) => resp,
        };

        let status = resp.status();
        if !status.is_success() {
            let retry_after = retry_after(resp.headers());
            let text = match tokio::time::timeout_at(deadline, read_limited(resp)).await {
                Ok(text) => text,
                Err(_) => return Err(timed_out("no error body")),
            };
            let error = ProviderError::Status {
                provider: provider.to_string(),
                status: status.as_u16(),
                message: error_message(&text, status),
            };
            let retryable = status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error();
            return Err(if retryable {
                sink.failure(error, "http", Some(status.as_u16()), retry_after)
            } else {
                AttemptError::fatal(error)
            });
        }

        // Some compatible servers answer a streaming request that fails validation with
        // a 200 and a plain JSON error body.
        let is_json = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
        if is_json {
            let text = match tokio::time::timeout_at(deadline, read_limited(resp)).await {
                Ok(text) => text,
                Err(_) => return Err(timed_out("no complete body")),
            };
            return Err(AttemptError::fatal(ProviderError::Malformed {
                provider: provider.to_string(),
                message: format!(
                    "expected an event stream, got JSON: {}",
                    error_message(&text, status)
                ),
            }));
        }

        let mut events = resp.bytes_stream().eventsource();
        let mut decoder = StreamDecoder::new(self.config.protocol, provider);
        loop {
            let next = match tokio::time::timeout_at(deadline, events.next()).await {
                Ok(next) => next,
                Err(_) => return Err(timed_out("the stream did not complete")),
            };
            match next {
                None => break,
                Some(Ok(ev)) => {
                    let chunks = decoder
                        .feed(&ev.event, &ev.data)
                        .map_err(|e| self.stream_error(e, sink))?;
                    for chunk in &chunks {
                        sink.emit(chunk);
                    }
                    if decoder.is_terminated() {
                        break;
                    }
                }
                Some(Err(EventStreamError::Transport(e))) => {
                    let error = ProviderError::Connect {
                        provider: provider.to_string(),
                        message: format!("connection lost while streaming: {}", error_chain(&e)),
                    };
                    return Err(sink.failure(error, "reset", None, None));
                }
                Some(Err(e)) => {
                    return Err(AttemptError::fatal(ProviderError::Malformed {
                        provider: provider.to_string(),
                        message: format!("invalid SSE: {e}"),
                    }));
                }
            }
        }
        decoder.finish().map_err(|e| match e {
            // A stream cut off before any output is indistinguishable from a reset.
            ProviderError::Truncated { .. } => sink.failure(e, "truncated", None, None),
            other => AttemptError::fatal(other),
        })
    }

    /// Classifies an error the decoder reported mid-stream.
    fn stream_error(&self, e: ProviderError, sink: &Sink<'_>) -> AttemptError {
        // Anthropic reports overload and internal errors as an `error` event after a 200;
        // before any output that is as retryable as the 529/500 it stands for.
        let transient = matches!(self.config.protocol, Protocol::Anthropic)
            && matches!(&e, ProviderError::Api { message, .. }
                if message.starts_with("overloaded_error") || message.starts_with("api_error"));
        if transient {
            sink.failure(e, "overloaded", None, None)
        } else {
            AttemptError::fatal(e)
        }
    }
}

#[async_trait::async_trait]
impl ModelClient for HttpModelClient {
    async fn complete(
        &self,
        req: &ModelRequest,
        on_chunk: &mut (dyn for<'c> FnMut(&'c Chunk) + Send),
    ) -> Result<ModelResponse, ProviderError> {
        self.run(req, on_chunk)
            .await
            .map_err(|e| e.redact(&self.api_key))
    }
}

/// Per-call state shared by the attempts.
struct Sink<'a> {
    on_chunk: Mutex<&'a mut (dyn FnMut(&Chunk) + Send + 'a)>,
    start: Instant,
    first_chunk_ms: Mutex<Option<u64>>,
    emitted: AtomicBool,
    had_timeout: AtomicBool,
    attempts: AtomicU32,
}

impl Sink<'_> {
    fn emit(&self, chunk: &Chunk) {
        {
            let mut first = lock(&self.first_chunk_ms);
            if first.is_none() {
                *first = Some(self.start.elapsed().as_millis() as u64);
            }
        }
        self.emitted.store(true, Ordering::Relaxed);
        (*lock(&self.on_chunk))(chunk);
    }

    /// A failure that may be retried, unless output was already passed on.
    fn failure(
        &self,
        error: ProviderError,
        kind: &'static str,
        status: Option<u16>,
        retry_after: Option<Duration>,
    ) -> AttemptError {
        if self.emitted.load(Ordering::Relaxed) {
            let error = match error {
                ProviderError::Connect { provider, message } => {
                    ProviderError::Interrupted { provider, message }
                }
                other => other,
            };
            return AttemptError::fatal(error);
        }
        AttemptError {
            error,
            retry: Some(RetryInfo {
                kind,
                status,
                retry_after,
            }),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panicking `on_chunk` poisons the lock; the data it guards is still consistent.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct AttemptError {
    error: ProviderError,
    /// Set when another attempt may follow.
    retry: Option<RetryInfo>,
}

struct RetryInfo {
    kind: &'static str,
    status: Option<u16>,
    retry_after: Option<Duration>,
}

impl AttemptError {
    fn fatal(error: ProviderError) -> Self {
        AttemptError { error, retry: None }
    }
}

impl ProviderError {
    fn after_retries(self, retries: u32) -> Self {
        if retries == 0 {
            return self;
        }
        let suffix = format!(" (after {retries} retries)");
        match self {
            ProviderError::Connect { provider, message } => ProviderError::Connect {
                provider,
                message: message + &suffix,
            },
            ProviderError::Timeout { provider, message } => ProviderError::Timeout {
                provider,
                message: message + &suffix,
            },
            ProviderError::Status {
                provider,
                status,
                message,
            } => ProviderError::Status {
                provider,
                status,
                message: message + &suffix,
            },
            other => other,
        }
    }
}

/// `retry-after-ms` (OpenAI) or `retry-after` in seconds; HTTP dates fall back to backoff.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .and_then(|v| v.parse::<f64>().ok())
            .filter(|n| n.is_finite() && *n >= 0.0)
    };
    if let Some(ms) = get("retry-after-ms") {
        return Some(Duration::from_secs_f64(
            (ms / 1000.0).min(MAX_RETRY_DELAY_MS as f64 / 1000.0),
        ));
    }
    get("retry-after").map(|s| Duration::from_secs_f64(s.min(MAX_RETRY_DELAY_MS as f64 / 1000.0)))
}

async fn read_limited(resp: reqwest::Response) -> String {
    let mut buf = Vec::new();
    let mut body = resp.bytes_stream();
    while let Some(Ok(part)) = body.next().await {
        buf.extend_from_slice(&part);
        if buf.len() >= MAX_ERROR_BODY {
            buf.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// The provider's own error message from an error body, else the body or the status text.
fn error_message(body: &str, status: StatusCode) -> String {
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(body) {
        let err = v.get("error").filter(|e| !e.is_null());
        if let Some(err) = err {
            return super::decode::describe_error(err);
        }
        for key in ["message", "detail"] {
            if let Some(s) = v.get(key).and_then(|m| m.as_str()) {
                return truncate(s, 500);
            }
        }
    }
    let body = body.trim();
    if body.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no error message")
            .to_string()
    } else {
        truncate(body, 500)
    }
}

/// An error and its sources ("error sending request: connection refused").
fn error_chain(e: &reqwest::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

fn jitter_seed() -> u64 {
    // RandomState is seeded per process and per instance: enough to decorrelate
    // clients retrying against the same rate limit, without a rand dependency.
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// reqwest is built with `rustls-no-provider`: it needs a process-wide rustls crypto
/// provider before the first client is built. Installing fails harmlessly when another
/// component installed one first.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    });
}
