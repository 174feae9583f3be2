//! Live model-provider transports: Anthropic Messages and OpenAI-compatible Chat
//! Completions, streamed over SSE (API.md §8, DESIGN.md §7).
//!
//! Layers: [`ProviderConfig`] (parsed from the spec), request building per protocol
//! ([`anthropic`], [`openai`]), a pure SSE-event decoder ([`decode::StreamDecoder`]) and
//! the HTTP transport with timeouts and retries (`transport`). The run driver only needs
//! [`client_for`], [`ModelClient`] and [`request_hash`].

pub mod anthropic;
mod config;
pub mod decode;
mod error;
pub mod openai;
mod transport;
mod types;

use std::sync::Arc;

pub use config::{
    DEFAULT_ANTHROPIC_BASE_URL, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_MAX_RETRIES,
    DEFAULT_OPENAI_BASE_URL, DEFAULT_RETRY_BASE_DELAY_MS, DEFAULT_TIMEOUT_MS, MAX_RETRY_DELAY_MS,
    Protocol, ProviderConfig,
};
pub use decode::{Decoded, StreamDecoder, decode_sse_bytes};
pub use error::ProviderError;
pub use transport::HttpModelClient;
pub use types::{
    ChatMessage, Chunk, ChunkKind, FinishReason, ModelRequest, ModelResponse, RetryEvent, ToolCall,
    ToolDef, Usage,
};

/// A model endpoint. Implemented by the HTTP transports here and by test doubles.
#[async_trait::async_trait]
pub trait ModelClient: Send + Sync {
    /// Runs one model call, passing each text/reasoning delta to `on_chunk` as it
    /// arrives (before the response is journaled).
    ///
    /// Retries happen only before the first chunk was passed on; a failure after that is
    /// an error naming the provider. Dropping the future cancels the request.
    async fn complete(
        &self,
        req: &ModelRequest,
        on_chunk: &mut (dyn for<'c> FnMut(&'c Chunk) + Send),
    ) -> Result<ModelResponse, ProviderError>;
}

/// The live client for a provider config.
pub fn client_for(config: &ProviderConfig) -> Result<Arc<dyn ModelClient>, ProviderError> {
    Ok(Arc::new(HttpModelClient::new(config.clone())?))
}

/// Blake3 hex digest of the RFC 8785 canonical JSON of the request (journaled in
/// ModelRequested, so a replay can tell whether the same request would be sent).
pub fn request_hash(req: &ModelRequest) -> String {
    // Canonicalization only fails for values JSON cannot represent, which a
    // `ModelRequest` cannot hold; the fallback keeps this total anyway.
    let bytes = serde_json_canonicalizer::to_vec(req)
        .or_else(|_| serde_json::to_vec(req))
        .unwrap_or_default();
    blake3::hash(&bytes).to_hex().to_string()
}
