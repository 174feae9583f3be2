//! The live tool loop over a model provider (API.md §8, DESIGN.md §3 rule 6).
//!
//! The request is journaled (ModelRequested) before it is sent; text and reasoning
//! deltas are shown as they arrive; the whole response is journaled (ModelResponded)
//! before any tool it asks for runs. On resume a journaled response is never asked
//! for again, and a request without a response is sent again.

use std::collections::BTreeMap;
use std::sync::Arc;

use flowai_storage::payloads::{self, ChunkRecord, Json, ToolCallRecord, UsageRecord};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::driver::{Conversation, Driver, Invocation};
use crate::error::EngineError;
use crate::events::{Event, finish_event_json};
use crate::providers::{
    self, ChatMessage, Chunk, ChunkKind, ModelClient, ModelRequest, ModelResponse, Protocol,
    ProviderConfig, ToolDef,
};
use crate::spec::{CompiledAgent, CompiledSpec, InterpreterChoice};

/// Model calls of one invocation when `maxTurns` is unset.
const DEFAULT_MAX_MODEL_CALLS: u32 = 50;
const MAX_TOKENS: u32 = 4096;

fn protocol_of(key: &str, interpreter: &InterpreterChoice) -> Protocol {
    match interpreter {
        InterpreterChoice::OpenAiCompatible => Protocol::OpenAiCompatible,
        InterpreterChoice::Anthropic => Protocol::Anthropic,
        _ if key == "anthropic" => Protocol::Anthropic,
        _ => Protocol::OpenAiCompatible,
    }
}

/// The provider key an agent talks to under this interpreter.
pub(crate) fn provider_key(agent: &CompiledAgent, interpreter: &InterpreterChoice) -> String {
    match interpreter {
        InterpreterChoice::Anthropic => String::from("anthropic"),
        InterpreterChoice::OpenAiCompatible => String::from("openai-compatible"),
        _ => agent.provider_key.clone(),
    }
}

/// Builds one client per provider the agents use; keys are resolved only for live
/// interpreters (API.md §2.3).
pub(crate) fn build_clients(
    compiled: &CompiledSpec,
    interpreter: &InterpreterChoice,
    env: &(dyn Fn(&str) -> Option<String> + Send + Sync),
) -> Result<BTreeMap<String, Arc<dyn ModelClient>>, EngineError> {
    let mut clients = BTreeMap::new();
    if interpreter.is_deterministic() {
        return Ok(clients);
    }
    for agent in &compiled.agents {
        let key = provider_key(agent, interpreter);
        if clients.contains_key(&key) {
            continue;
        }
        let Some(config) = compiled.spec.providers.get(&key) else {
            return Err(EngineError::InvalidArgument(match interpreter {
                InterpreterChoice::Anthropic => {
                    String::from("interpreter='anthropic' requires an anthropic provider")
                }
                _ => format!(
                    "agent '{}' references provider '{key}' for model '{}', but no such provider is declared in RuntimeSpec.providers",
                    agent.name, agent.model_id
                ),
            }));
        };
        let protocol = protocol_of(&key, interpreter);
        let config = ProviderConfig::from_json(&key, protocol, config, env).map_err(|e| {
            EngineError::InvalidArgument(format!(
                "agent '{}' (model '{}', provider '{key}'): {e}",
                agent.name, agent.model_id
            ))
        })?;
        let client = providers::client_for(&config)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        clients.insert(key, client);
    }
    Ok(clients)
}

fn memory_messages(memory: &[Json]) -> Vec<ChatMessage> {
    let mut messages = Vec::new();
    for entry in memory {
        let Ok(value) = serde_json::from_str::<Value>(entry.get()) else {
            continue;
        };
        let text = value
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        match value.get("role").and_then(Value::as_str) {
            Some("user") => messages.push(ChatMessage::User { text }),
            Some("assistant") => messages.push(ChatMessage::Assistant {
                text,
                tool_calls: Vec::new(),
            }),
            // Tool exchanges of earlier runs are summarized by the assistant text that
            // followed them; replaying them would need their original call ids.
            _ => {}
        }
    }
    messages
}

fn summaries(
    agent: &CompiledAgent,
    response: &ModelResponse,
    usage: &UsageRecord,
) -> Result<Json, EngineError> {
    let cost = json!({
        "type": "data-cost-summary",
        "data": {
            "agents": [{"agentName": agent.name, "model": agent.model_id, "usage": usage}],
            "totalPromptTokens": usage.prompt_tokens,
            "totalCompletionTokens": usage.completion_tokens,
            "totalCacheReadInputTokens": usage.cache_read_input_tokens,
            "totalCacheCreationInputTokens": usage.cache_creation_input_tokens,
            "totalTokens": usage.total_tokens,
        }
    });
    let mut latency = json!({
        "type": "data-latency-summary",
        "data": {
            "totalDurationMs": response.duration_ms,
            "phases": {"llmTimeMs": response.duration_ms, "toolTimeMs": 0, "subAgentTimeMs": 0, "llmCalls": 1},
            "toolTimings": [],
            "retryCount": response.retries,
            "hadTimeout": response.had_timeout,
        }
    });
    if let Some(data) = latency.get_mut("data").and_then(Value::as_object_mut) {
        if let Some(ttft) = response.ttft_ms {
            data.insert(String::from("ttftMs"), json!(ttft));
        }
        if !response.retry_events.is_empty() {
            data.insert(
                String::from("retryEvents"),
                serde_json::to_value(&response.retry_events).unwrap_or(Value::Null),
            );
        }
    }
    serde_json::value::to_raw_value(&json!([cost, latency]))
        .map_err(|e| EngineError::Internal(format!("cannot encode summaries: {e}")))
}

fn chunk_event(chunk: &Chunk) -> Event {
    let kind = match chunk.kind {
        ChunkKind::Text => "text",
        ChunkKind::Reasoning => "reasoning",
    };
    Event::from_json_text(json!({"type": kind, "text": chunk.text}).to_string())
}

fn record_of(
    agent: &CompiledAgent,
    invocation_id: &str,
    turn: u32,
    response: &ModelResponse,
) -> Result<payloads::ModelResponded, EngineError> {
    let usage = UsageRecord {
        prompt_tokens: response.usage.prompt_tokens,
        completion_tokens: response.usage.completion_tokens,
        cache_read_input_tokens: response.usage.cache_read_input_tokens,
        cache_creation_input_tokens: response.usage.cache_creation_input_tokens,
        total_tokens: response.usage.total_tokens,
    };
    let mut tool_calls = Vec::with_capacity(response.tool_calls.len());
    for call in &response.tool_calls {
        tool_calls.push(ToolCallRecord {
            id: call.id.clone(),
            name: call.name.clone(),
            args: serde_json::value::RawValue::from_string(call.args.clone()).map_err(|e| {
                EngineError::Internal(format!("tool call arguments are not JSON: {e}"))
            })?,
        });
    }
    Ok(payloads::ModelResponded {
        agent: agent.name.clone(),
        invocation_id: invocation_id.to_owned(),
        turn,
        model: agent.model_id.clone(),
        chunks: response
            .chunks
            .iter()
            .map(|c| ChunkRecord {
                kind: String::from(match c.kind {
                    ChunkKind::Text => "text",
                    ChunkKind::Reasoning => "reasoning",
                }),
                text: c.text.clone(),
            })
            .collect(),
        tool_calls,
        summaries: Some(summaries(agent, response, &usage)?),
        usage,
        finish_reason: serde_json::to_value(response.finish_reason)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from("stop")),
        finish_after_tools: false,
        error: None,
    })
}

/// One model call, live: the request is durable first, deltas are shown as they
/// arrive, and the response is recorded with the count of events already shown.
async fn call_live(
    driver: &mut Driver,
    agent: &CompiledAgent,
    invocation_id: &str,
    turn: u32,
    client: Arc<dyn ModelClient>,
    request: ModelRequest,
) -> Result<payloads::ModelResponded, EngineError> {
    driver.journal().flush().await?;
    driver
        .emit(Event::from_json_text(String::from(
            "{\"type\":\"step-start\"}",
        )))
        .await;
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    let mut emitted = 1usize;
    let result = {
        let mut on_chunk = move |chunk: &Chunk| {
            let _ = tx.send(chunk.clone());
        };
        let call = client.complete(&request, &mut on_chunk);
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                Some(chunk) = rx.recv() => {
                    emitted += 1;
                    driver.emit(chunk_event(&chunk)).await;
                }
                result = &mut call => break result,
            }
        }
    };
    while let Ok(chunk) = rx.try_recv() {
        emitted += 1;
        driver.emit(chunk_event(&chunk)).await;
    }
    let record = match result {
        Ok(response) => record_of(agent, invocation_id, turn, &response)?,
        Err(error) => payloads::ModelResponded {
            agent: agent.name.clone(),
            invocation_id: invocation_id.to_owned(),
            turn,
            model: agent.model_id.clone(),
            chunks: Vec::new(),
            tool_calls: Vec::new(),
            usage: UsageRecord::default(),
            finish_reason: String::from("stop"),
            finish_after_tools: false,
            summaries: None,
            error: Some(error.to_string()),
        },
    };
    // A failed call keeps only step-start as shown; its error event comes from the record.
    let shown = if record.error.is_some() { 1 } else { emitted };
    driver.journal().push_streamed(&record, Vec::new(), shown)?;
    Ok(record)
}

/// The live tool loop of one invocation.
pub(crate) async fn agent_turns(
    driver: &mut Driver,
    inv: &Invocation<'_>,
    prompt: &str,
    memory: &[Json],
    conversation: &mut Conversation,
) -> Result<Result<String, String>, EngineError> {
    let agent = inv.agent;
    let invocation_id = inv.invocation_id.as_str();
    let interpreter = driver.shared().interpreter.clone();
    let key = provider_key(agent, &interpreter);
    let client = driver.shared().models.get(&key).cloned();
    let mut messages = memory_messages(memory);
    messages.push(ChatMessage::User {
        text: prompt.to_owned(),
    });
    let tools: Vec<ToolDef> = agent
        .tools
        .iter()
        .map(|t| ToolDef {
            name: t.name.clone(),
            description: t.description.clone(),
            input_schema: t.input_schema.clone(),
        })
        .collect();
    let max_calls = agent.max_turns.unwrap_or(DEFAULT_MAX_MODEL_CALLS);
    let mut response_text = String::new();
    let mut turn = 0u32;
    loop {
        if turn >= max_calls {
            let event = finish_event_json("length", &UsageRecord::default());
            if driver
                .journal()
                .take::<payloads::StreamEmitted>()
                .await?
                .is_none()
            {
                driver
                    .journal()
                    .push(&payloads::StreamEmitted { event }, Vec::new())?;
            }
            break;
        }
        turn += 1;
        let request = ModelRequest {
            model: agent.model_id.clone(),
            system: agent.system_prompt.clone(),
            messages: messages.clone(),
            tools: tools.clone(),
            max_tokens: MAX_TOKENS,
        };
        let hash = providers::request_hash(&request);
        match driver.journal().take::<payloads::ModelRequested>().await? {
            Some((seq, recorded)) => {
                if recorded.request_hash != hash {
                    return Err(driver.nondeterminism(
                        seq,
                        format!(
                            "model request {} to {}",
                            recorded.request_hash, recorded.model
                        ),
                        format!("model request {hash} to {}", agent.model_id),
                    ));
                }
            }
            None => {
                driver.journal().push(
                    &payloads::ModelRequested {
                        agent: agent.name.clone(),
                        invocation_id: invocation_id.to_owned(),
                        turn,
                        provider: key.clone(),
                        model: agent.model_id.clone(),
                        request_hash: hash,
                    },
                    Vec::new(),
                )?;
            }
        }
        let responded = match driver.journal().take::<payloads::ModelResponded>().await? {
            Some((_, recorded)) => recorded,
            None => {
                let Some(client) = client.clone() else {
                    return Err(EngineError::InvalidArgument(format!(
                        "no model client for provider '{key}'"
                    )));
                };
                call_live(driver, agent, invocation_id, turn, client, request).await?
            }
        };
        if let Some(error) = responded.error {
            return Ok(Err(error));
        }
        let text: String = responded
            .chunks
            .iter()
            .filter(|c| c.kind == "text")
            .map(|c| c.text.as_str())
            .collect();
        response_text.push_str(&text);
        if responded.tool_calls.is_empty() {
            break;
        }
        let calls: Vec<providers::ToolCall> = responded
            .tool_calls
            .iter()
            .map(|c| providers::ToolCall {
                id: c.id.clone(),
                name: c.name.clone(),
                args: c.args.get().to_owned(),
            })
            .collect();
        messages.push(ChatMessage::Assistant {
            text,
            tool_calls: calls,
        });
        for call in &responded.tool_calls {
            let outcome = driver.run_tool_call(inv, call, false).await?;
            conversation.push_tool_call(call, &outcome.value);
            messages.push(ChatMessage::ToolResult {
                tool_use_id: call.id.clone(),
                content: outcome.value.to_string(),
                is_error: outcome.is_error,
            });
        }
    }
    Ok(Ok(response_text))
}
