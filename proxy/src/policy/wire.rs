//! What the policy documents and the NetworkPolicy translation share: the
//! API groups and the wire form of a selector requirement. A leaf, so the
//! two need not import each other.

use serde::{Deserialize, Serialize};

pub const CILIUM_API: &str = "cilium.io/v2";
pub const WEIR_API: &str = "policy.weir.dev/v1alpha1";

/// One `matchExpressions` entry, as written.
#[derive(Clone, Debug, Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Option<Vec<String>>,
}

/// A field Cilium defines whose value weir takes as it is (and refuses by
/// name where it does not implement it): any JSON.
pub struct AnyValue;

impl schemars::JsonSchema for AnyValue {
    fn schema_name() -> String {
        "AnyValue".into()
    }

    fn json_schema(_: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
        let mut schema = schemars::schema::SchemaObject::default();
        schema.extensions.insert("x-kubernetes-preserve-unknown-fields".into(), true.into());
        schema.into()
    }
}
