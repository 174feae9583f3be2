//! Provider routing (API.md §8) and interpreter selection (API.md §2.3).

use crate::spec::error::InterpreterError;
use crate::spec::wire::ModelSpec;

/// The provider key a model is served by: the explicit `provider` if set, else by
/// model id prefix, falling back to `anthropic`.
pub fn select_provider_key(model: &ModelSpec) -> String {
    if let Some(provider) = &model.provider {
        return provider.clone();
    }
    let id = model.id.as_str();
    let key = if id.starts_with("claude-") {
        "anthropic"
    } else if id.starts_with("anthropic.") || id.starts_with("us.anthropic.") {
        "bedrock"
    } else if ["gpt-", "o1-", "o3-"].iter().any(|p| id.starts_with(p)) {
        "openai-compatible"
    } else {
        "anthropic"
    };
    key.to_owned()
}

/// The interpreter a runtime drives its agents with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InterpreterChoice {
    /// Deterministic, one empty turn per invocation.
    Noop,
    /// Deterministic mock answering with this text (`testing={"mock_response": ..}`).
    Mock(String),
    /// Deterministic, runs the JSON script in the prompt.
    Scripted,
    /// Every agent uses the Anthropic provider.
    Anthropic,
    /// Every agent uses the OpenAI-compatible provider.
    OpenAiCompatible,
    /// Every agent uses its routed provider.
    Live,
}

impl InterpreterChoice {
    /// Parses the `interpreter=` value; `mock` is the testing mock response, only
    /// allowed with `"noop"`.
    pub fn parse(s: &str, mock: Option<String>) -> Result<Self, InterpreterError> {
        let choice = match s {
            "noop" => InterpreterChoice::Noop,
            "scripted" => InterpreterChoice::Scripted,
            "anthropic" => InterpreterChoice::Anthropic,
            "openai-compatible" => InterpreterChoice::OpenAiCompatible,
            "live" => InterpreterChoice::Live,
            other => return Err(InterpreterError::Unknown(other.to_owned())),
        };
        match (choice, mock) {
            (InterpreterChoice::Noop, Some(text)) => Ok(InterpreterChoice::Mock(text)),
            (_, Some(_)) => Err(InterpreterError::MockRequiresNoop),
            (choice, None) => Ok(choice),
        }
    }

    /// The `interpreter=` value this choice was parsed from.
    pub fn as_str(&self) -> &'static str {
        match self {
            InterpreterChoice::Noop | InterpreterChoice::Mock(_) => "noop",
            InterpreterChoice::Scripted => "scripted",
            InterpreterChoice::Anthropic => "anthropic",
            InterpreterChoice::OpenAiCompatible => "openai-compatible",
            InterpreterChoice::Live => "live",
        }
    }

    /// Whether model output is produced without any provider call.
    pub fn is_deterministic(&self) -> bool {
        matches!(
            self,
            InterpreterChoice::Noop | InterpreterChoice::Mock(_) | InterpreterChoice::Scripted
        )
    }

    /// The provider key every agent uses, for the single-provider live choices.
    pub fn forced_provider(&self) -> Option<&'static str> {
        match self {
            InterpreterChoice::Anthropic => Some("anthropic"),
            InterpreterChoice::OpenAiCompatible => Some("openai-compatible"),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> String {
        select_provider_key(&ModelSpec::new(id))
    }

    #[test]
    fn routes_by_prefix() {
        assert_eq!(key("claude-sonnet-4-6"), "anthropic");
        assert_eq!(key("anthropic.claude-3"), "bedrock");
        assert_eq!(key("us.anthropic.claude-3"), "bedrock");
        assert_eq!(key("gpt-4o"), "openai-compatible");
        assert_eq!(key("o1-mini"), "openai-compatible");
        assert_eq!(key("o3-mini"), "openai-compatible");
        assert_eq!(key("llama3"), "anthropic");
        let explicit = ModelSpec {
            id: "claude-x".into(),
            provider: Some("ollama".into()),
        };
        assert_eq!(select_provider_key(&explicit), "ollama");
    }

    #[test]
    fn parses_interpreters() {
        assert_eq!(
            InterpreterChoice::parse("noop", None),
            Ok(InterpreterChoice::Noop)
        );
        assert_eq!(
            InterpreterChoice::parse("noop", Some("hi".into())),
            Ok(InterpreterChoice::Mock("hi".into()))
        );
        assert_eq!(
            InterpreterChoice::parse("scripted", Some("hi".into())).map_err(|e| e.to_string()),
            Err("mock_response requires interpreter='noop'".to_owned())
        );
        assert_eq!(
            InterpreterChoice::parse("gemini", None).map_err(|e| e.to_string()),
            Err("unknown interpreter 'gemini'; expected noop, scripted, anthropic, openai-compatible, or live".to_owned())
        );
        for s in ["noop", "scripted", "anthropic", "openai-compatible", "live"] {
            assert_eq!(InterpreterChoice::parse(s, None).map(|c| c.as_str()), Ok(s));
        }
    }
}
