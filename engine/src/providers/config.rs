//! Provider configuration parsed from `RuntimeSpec.providers[<key>]` (API.md §8).

use std::collections::BTreeMap;
use std::fmt;

use reqwest::header::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ProviderError;

/// Wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    /// Anthropic Messages API.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// OpenAI Chat Completions and compatible servers (vLLM, Ollama, OpenRouter, LM Studio…).
    #[serde(rename = "openai-compatible")]
    OpenAiCompatible,
}

impl Protocol {
    /// The interpreter / provider name used in API.md (`"anthropic"`, `"openai-compatible"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Anthropic => "anthropic",
            Protocol::OpenAiCompatible => "openai-compatible",
        }
    }

    /// Inverse of [`Protocol::as_str`].
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "anthropic" => Some(Protocol::Anthropic),
            "openai-compatible" => Some(Protocol::OpenAiCompatible),
            _ => None,
        }
    }

    pub fn default_base_url(self) -> &'static str {
        match self {
            Protocol::Anthropic => DEFAULT_ANTHROPIC_BASE_URL,
            Protocol::OpenAiCompatible => DEFAULT_OPENAI_BASE_URL,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

pub const DEFAULT_ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com";
pub const DEFAULT_OPENAI_BASE_URL: &str = "https://api.openai.com/v1";
/// Bounds one attempt: connect, headers and the whole streamed body. Generous because a
/// long (reasoning) generation streams for minutes; the official SDKs use 10 minutes.
pub const DEFAULT_TIMEOUT_MS: u64 = 600_000;
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_RETRIES: u32 = 2;
pub const DEFAULT_RETRY_BASE_DELAY_MS: u64 = 500;
/// Upper bound for one backoff delay, including a server's `retry-after`.
pub const MAX_RETRY_DELAY_MS: u64 = 60_000;

const KNOWN_KEYS: &[&str] = &[
    "apiKey",
    "apiKeyEnv",
    "baseUrl",
    "timeoutMs",
    "connectTimeoutMs",
    "maxRetries",
    "retryBaseDelayMs",
    "headers",
];

/// A live provider's settings. `Debug` redacts the API key and header values.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderConfig {
    /// Provider key in `RuntimeSpec.providers` (used in every error message).
    pub key: String,
    pub protocol: Protocol,
    /// The resolved API key. Never journaled, logged or put in an error.
    pub api_key: Option<String>,
    /// Base URL without a trailing slash; the protocol's path is appended.
    pub base_url: String,
    /// Per-attempt budget for connect + response + whole stream.
    pub timeout_ms: u64,
    /// Budget for establishing the connection (TCP + TLS).
    pub connect_timeout_ms: u64,
    /// Retries after the first attempt (0 = a single attempt).
    pub max_retries: u32,
    /// First backoff delay; doubles per retry, with jitter, capped at 60 s.
    pub retry_base_delay_ms: u64,
    /// Extra request headers (may override the protocol defaults, e.g. `anthropic-version`).
    pub headers: BTreeMap<String, String>,
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values are redacted too: users put credentials there (proxies, gateways).
        let headers: Vec<&str> = self.headers.keys().map(String::as_str).collect();
        f.debug_struct("ProviderConfig")
            .field("key", &self.key)
            .field("protocol", &self.protocol)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("base_url", &self.base_url)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("max_retries", &self.max_retries)
            .field("retry_base_delay_ms", &self.retry_base_delay_ms)
            .field("headers (values redacted)", &headers)
            .finish()
    }
}

impl ProviderConfig {
    /// Parses a provider's JSON config.
    ///
    /// Accepted keys: `apiKey` | `apiKeyEnv` (exactly one), `baseUrl`, `timeoutMs`,
    /// `connectTimeoutMs`, `maxRetries`, `retryBaseDelayMs`, `headers`. `env` resolves
    /// environment variables (injected so tests and embedders control it).
    pub fn from_json(
        key: &str,
        protocol: Protocol,
        v: &Value,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ProviderError> {
        let invalid = |message: String| ProviderError::InvalidConfig {
            provider: key.to_string(),
            message,
        };
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(format!("expected a JSON object, got {}", json_type_name(v))))?;
        if let Some(unknown) = obj.keys().find(|k| !KNOWN_KEYS.contains(&k.as_str())) {
            return Err(invalid(format!(
                "unknown field '{unknown}'; expected one of {}",
                KNOWN_KEYS.join(", ")
            )));
        }

        let api_key = match (obj.get("apiKey"), obj.get("apiKeyEnv")) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "set either apiKey or apiKeyEnv, not both".to_string(),
                ));
            }
            (Some(k), None) => {
                // Never echo the value: a wrongly typed key might still be a secret.
                let k = k
                    .as_str()
                    .ok_or_else(|| invalid("apiKey must be a string".to_string()))?;
                non_empty(k)
            }
            (None, Some(name)) => {
                let name = name
                    .as_str()
                    .ok_or_else(|| invalid("apiKeyEnv must be a string".to_string()))?;
                if name.is_empty() {
                    return Err(invalid("apiKeyEnv must not be empty".to_string()));
                }
                env(name).as_deref().and_then(non_empty)
            }
            (None, None) => None,
        };
        let api_key = api_key.ok_or_else(|| ProviderError::MissingApiKey {
            provider: key.to_string(),
        })?;

        let base_url = match obj.get("baseUrl") {
            None => protocol.default_base_url().to_string(),
            Some(u) => {
                let u = u
                    .as_str()
                    .ok_or_else(|| invalid("baseUrl must be a string".to_string()))?;
                let parsed = reqwest::Url::parse(u)
                    .map_err(|e| invalid(format!("baseUrl '{u}' is not a valid URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") {
                    return Err(invalid(format!("baseUrl '{u}' must use http or https")));
                }
                if parsed.query().is_some() || parsed.fragment().is_some() {
                    return Err(invalid(format!(
                        "baseUrl '{u}' must not have a query or fragment"
                    )));
                }
                u.trim_end_matches('/').to_string()
            }
        };

        let timeout_ms = positive_ms(obj, "timeoutMs", DEFAULT_TIMEOUT_MS, &invalid)?;
        let connect_timeout_ms = positive_ms(
            obj,
            "connectTimeoutMs",
            DEFAULT_CONNECT_TIMEOUT_MS.min(timeout_ms),
            &invalid,
        )?;
        let max_retries = match obj.get("maxRetries") {
            None => DEFAULT_MAX_RETRIES,
            Some(n) => n
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n <= 100)
                .ok_or_else(|| {
                    invalid(format!(
                        "maxRetries must be an integer between 0 and 100, got {n}"
                    ))
                })?,
        };
        let retry_base_delay_ms = match obj.get("retryBaseDelayMs") {
            None => DEFAULT_RETRY_BASE_DELAY_MS,
            Some(n) => n
                .as_u64()
                .filter(|n| *n <= MAX_RETRY_DELAY_MS)
                .ok_or_else(|| {
                    invalid(format!(
                        "retryBaseDelayMs must be an integer between 0 and {MAX_RETRY_DELAY_MS}, got {n}"
                    ))
                })?,
        };

        let mut headers = BTreeMap::new();
        if let Some(h) = obj.get("headers") {
            let h = h.as_object().ok_or_else(|| {
                invalid("headers must be an object of header name to string value".to_string())
            })?;
            for (name, value) in h {
                let value = value
                    .as_str()
                    .ok_or_else(|| invalid(format!("header '{name}' must have a string value")))?;
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| invalid(format!("'{name}' is not a valid HTTP header name")))?;
                // The value may be a credential, so the message leaves it out.
                HeaderValue::from_str(value).map_err(|_| {
                    invalid(format!(
                        "header '{name}' has a value that is not valid in HTTP"
                    ))
                })?;
                headers.insert(name.to_ascii_lowercase(), value.to_string());
            }
        }

        Ok(ProviderConfig {
            key: key.to_string(),
            protocol,
            api_key: Some(api_key),
            base_url,
            timeout_ms,
            connect_timeout_ms,
            max_retries,
            retry_base_delay_ms,
            headers,
        })
    }

    /// A config with defaults for everything but the key and API key (handy for embedders).
    pub fn new(key: &str, protocol: Protocol, api_key: impl Into<String>) -> Self {
        ProviderConfig {
            key: key.to_string(),
            protocol,
            api_key: Some(api_key.into()),
            base_url: protocol.default_base_url().to_string(),
            timeout_ms: DEFAULT_TIMEOUT_MS,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            max_retries: DEFAULT_MAX_RETRIES,
            retry_base_delay_ms: DEFAULT_RETRY_BASE_DELAY_MS,
            headers: BTreeMap::new(),
        }
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn positive_ms(
    obj: &serde_json::Map<String, Value>,
    field: &str,
    default: u64,
    invalid: &dyn Fn(String) -> ProviderError,
) -> Result<u64, ProviderError> {
    match obj.get(field) {
        None => Ok(default),
        Some(n) => n.as_u64().filter(|n| *n > 0).ok_or_else(|| {
            invalid(format!(
                "{field} must be a positive integer (milliseconds), got {n}"
            ))
        }),
    }
}

fn json_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
