//! `deploy/crds/`, generated from the types weir reads: the policy kinds'
//! `spec`/`specs` from the policy document types (`policy/schema.rs`), the
//! WasmFilter's from its [`Spec`](super::filters::Spec). `weir crds --out
//! deploy/crds` writes them; a test fails when the files are not what this
//! generates, so the schema cannot drift from the parser.

use serde_json::json;

use super::filters::{self, WASM_FILTERS};
use super::resources::{IDENTITIES, POLICIES, Resource};
use crate::policy::schema;

/// Every CRD: its file name under `deploy/crds/` and its text.
pub fn all() -> Vec<(String, String)> {
    let mut crds = Vec::new();
    for resource in POLICIES.iter().filter(|r| r.api_version != "networking.k8s.io/v1") {
        let cilium = resource.api_version.starts_with("cilium.io/");
        let comment = if cilium {
            "Cilium's kind, for clusters without Cilium: where Cilium runs, its own CRD\n\
             serves the same objects and weir reads those (do not apply this one there)."
        } else {
            "Weir's own kind: the CiliumNetworkPolicy shape, and the fields weir adds\n\
             (`wasm` rules), for clusters that also run Cilium."
        };
        let comment = format!(
            "{comment}\n\
             The schema is generated from the types weir parses policies with (`weir\n\
             crds`): the API server refuses a field weir would not read. What a field\n\
             means beyond its shape (a regex, a selector weir cannot enforce exactly) is\n\
             judged by weir and written on the object by `weir operator`."
        );
        let mut rule = schema::rule();
        if cilium {
            // Weir's field: on Cilium's kinds audit is an annotation (Cilium's
            // own CRD would prune the field), and weir refuses the field there
            if let Some(properties) = rule.get_mut("properties").and_then(|p| p.as_object_mut()) {
                properties.remove("enforcementMode");
            }
        }
        let body = json!({
            "type": "object",
            "properties": {
                "spec": rule,
                "specs": {"type": "array", "items": rule},
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            },
        });
        let short = short_names(resource);
        crds.push(crd(resource, &comment, &short, body, valid_column()));
    }
    crds.push(crd(
        &IDENTITIES,
        "Cluster-wide security identities: one object per number (its name), holding\n\
         the label set the number stands for. Nodes create them for their pods' label\n\
         sets (a create conflict settles a race between nodes: they try the same\n\
         numbers in the same order); `weir operator` deletes the ones no pod has used\n\
         for its grace period. Objects are written by weir, not by people.",
        &["wid"],
        json!({
            "type": "object",
            "required": ["securityLabels"],
            "properties": {
                "metadata": {
                    "type": "object",
                    "properties": {"name": {"type": "string", "pattern": "^[0-9]+$", "maxLength": 5}},
                },
                "securityLabels": {
                    "description": "The labels the number stands for, `source:key` to value (k8s:app: web).",
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": {"type": "string"},
                    "x-kubernetes-validations": [
                        {"rule": "self == oldSelf", "message": "an identity's labels never change; allocate another number"}
                    ],
                },
            },
        }),
        json!([
            {"name": "Labels", "type": "string", "jsonPath": ".securityLabels"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]),
    ));
    let mut spec = schema::schema_of::<filters::Spec>();
    spec["x-kubernetes-validations"] = json!([
        {"rule": "has(self.configMap) != has(self.url)", "message": "give exactly one of configMap and url"},
        {"rule": "!has(self.url) || has(self.sha256)", "message": "sha256 is required with url"},
    ]);
    spec["properties"]["url"]["pattern"] = json!("^https?://");
    spec["properties"]["sha256"]["pattern"] = json!("^[0-9a-fA-F]{64}$");
    spec["properties"]["configMap"]["properties"]["name"]["minLength"] = json!(1);
    spec["properties"]["configMap"]["properties"]["key"]["minLength"] = json!(1);
    crds.push(crd(
        &WASM_FILTERS,
        "Custom filters as objects: a WasmFilter names a WebAssembly filter component\n\
         (a key of a ConfigMap in weir's namespace, or a URL with the component's\n\
         sha256) with the failure policy and limits weir.yaml gives a filter; a `wasm`\n\
         rule of a policy names it by the object's name. Cluster-scoped: a filter runs\n\
         inside every node's proxy, so writing one is the platform team's right.\n\
         Nodes check the digest and load the component; a version that does not load\n\
         leaves the last good one in force, and a filter that never loaded makes the\n\
         rules naming it refuse their traffic. `weir operator` writes the verdict\n\
         (status.conditions, type Valid) and a Warning Event. Generated (`weir crds`).",
        &["wf"],
        json!({
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": spec,
                "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            },
        }),
        json!([
            {"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"},
            {"name": "Failure", "type": "string", "jsonPath": ".spec.failure"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ]),
    ));
    crds
}

fn short_names(resource: &Resource) -> Vec<&'static str> {
    match resource.kind {
        "CiliumNetworkPolicy" => vec!["cnp", "ciliumnp"],
        "CiliumClusterwideNetworkPolicy" => vec!["ccnp"],
        "WeirNetworkPolicy" => vec!["wnp"],
        "WeirClusterwideNetworkPolicy" => vec!["wcnp"],
        _ => vec![],
    }
}

fn valid_column() -> serde_json::Value {
    json!([
        {"name": "Valid", "type": "string", "jsonPath": ".status.conditions[?(@.type==\"Valid\")].status"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ])
}

fn crd(
    resource: &Resource,
    comment: &str,
    short_names: &[&str],
    schema: serde_json::Value,
    columns: serde_json::Value,
) -> (String, String) {
    let (group, version) = resource.api_version.split_once('/').expect("group/version");
    let kind = resource.kind;
    let singular = kind.to_ascii_lowercase();
    let mut version_entry = json!({
        "name": version,
        "served": true,
        "storage": true,
        "additionalPrinterColumns": columns,
        "schema": {"openAPIV3Schema": schema},
    });
    if resource.kind != IDENTITIES.kind {
        version_entry["subresources"] = json!({"status": {}});
    }
    let document = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{}.{group}", resource.plural)},
        "spec": {
            "group": group,
            "scope": if resource.namespaced { "Namespaced" } else { "Cluster" },
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": resource.plural,
                "singular": singular,
                "shortNames": short_names,
            },
            "versions": [version_entry],
        },
    });
    let comment: String = comment.lines().map(|line| format!("# {line}\n")).collect();
    let yaml = serde_yaml::to_string(&document).expect("YAML");
    (format!("{group}_{}.yaml", resource.plural), format!("{comment}{yaml}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn deploy_crds_are_what_weir_generates() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        let generated = super::all();
        for (file, text) in &generated {
            let written = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
            assert!(
                &written == text,
                "deploy/crds/{file} is not what `weir crds` generates: run `cargo run --bin weir -- crds --out deploy/crds`"
            );
        }
        let mut files: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        files.sort();
        let mut expected: Vec<String> = generated.into_iter().map(|(file, _)| file).collect();
        expected.sort();
        assert_eq!(files, expected, "deploy/crds/ holds only generated CRDs");
    }

    /// The schema takes what the policy documents of the tests hold: the
    /// fields weir reads are all there, with the shapes serde reads.
    #[test]
    fn the_rule_schema_names_the_fields_weir_reads() {
        let rule = crate::policy::schema::rule();
        let ports = &rule["properties"]["ingress"]["items"]["properties"]["toPorts"]["items"];
        assert_eq!(ports["properties"]["ports"]["items"]["properties"]["port"]["x-kubernetes-int-or-string"], true);
        let l7 = &ports["properties"]["rules"]["properties"];
        for field in ["http", "kafka", "dns", "l7proto", "l7", "wasm"] {
            assert!(l7.get(field).is_some(), "rules.{field} missing: {l7}");
        }
        assert_eq!(l7["wasm"]["items"]["properties"]["config"]["x-kubernetes-preserve-unknown-fields"], true);
        assert!(rule["properties"]["egress"]["items"]["properties"].get("toFQDNs").is_some());
        let text = rule.to_string();
        for refused in ["$ref", "additionalProperties\":false", "definitions", "nullable"] {
            assert!(!text.contains(refused), "{refused} in a structural schema: {text}");
        }
    }
}
