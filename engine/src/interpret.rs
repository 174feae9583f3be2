//! The deterministic interpreters of API.md §4: `noop`, mock (`testing`) and
//! `scripted`. Each decides one turn per agent invocation from the prompt alone; the
//! decision is journaled as ModelResponded like a provider's answer, so every
//! interpreter replays the same way.

use flowai_storage::payloads::{self, ChunkRecord, ToolCallRecord, UsageRecord};
use std::collections::BTreeMap;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::EngineError;
use crate::spec::{CompiledAgent, InterpreterChoice};

/// What a deterministic interpreter decided for one turn.
#[derive(Debug)]
pub(crate) enum TurnPlan {
    /// Text only (`noop` emits none; mock and non-JSON scripted prompts one chunk).
    Text(Option<String>),
    /// Scripted tool calls (name, arguments as JSON text), dispatched in order inside
    /// the turn.
    Calls(Vec<(String, Box<RawValue>)>),
    /// The interpreter cannot act (e.g. a script for an agent without tools).
    Error(String),
}

/// Parses a scripted prompt: `{"tool": ..., "args": ...}` or `{"script": [...]}`.
/// Anything else is not a script and is echoed.
///
/// A call's arguments are kept as the prompt spells them: a script carries every call's
/// arguments (a megabyte for a thousand 1 KB steps), and building them as values only to
/// print them again for the journal took ≈ 0.2 ms of a 100-call script's 1 ms start. The
/// prompt is first read through once as a value would be (every number in range, at
/// most serde_json's nesting depth), so what is a script is decided exactly as when it
/// was parsed into a value: a run recorded then replays the same decision.
pub(crate) fn parse_script(prompt: &str) -> Option<Vec<(String, Box<RawValue>)>> {
    serde_json::from_str::<AnyJson>(prompt).ok()?;
    let mut object: BTreeMap<String, &RawValue> = serde_json::from_str(prompt).ok()?;
    let call = |mut item: BTreeMap<String, &RawValue>| -> Option<(String, Box<RawValue>)> {
        let tool: String = serde_json::from_str(item.remove("tool")?.get()).ok()?;
        let args = item.remove("args").unwrap_or(RawValue::NULL).to_owned();
        Some((tool, args))
    };
    if object.contains_key("tool") {
        return call(object).map(|c| vec![c]);
    }
    let script: Vec<&RawValue> = serde_json::from_str(object.remove("script")?.get()).ok()?;
    script
        .into_iter()
        .map(|item| call(serde_json::from_str(item.get()).ok()?))
        .collect()
}

/// Any JSON value, read the way [`serde_json::Value`] reads it (numbers converted, so one
/// out of range fails; nesting limited alike) but kept nowhere.
struct AnyJson;

impl<'de> Deserialize<'de> for AnyJson {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<AnyJson, D::Error> {
        deserializer.deserialize_any(AnyJsonVisitor)
    }
}

struct AnyJsonVisitor;

impl<'de> Visitor<'de> for AnyJsonVisitor {
    type Value = AnyJson;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_i64<E>(self, _: i64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_u64<E>(self, _: u64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_f64<E>(self, _: f64) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_str<E>(self, _: &str) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_unit<E>(self) -> Result<AnyJson, E> {
        Ok(AnyJson)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<AnyJson, A::Error> {
        while seq.next_element::<AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AnyJson, A::Error> {
        while map.next_entry::<AnyJson, AnyJson>()?.is_some() {}
        Ok(AnyJson)
    }
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
                        args,
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
    use serde_json::{Value, json};

    /// The calls as (name, value) pairs, for comparing.
    fn calls(prompt: &str) -> Option<Vec<(String, Value)>> {
        parse_script(prompt).map(|calls| {
            calls
                .into_iter()
                .map(|(name, args)| (name, serde_json::from_str(args.get()).unwrap()))
                .collect()
        })
    }

    #[test]
    fn single_call_and_script_parse() {
        assert_eq!(
            calls(r#"{"tool": "t", "args": {"a": 1}}"#),
            Some(vec![(String::from("t"), json!({"a": 1}))])
        );
        assert_eq!(
            calls(r#"{"script": [{"tool": "a"}, {"tool": "b", "args": [1]}]}"#),
            Some(vec![
                (String::from("a"), Value::Null),
                (String::from("b"), json!([1]))
            ])
        );
        // Both keys: a single call.
        assert_eq!(
            calls(r#"{"tool": "t", "script": [{"tool": "x"}]}"#),
            Some(vec![(String::from("t"), Value::Null)])
        );
        // An escaped tool name is read as the string it spells; a repeated key's last
        // value counts, as in a parsed object.
        assert_eq!(
            calls(r#"{"tool": "a\u0062", "args": 1, "args": 2}"#),
            Some(vec![(String::from("ab"), json!(2))])
        );
    }

    #[test]
    fn arguments_keep_the_prompts_text() {
        let parsed =
            parse_script(r#"{"script": [{"args": {"z": 1, "a": [1.50, "x"]}, "tool": "t"}]}"#)
                .unwrap();
        assert_eq!(parsed[0].1.get(), r#"{"z": 1, "a": [1.50, "x"]}"#);
    }

    #[test]
    fn non_scripts_are_echoed() {
        assert_eq!(calls("hello"), None);
        assert_eq!(calls("[1, 2]"), None);
        assert_eq!(calls(r#"{"other": 1}"#), None);
        assert_eq!(calls(r#"{"script": [{"nottool": 1}]}"#), None);
        assert_eq!(calls(r#"{"tool": 1}"#), None);
        assert_eq!(calls(r#"{"script": [{"tool": "t"}, 2]}"#), None);
        assert_eq!(calls(r#"{"tool": "t"} trailing"#), None);
    }

    /// What a value would not have parsed is not a script, as before the arguments were
    /// kept as text: runs recorded then replay the same decision.
    #[test]
    fn prompts_a_value_cannot_hold_are_echoed() {
        assert!(serde_json::from_str::<Value>(r#"{"tool": "t", "args": 1e400}"#).is_err());
        assert_eq!(calls(r#"{"tool": "t", "args": 1e400}"#), None);
        assert_eq!(calls(r#"{"tool": "t", "other": [-1e999]}"#), None);
        assert_eq!(calls(r#"{"tool": "t", "args": "\ud800"}"#), None);
        let deep = format!(
            r#"{{"tool": "t", "args": {}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        assert_eq!(calls(&deep), None);
        let fine = format!(
            r#"{{"tool": "t", "args": {}{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(calls(&fine).is_some());
    }
}
