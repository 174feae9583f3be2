//! Content-addressed reference ids (DESIGN §6).

use crate::StoreError;

/// Id of a reference: lowercase hex of the first 16 bytes of
/// `blake3(len(tenant) ‖ tenant ‖ len(kind) ‖ kind ‖ jcs(value))`, lengths as u32 big-endian
/// and `jcs` the RFC 8785 canonical JSON of the value. The same value in the same tenant and
/// kind always gets the same id, whatever its key order or number spelling.
pub fn reference_id(
    tenant: &str,
    kind: &str,
    value: &serde_json::Value,
) -> Result<String, StoreError> {
    let canonical =
        serde_json_canonicalizer::to_vec(value).map_err(|e| StoreError::InvalidInput {
            what: format!("reference value of kind {kind:?} has no canonical JSON form: {e}"),
        })?;
    let mut hasher = blake3::Hasher::new();
    for part in [tenant, kind] {
        let len = u32::try_from(part.len()).map_err(|_| StoreError::InvalidInput {
            what: format!(
                "reference tenant or kind longer than 4 GiB ({} bytes)",
                part.len()
            ),
        })?;
        hasher.update(&len.to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.update(&canonical);
    let hash = hasher.finalize();
    let mut id = String::with_capacity(32);
    for byte in &hash.as_bytes()[..16] {
        id.push_str(&format!("{byte:02x}"));
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn id_is_canonical_and_scoped() {
        let a = reference_id("t1", "doc", &json!({"b": 1, "a": [1.0, "x"]})).unwrap();
        let b = reference_id("t1", "doc", &json!({"a": [1, "x"], "b": 1})).unwrap();
        assert_eq!(a, b, "key order and number spelling do not change the id");
        assert_eq!(a.len(), 32);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_ne!(
            a,
            reference_id("t2", "doc", &json!({"a": [1, "x"], "b": 1})).unwrap()
        );
        assert_ne!(
            a,
            reference_id("t1", "doc2", &json!({"a": [1, "x"], "b": 1})).unwrap()
        );
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(
            reference_id("ab", "c", &json!(1)).unwrap(),
            reference_id("a", "bc", &json!(1)).unwrap()
        );
    }

    #[test]
    fn id_matches_the_documented_construction() {
        let mut input = Vec::new();
        input.extend_from_slice(&2u32.to_be_bytes());
        input.extend_from_slice(b"t1");
        input.extend_from_slice(&3u32.to_be_bytes());
        input.extend_from_slice(b"doc");
        input.extend_from_slice(br#"{"a":1,"b":[true,null]}"#);
        let expected: String = blake3::hash(&input).as_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let got = reference_id("t1", "doc", &json!({"b": [true, null], "a": 1})).unwrap();
        assert_eq!(got, expected);
    }
}
