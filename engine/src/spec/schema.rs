//! JSON Schema compilation and error rendering shared by tools, plans and references.

use jsonschema::{ValidationError, Validator};
use serde_json::Value;

/// Compiles `schema` as draft 2020-12 unless its `$schema` names another draft.
///
/// jsonschema's own detection does exactly that (2020-12 is its default), and with
/// its default features off no `$ref` can reach the network or the file system.
pub(crate) fn compile(schema: &Value) -> Result<Validator, String> {
    jsonschema::options()
        .build(schema)
        .map_err(|e| e.to_string())
}

/// One validation error as `"<message>"` at the root, `"<pointer>: <message>"` below it.
pub(crate) fn render(error: &ValidationError<'_>) -> String {
    let path = error.instance_path().as_str();
    if path.is_empty() {
        error.to_string()
    } else {
        format!("{path}: {error}")
    }
}

/// The first error only: enough for a model to correct its tool call.
pub(crate) fn first_error(validator: &Validator, instance: &Value) -> Result<(), String> {
    validator.validate(instance).map_err(|e| render(&e))
}

/// Every error, in the validator's (deterministic) order.
pub(crate) fn all_errors(validator: &Validator, instance: &Value) -> Result<(), Vec<String>> {
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| render(&e))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_root_and_nested_errors() {
        let v = compile(&json!({
            "type": "object",
            "properties": {"limit": {"type": "integer"}},
            "required": ["query"]
        }))
        .expect("schema compiles");
        assert_eq!(
            first_error(&v, &json!({"limit": 1})),
            Err("\"query\" is a required property".to_owned())
        );
        assert_eq!(
            first_error(&v, &json!({"query": "q", "limit": "x"})),
            Err("/limit: \"x\" is not of type \"integer\"".to_owned())
        );
        let all = all_errors(&v, &json!({"limit": "x"})).expect_err("two errors");
        assert_eq!(all.len(), 2);
    }

    #[test]
    fn honours_declared_draft() {
        // Draft 4 reads a boolean exclusiveMaximum; 2020-12 would reject the schema.
        let v = compile(&json!({
            "$schema": "http://json-schema.org/draft-04/schema#",
            "maximum": 5, "exclusiveMaximum": true
        }))
        .expect("draft 4 schema compiles");
        assert!(!v.is_valid(&json!(5)));
        assert!(v.is_valid(&json!(4)));
    }

    #[test]
    fn rejects_bad_schema() {
        assert!(compile(&json!({"type": 12})).is_err());
        assert!(compile(&json!({"$ref": "https://example.invalid/x.json"})).is_err());
    }
}
