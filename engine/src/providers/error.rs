//! Errors of the provider transports.
//!
//! Every message names the provider key and what went wrong. None of them may carry the
//! API key: messages are built from our own text plus provider-supplied error messages,
//! and the client scrubs the key out of the latter as a second line of defence.

/// A failed provider configuration or model call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// No usable API key (API.md §8 wording).
    #[error(
        "{provider} provider requires apiKey or apiKeyEnv resolving to an environment variable"
    )]
    MissingApiKey { provider: String },

    /// A malformed or unknown provider config field.
    #[error("invalid config for provider '{provider}': {message}")]
    InvalidConfig { provider: String, message: String },

    /// The request could not be built from the `ModelRequest` (e.g. tool args that are not JSON).
    #[error("provider '{provider}': cannot build the request: {message}")]
    InvalidRequest { provider: String, message: String },

    /// Connecting or sending failed (after any retries).
    #[error("provider '{provider}': connection failed: {message}")]
    Connect { provider: String, message: String },

    /// An attempt exceeded the connect timeout or `timeoutMs` (after any retries).
    #[error("provider '{provider}': request timed out ({message})")]
    Timeout { provider: String, message: String },

    /// A non-success HTTP status, with the provider's own error message.
    #[error("provider '{provider}' returned HTTP {status}: {message}")]
    Status {
        provider: String,
        status: u16,
        message: String,
    },

    /// An error reported inside the stream (Anthropic `error` event, OpenAI error payload).
    #[error("provider '{provider}' reported an error in the stream: {message}")]
    Api { provider: String, message: String },

    /// The connection broke after output had already been passed on, so no retry.
    #[error("provider '{provider}': stream interrupted after output started: {message}")]
    Interrupted { provider: String, message: String },

    /// The stream was not a valid event stream for the protocol.
    #[error("provider '{provider}' sent a malformed stream: {message}")]
    Malformed { provider: String, message: String },

    /// The stream ended without a terminator and without a finish reason.
    #[error("provider '{provider}' stream ended early: {message}")]
    Truncated { provider: String, message: String },

    /// The arguments the model streamed for a tool call are not valid JSON.
    #[error("provider '{provider}' returned invalid JSON arguments for tool '{tool}': {message}")]
    InvalidToolArgs {
        provider: String,
        tool: String,
        message: String,
    },

    /// The HTTP client could not be built.
    #[error("provider '{provider}': cannot create the HTTP client: {message}")]
    Client { provider: String, message: String },
}

impl ProviderError {
    /// The provider key the error belongs to.
    pub fn provider(&self) -> &str {
        match self {
            ProviderError::MissingApiKey { provider }
            | ProviderError::InvalidConfig { provider, .. }
            | ProviderError::InvalidRequest { provider, .. }
            | ProviderError::Connect { provider, .. }
            | ProviderError::Timeout { provider, .. }
            | ProviderError::Status { provider, .. }
            | ProviderError::Api { provider, .. }
            | ProviderError::Interrupted { provider, .. }
            | ProviderError::Malformed { provider, .. }
            | ProviderError::Truncated { provider, .. }
            | ProviderError::InvalidToolArgs { provider, .. }
            | ProviderError::Client { provider, .. } => provider,
        }
    }

    /// Whether the call ended on a timeout (for `data-latency-summary.hadTimeout`).
    pub fn had_timeout(&self) -> bool {
        matches!(self, ProviderError::Timeout { .. })
    }

    /// The HTTP status, for `Status` errors.
    pub fn status(&self) -> Option<u16> {
        match self {
            ProviderError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Replaces every occurrence of `secret` in the error's text with `[redacted]`.
    pub(crate) fn redact(self, secret: &str) -> Self {
        // Too-short "keys" (tests use things like "x") would redact ordinary words.
        if secret.len() < 4 {
            return self;
        }
        let clean = |s: String| {
            if s.contains(secret) {
                s.replace(secret, "[redacted]")
            } else {
                s
            }
        };
        match self {
            ProviderError::InvalidConfig { provider, message } => ProviderError::InvalidConfig {
                provider,
                message: clean(message),
            },
            ProviderError::InvalidRequest { provider, message } => ProviderError::InvalidRequest {
                provider,
                message: clean(message),
            },
            ProviderError::Connect { provider, message } => ProviderError::Connect {
                provider,
                message: clean(message),
            },
            ProviderError::Timeout { provider, message } => ProviderError::Timeout {
                provider,
                message: clean(message),
            },
            ProviderError::Status {
                provider,
                status,
                message,
            } => ProviderError::Status {
                provider,
                status,
                message: clean(message),
            },
            ProviderError::Api { provider, message } => ProviderError::Api {
                provider,
                message: clean(message),
            },
            ProviderError::Interrupted { provider, message } => ProviderError::Interrupted {
                provider,
                message: clean(message),
            },
            ProviderError::Malformed { provider, message } => ProviderError::Malformed {
                provider,
                message: clean(message),
            },
            ProviderError::Truncated { provider, message } => ProviderError::Truncated {
                provider,
                message: clean(message),
            },
            ProviderError::InvalidToolArgs {
                provider,
                tool,
                message,
            } => ProviderError::InvalidToolArgs {
                provider,
                tool: clean(tool),
                message: clean(message),
            },
            ProviderError::Client { provider, message } => ProviderError::Client {
                provider,
                message: clean(message),
            },
            other @ ProviderError::MissingApiKey { .. } => other,
        }
    }
}
