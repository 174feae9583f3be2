//! Reference kinds and plan specs with their compiled schemas.

use std::collections::BTreeMap;
use std::fmt;

use jsonschema::Validator;
use serde_json::Value;

use crate::spec::error::{PlanRegistryError, ReferenceRegistryError};
use crate::spec::schema;
use crate::spec::wire::{PlanDisplayAlias, PlanDisplayStatus, PlanSpec, ReferenceSpec};

/// One reference kind: its schema, compiled, and its time to live.
#[derive(Clone)]
pub struct CompiledReference {
    pub name: String,
    pub schema: Value,
    pub ttl_ms: Option<u64>,
    validator: Validator,
}

impl CompiledReference {
    /// The errors listed in `"schema validation failed for kind '<k>': [...]"`.
    pub fn validate(&self, value: &Value) -> Result<(), Vec<String>> {
        schema::all_errors(&self.validator, value)
    }
}

impl fmt::Debug for CompiledReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledReference")
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("ttl_ms", &self.ttl_ms)
            .finish_non_exhaustive()
    }
}

/// Reference kind → compiled reference spec.
#[derive(Clone, Debug, Default)]
pub struct ReferenceRegistry {
    kinds: BTreeMap<String, CompiledReference>,
}

impl ReferenceRegistry {
    pub fn build(specs: &[ReferenceSpec]) -> Result<Self, ReferenceRegistryError> {
        let mut kinds = BTreeMap::new();
        for spec in specs {
            if kinds.contains_key(&spec.name) {
                return Err(ReferenceRegistryError::DuplicateName(spec.name.clone()));
            }
            let validator = schema::compile(&spec.schema).map_err(|message| {
                ReferenceRegistryError::SchemaCompilation {
                    kind: spec.name.clone(),
                    message,
                }
            })?;
            kinds.insert(
                spec.name.clone(),
                CompiledReference {
                    name: spec.name.clone(),
                    schema: spec.schema.clone(),
                    ttl_ms: spec.ttl_ms,
                    validator,
                },
            );
        }
        Ok(Self { kinds })
    }

    pub fn get(&self, kind: &str) -> Option<&CompiledReference> {
        self.kinds.get(kind)
    }

    pub fn contains(&self, kind: &str) -> bool {
        self.kinds.contains_key(kind)
    }

    /// Kinds in name order.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.kinds.keys().map(String::as_str)
    }
}

/// One plan spec: its body schema, compiled, and display aliases.
#[derive(Clone)]
pub struct CompiledPlanSpec {
    pub name: String,
    pub schema: Value,
    pub display_aliases: Vec<PlanDisplayAlias>,
    validator: Validator,
}

impl CompiledPlanSpec {
    /// The errors listed in `"schema validation failed for spec '<s>': [...]"`.
    pub fn validate(&self, body: &Value) -> Result<(), Vec<String>> {
        schema::all_errors(&self.validator, body)
    }

    /// The alias a status is displayed under, if the spec declares one.
    pub fn display_alias(&self, status: PlanDisplayStatus) -> Option<&str> {
        self.display_aliases
            .iter()
            .find(|a| a.status == status)
            .map(|a| a.alias.as_str())
    }
}

impl fmt::Debug for CompiledPlanSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledPlanSpec")
            .field("name", &self.name)
            .field("schema", &self.schema)
            .field("display_aliases", &self.display_aliases)
            .finish_non_exhaustive()
    }
}

/// Plan spec name → compiled plan spec.
#[derive(Clone, Debug, Default)]
pub struct PlanRegistry {
    specs: BTreeMap<String, CompiledPlanSpec>,
}

impl PlanRegistry {
    pub fn build(specs: &[PlanSpec]) -> Result<Self, PlanRegistryError> {
        let mut map = BTreeMap::new();
        for spec in specs {
            if map.contains_key(&spec.name) {
                return Err(PlanRegistryError::DuplicateName(spec.name.clone()));
            }
            let validator = schema::compile(&spec.schema).map_err(|message| {
                PlanRegistryError::SchemaCompilation {
                    spec: spec.name.clone(),
                    message,
                }
            })?;
            map.insert(
                spec.name.clone(),
                CompiledPlanSpec {
                    name: spec.name.clone(),
                    schema: spec.schema.clone(),
                    display_aliases: spec.display_aliases.clone(),
                    validator,
                },
            );
        }
        Ok(Self { specs: map })
    }

    pub fn get(&self, name: &str) -> Option<&CompiledPlanSpec> {
        self.specs.get(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.specs.contains_key(name)
    }

    /// Spec names in name order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.keys().map(String::as_str)
    }
}
