//! Spec hashing, secret redaction and spec diffing for recorded specs (DESIGN.md §5).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::spec::routing::InterpreterChoice;
use crate::spec::wire::RuntimeSpec;
use crate::toolkits::HostToolDecl;

/// What a redacted secret is replaced by.
pub const REDACTED: &str = "<redacted>";

/// Lowercase blake3 hex of the RFC 8785 canonical JSON of `recorded_spec_json`:
/// independent of key order and number formatting.
pub fn spec_hash(recorded_spec_json: &Value) -> String {
    let mut hasher = blake3::Hasher::new();
    // JCS only fails on non-finite floats, which a serde_json Value cannot hold, and
    // writing into a hasher cannot fail; fall back to the compact text all the same so
    // a hash is always produced.
    if serde_json_canonicalizer::to_writer(recorded_spec_json, &mut hasher).is_err() {
        hasher.reset();
        hasher.update(recorded_spec_json.to_string().as_bytes());
    }
    hasher.finalize().to_hex().to_string()
}

/// Replaces each `providers.<k>.apiKey` and every value under `providers.<k>.headers`
/// with `"<redacted>"`, so a recorded spec never holds a secret.
pub fn redact_secrets(spec_json: &mut Value) {
    let Some(providers) = spec_json
        .get_mut("providers")
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    for config in providers.values_mut() {
        let Some(config) = config.as_object_mut() else {
            continue;
        };
        if let Some(key) = config.get_mut("apiKey")
            && !key.is_null()
        {
            *key = Value::String(REDACTED.to_owned());
        }
        if let Some(headers) = config.get_mut("headers").and_then(Value::as_object_mut) {
            for value in headers.values_mut() {
                *value = Value::String(REDACTED.to_owned());
            }
        }
    }
}

/// The document a run records as "the spec it was started under" (DESIGN.md §5): the
/// wire RuntimeSpec with secrets redacted, the host tool declarations, the registered
/// predicate ids (sorted) and the interpreter. Its [`spec_hash`] is the run's spec hash.
pub fn recorded_spec(
    spec: &RuntimeSpec,
    host_tools: &[HostToolDecl],
    predicates: &BTreeSet<String>,
    interpreter: &InterpreterChoice,
) -> Value {
    let mut wire = spec.to_value();
    redact_secrets(&mut wire);
    let mock = match interpreter {
        InterpreterChoice::Mock(text) => Value::String(text.clone()),
        _ => Value::Null,
    };
    json!({
        "runtimeSpec": wire,
        "hostTools": serde_json::to_value(host_tools).unwrap_or(Value::Null),
        "predicates": predicates,
        "interpreter": interpreter.as_str(),
        "mockResponse": mock,
    })
}

fn is_plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn push_key(path: &str, key: &str) -> String {
    if is_plain_key(key) {
        if path.is_empty() {
            key.to_owned()
        } else {
            format!("{path}.{key}")
        }
    } else {
        // JSON-quoted so that any key stays unambiguous.
        format!("{path}[{}]", Value::String(key.to_owned()))
    }
}

fn diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            // Both maps iterate in key order, so the first differing key is stable.
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => diff(u, v, &push_key(path, k)),
                _ => Some(push_key(path, k)),
            })
        }
        (Value::Array(x), Value::Array(y)) => {
            let common = x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| diff(u, v, &format!("{path}[{i}]")));
            common.or_else(|| {
                (x.len() != y.len()).then(|| format!("{path}[{}]", x.len().min(y.len())))
            })
        }
        _ if a == b => None,
        _ => Some(path.to_owned()),
    }
}

/// The first JSON path at which two specs differ, e.g. `agents[1].systemPrompt`;
/// `"(root)"` when the documents differ at the top; `None` when they are equal.
pub fn first_difference(a: &Value, b: &Value) -> Option<String> {
    diff(a, b, "").map(|p| if p.is_empty() { "(root)".to_owned() } else { p })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hash_ignores_key_order_and_number_spelling() {
        let a: Value =
            serde_json::from_str(r#"{"a": 1, "b": {"x": 1.0, "y": [1, 2]}}"#).expect("json");
        let b: Value =
            serde_json::from_str(r#"{"b": {"y": [1, 2], "x": 1}, "a": 1}"#).expect("json");
        assert_eq!(spec_hash(&a), spec_hash(&b));
        assert_eq!(spec_hash(&a).len(), 64);
        assert_ne!(spec_hash(&a), spec_hash(&json!({"a": 2})));
    }

    #[test]
    fn differences() {
        let a = json!({"agents": [{"name": "a", "systemPrompt": "x"}, {"name": "b", "systemPrompt": "y"}]});
        let mut b = a.clone();
        b["agents"][1]["systemPrompt"] = json!("z");
        assert_eq!(first_difference(&a, &a), None);
        assert_eq!(
            first_difference(&a, &b).as_deref(),
            Some("agents[1].systemPrompt")
        );
        assert_eq!(
            first_difference(&json!([1]), &json!([1, 2])).as_deref(),
            Some("[1]")
        );
        assert_eq!(
            first_difference(&json!(1), &json!(2)).as_deref(),
            Some("(root)")
        );
        assert_eq!(
            first_difference(&json!({"p": {"a.b": 1}}), &json!({"p": {"a.b": 2}})).as_deref(),
            Some("p[\"a.b\"]")
        );
        assert_eq!(
            first_difference(&json!({"a": 1}), &json!({"a": 1, "b": 2})).as_deref(),
            Some("b")
        );
    }

    fn arb_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-c.]{1,2}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn difference_found_iff_unequal(a in arb_json(), b in arb_json()) {
            proptest::prop_assert_eq!(first_difference(&a, &b).is_none(), a == b);
            proptest::prop_assert_eq!(first_difference(&a, &a.clone()), None);
            proptest::prop_assert_eq!(spec_hash(&a) == spec_hash(&b), a == b);
        }
    }
}
