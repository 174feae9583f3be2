//! The deterministic interpreters of API.md §4: `noop`, mock (`testing`) and
//! `scripted`. Each decides one turn per agent invocation from the prompt alone; the
//! decision is journaled as ModelResponded like a provider's answer, so every
//! interpreter replays the same way.

use flowai_storage::payloads::{self, ChunkRecord, ToolCallRecord, UsageRecord};
use serde_json::Value;

use crate::error::EngineError;
use crate::spec::{CompiledAgent, InterpreterChoice};

/// What a deterministic interpreter decided for one turn.
#[derive(Debug, PartialEq)]
pub(crate) enum TurnPlan {
    /// Text only (`noop` emits none; mock and non-JSON scripted prompts one chunk).
    Text(Option<String>),
    /// Scripted tool calls, dispatched in order inside the turn.
    Calls(Vec<(String, Value)>),
    /// The interpreter cannot act (e.g. a script for an agent without tools).
    Error(String),
}

/// Parses a scripted prompt: `{"tool": ..., "args": ...}` or `{"script": [...]}`.
/// Anything else is not a script and is echoed.
///
/// The calls are taken out of the parsed prompt, not copied: a script carries every call's
/// arguments, a megabyte for a thousand 1 KB steps.
pub(crate) fn parse_script(prompt: &str) -> Option<Vec<(String, Value)>> {
    let Ok(Value::Object(mut object)) = serde_json::from_str::<Value>(prompt) else {
        return None;
    };
    let call = |mut item: serde_json::Map<String, Value>| -> Option<(String, Value)> {
        let Value::String(tool) = item.remove("tool")? else {
            return None;
        };
        Some((tool, item.remove("args").unwrap_or(Value::Null)))
    };
    if object.contains_key("tool") {
        return call(object).map(|c| vec![c]);
    }
    let Value::Array(script) = object.remove("script")? else {
        return None;
    };
    script
        .into_iter()
        .map(|item| match item {
            Value::Object(item) => call(item),
            _ => None,
        })
        .collect()
}

pub(crate) fn deterministic_turn(
    interpreter: &InterpreterChoice,
    agent: &CompiledAgent,
    prompt: &str,
) -> TurnPlan {
    match interpreter {
        InterpreterChoice::Mock(text) => TurnPlan::Text(Some(text.clone())),
        InterpreterChoice::Scripted => match parse_script(prompt) {
            None => TurnPlan::Text(Some(prompt.to_owned())),
            Some(_) if agent.tools.is_empty() => {
                TurnPlan::Error(String::from("scripted interpreter has no dispatcher"))
            }
            Some(calls) => TurnPlan::Calls(calls),
        },
        _ => TurnPlan::Text(None),
    }
}

impl TurnPlan {
    pub(crate) fn into_record(
        self,
        agent: &str,
        invocation_id: &str,
        model: &str,
    ) -> Result<payloads::ModelResponded, EngineError> {
        let mut record = payloads::ModelResponded {
            agent: agent.to_owned(),
            invocation_id: invocation_id.to_owned(),
            turn: 1,
            model: model.to_owned(),
            chunks: Vec::new(),
            tool_calls: Vec::new(),
            usage: UsageRecord::default(),
            finish_reason: String::from("stop"),
            finish_after_tools: false,
            summaries: None,
            error: None,
        };
        match self {
            TurnPlan::Text(text) => {
                if let Some(text) = text {
                    record.chunks.push(ChunkRecord {
                        kind: String::from("text"),
                        text,
                    });
                }
            }
            TurnPlan::Calls(calls) => {
                record.finish_after_tools = true;
                for (index, (name, args)) in calls.into_iter().enumerate() {
                    record.tool_calls.push(ToolCallRecord {
                        id: format!("scripted-tool-{}", index + 1),
                        name,
                        args: serde_json::value::to_raw_value(&args).map_err(|e| {
                            EngineError::Internal(format!("cannot encode scripted args: {e}"))
                        })?,
                    });
                }
            }
            TurnPlan::Error(message) => record.error = Some(message),
        }
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn single_call_and_script_parse() {
        assert_eq!(
            parse_script(r#"{"tool": "t", "args": {"a": 1}}"#),
            Some(vec![(String::from("t"), json!({"a": 1}))])
        );
        assert_eq!(
            parse_script(r#"{"script": [{"tool": "a"}, {"tool": "b", "args": [1]}]}"#),
            Some(vec![
                (String::from("a"), Value::Null),
                (String::from("b"), json!([1]))
            ])
        );
        // Both keys: a single call.
        assert_eq!(
            parse_script(r#"{"tool": "t", "script": [{"tool": "x"}]}"#),
            Some(vec![(String::from("t"), Value::Null)])
        );
    }

    #[test]
    fn non_scripts_are_echoed() {
        assert_eq!(parse_script("hello"), None);
        assert_eq!(parse_script("[1, 2]"), None);
        assert_eq!(parse_script(r#"{"other": 1}"#), None);
        assert_eq!(parse_script(r#"{"script": [{"nottool": 1}]}"#), None);
    }
}
