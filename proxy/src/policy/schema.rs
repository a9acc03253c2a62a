//! The policy types as an OpenAPI schema the API server validates with:
//! `deploy/crds/` is generated from the same serde types weir parses
//! (`weir crds`), so a field the API server accepts is a field weir reads,
//! and a typo fails at `kubectl apply`, not only in the operator's verdict.
//!
//! Kubernetes wants a structural schema: every node typed, no `$ref`, no
//! `additionalProperties: false` beside `properties` (unknown fields are
//! pruned or, with kubectl's strict validation, refused). [`structural`]
//! makes schemars' output one.

use schemars::JsonSchema;
use schemars::r#gen::SchemaSettings;

use super::document::Rule;

/// The schema of `T`, inlined and structural.
pub fn schema_of<T: JsonSchema>() -> serde_json::Value {
    let settings = SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.option_nullable = false;
        s.option_add_null_type = false;
        s.meta_schema = None;
    });
    let schema = settings.into_generator().into_root_schema_for::<T>();
    let mut value = serde_json::to_value(schema.schema).expect("a schema is JSON");
    structural(&mut value);
    value
}

/// One policy rule (`spec`, an entry of `specs`).
pub fn rule() -> serde_json::Value {
    schema_of::<Rule>()
}

/// What Kubernetes refuses or would apply as defaults, taken out.
pub fn structural(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for key in ["$schema", "title", "definitions", "default", "readOnly", "writeOnly", "nullable"] {
                map.remove(key);
            }
            // an enum whose variants carry doc comments comes as one branch
            // per variant; Kubernetes wants the node itself typed
            if let Some(serde_json::Value::Array(branches)) = map.get("oneOf")
                && let Some(values) = string_enum(branches)
            {
                map.remove("oneOf");
                map.insert("type".into(), "string".into());
                map.insert("enum".into(), values.into());
            }
            if map.get("additionalProperties") == Some(&serde_json::Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            // the API server knows int32 and int64; unsigned widths are
            // said by `minimum`
            if let Some(format) = map.get("format").and_then(|f| f.as_str())
                && !matches!(format, "int32" | "int64")
            {
                map.remove("format");
            }
            for (_, inner) in map.iter_mut() {
                structural(inner);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(structural),
        _ => {}
    }
}

/// The values of `oneOf` branches that are each a string enum.
fn string_enum(branches: &[serde_json::Value]) -> Option<Vec<serde_json::Value>> {
    let mut values = Vec::new();
    for branch in branches {
        if branch.get("type")?.as_str()? != "string" {
            return None;
        }
        values.extend(branch.get("enum")?.as_array()?.iter().cloned());
    }
    Some(values)
}
