//! Policy documents as users write them: the CiliumNetworkPolicy schema.
//!
//! Accepted kinds:
//! - `cilium.io/v2` `CiliumNetworkPolicy` and `CiliumClusterwideNetworkPolicy`, as they are;
//! - `policy.weir.dev/v1alpha1` `WeirNetworkPolicy` and `WeirClusterwideNetworkPolicy`:
//!   the same schema under Weir's own group, for clusters that also run Cilium.
//!
//! Weir adds one L7 rule, `wasm`, naming a custom filter and its config.
//! Fields that Cilium defines but Weir does not implement yet are parsed and
//! then refused by name, never ignored: a policy must not silently mean less.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::wire::AnyValue;

pub use super::wire::{CILIUM_API, SelectorRequirement, WEIR_API};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum PolicyKind {
    /// Namespaced: selectors are confined to the policy's namespace.
    Namespaced,
    Clusterwide,
}

impl PolicyKind {
    pub fn from_api(api_version: &str, kind: &str) -> Option<Self> {
        match (api_version, kind) {
            (CILIUM_API, "CiliumNetworkPolicy") | (WEIR_API, "WeirNetworkPolicy") => Some(PolicyKind::Namespaced),
            (CILIUM_API, "CiliumClusterwideNetworkPolicy") | (WEIR_API, "WeirClusterwideNetworkPolicy") => {
                Some(PolicyKind::Clusterwide)
            }
            _ => None,
        }
    }
}

/// Kubernetes object metadata; unknown fields (uid, resourceVersion, …) are
/// accepted so that `kubectl get -o yaml` output loads as it is.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Read for [`AUDIT_ANNOTATION`]; the rest are the user's.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// On any policy kind, `"true"` audits every rule of the object: Cilium's own
/// CRD prunes fields it does not know, so on a CiliumNetworkPolicy
/// `enforcementMode` would vanish at `kubectl apply` and the policy enforce.
pub const AUDIT_ANNOTATION: &str = "policy.weir.dev/audit";

/// `spec.enforcementMode` (Weir kinds): whether a rule's verdicts are applied
/// or only reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EnforcementMode {
    /// Traffic the rule refuses is refused (the default).
    #[default]
    Enforce,
    /// The rule is evaluated on every connection and request as if enforced,
    /// the traffic passes, and what it would have refused is a flow with
    /// verdict `audited`.
    Audit,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyDocument {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Option<Rule>,
    #[serde(default)]
    pub specs: Option<Vec<Rule>>,
    #[serde(default)]
    pub status: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub endpoint_selector: Option<Selector>,
    #[serde(default)]
    pub node_selector: Option<Selector>,
    #[serde(default)]
    pub ingress: Option<Vec<IngressRule>>,
    #[serde(default)]
    pub ingress_deny: Option<Vec<IngressRule>>,
    #[serde(default)]
    pub egress: Option<Vec<EgressRule>>,
    #[serde(default)]
    pub egress_deny: Option<Vec<EgressRule>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub labels: Option<serde_yaml::Value>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enable_default_deny: Option<DefaultDeny>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub log: Option<serde_yaml::Value>,
    /// Weir's field (Weir kinds only; on Cilium kinds the annotation
    /// `policy.weir.dev/audit`).
    #[serde(default)]
    pub enforcement_mode: Option<EnforcementMode>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DefaultDeny {
    #[serde(default)]
    pub ingress: Option<bool>,
    #[serde(default)]
    pub egress: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Selector {
    #[serde(default)]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub match_expressions: Option<Vec<SelectorRequirement>>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default)]
    pub from_endpoints: Option<Vec<Selector>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub from_requires: Option<serde_yaml::Value>,
    #[serde(default, rename = "fromCIDR")]
    pub from_cidr: Option<Vec<String>>,
    #[serde(default, rename = "fromCIDRSet")]
    pub from_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub from_entities: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub from_groups: Option<serde_yaml::Value>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub from_nodes: Option<serde_yaml::Value>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, rename = "icmps")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub authentication: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EgressRule {
    #[serde(default)]
    pub to_endpoints: Option<Vec<Selector>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub to_requires: Option<serde_yaml::Value>,
    #[serde(default, rename = "toCIDR")]
    pub to_cidr: Option<Vec<String>>,
    #[serde(default, rename = "toCIDRSet")]
    pub to_cidr_set: Option<Vec<CidrRule>>,
    #[serde(default)]
    pub to_entities: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub to_services: Option<serde_yaml::Value>,
    #[serde(default, rename = "toFQDNs")]
    pub to_fqdns: Option<Vec<FqdnSelector>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub to_groups: Option<serde_yaml::Value>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub to_nodes: Option<serde_yaml::Value>,
    #[serde(default)]
    pub to_ports: Option<Vec<PortRule>>,
    #[serde(default, rename = "icmps")]
    pub icmps: Option<Vec<IcmpRule>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub authentication: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CidrRule {
    #[serde(default)]
    pub cidr: Option<String>,
    #[serde(default)]
    pub cidr_group_ref: Option<String>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub cidr_group_selector: Option<serde_yaml::Value>,
    #[serde(default)]
    pub except: Option<Vec<String>>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortRule {
    #[serde(default)]
    pub ports: Option<Vec<PortProtocol>>,
    #[serde(default)]
    pub rules: Option<L7Rules>,
    #[serde(default, rename = "terminatingTLS")]
    #[schemars(with = "Option<AnyValue>")]
    pub terminating_tls: Option<serde_yaml::Value>,
    #[serde(default, rename = "originatingTLS")]
    #[schemars(with = "Option<AnyValue>")]
    pub originating_tls: Option<serde_yaml::Value>,
    #[serde(default)]
    pub server_names: Option<Vec<String>>,
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub listener: Option<serde_yaml::Value>,
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortProtocol {
    #[serde(default)]
    pub port: Option<PortValue>,
    #[serde(default)]
    pub end_port: Option<i64>,
    #[serde(default)]
    pub protocol: Option<String>,
}

/// `icmps`: the ICMP messages a rule covers, by type (Cilium's ICMPRule). A
/// rule with `icmps` covers those messages only, so it may not have
/// `toPorts` too (as in Cilium).
#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IcmpRule {
    #[serde(default)]
    pub fields: Vec<IcmpField>,
}

#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IcmpField {
    /// `IPv4` (the default) or `IPv6`.
    #[serde(default)]
    pub family: Option<String>,
    /// The message type: a number (0-255) or Cilium's name for it
    /// (`EchoRequest`, `DestinationUnreachable`, ...).
    #[serde(rename = "type")]
    pub icmp_type: PortValue,
}

/// Cilium writes ports as strings ("80") but numbers are common too.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(i64),
    Text(String),
}

/// In the CRD schema: a number or a string, as Kubernetes writes ports.
impl JsonSchema for PortValue {
    fn schema_name() -> String {
        "PortValue".into()
    }

    fn json_schema(_: &mut schemars::r#gen::SchemaGenerator) -> schemars::schema::Schema {
        let mut schema = schemars::schema::SchemaObject::default();
        schema.extensions.insert("x-kubernetes-int-or-string".into(), true.into());
        schema.into()
    }
}

#[derive(Clone, Debug, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct L7Rules {
    #[serde(default)]
    pub http: Option<Vec<HttpRule>>,
    #[serde(default)]
    pub kafka: Option<Vec<KafkaRule>>,
    #[serde(default)]
    pub dns: Option<Vec<FqdnSelector>>,
    /// The parser for the port: `memcache`, `cassandra`, or the name of a
    /// stream filter (built-in like `r2d2`, or from weir.yaml `filters`).
    #[serde(default)]
    pub l7proto: Option<String>,
    /// Cilium's `PortRuleL7`: key-value rules the parser understands.
    #[serde(default)]
    pub l7: Option<Vec<std::collections::BTreeMap<String, String>>>,
    /// Weir: custom filters that must also allow the request.
    #[serde(default)]
    pub wasm: Option<Vec<WasmRule>>,
}

/// Cilium's `PortRuleHTTP`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_matches: Vec<HeaderMatch>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mismatch: Option<String>,
    #[serde(default, skip_serializing)]
    #[schemars(with = "Option<AnyValue>")]
    pub secret: Option<serde_yaml::Value>,
}

/// Cilium's `FQDNSelector`: used by `toFQDNs` and by `rules.dns`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FqdnSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_pattern: Option<String>,
}

/// Cilium's `PortRuleKafka`: every field optional, all given must match.
/// Checked by the built-in kafka-policy filter when the policy loads.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct KafkaRule {
    /// `produce` or `consume`: expands to the API keys the operation needs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, rename = "clientID", skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// Weir's `wasm` L7 rule.
#[derive(Clone, Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WasmRule {
    pub name: String,
    /// Handed to the filter's `configure`: a string as it is, anything else as JSON.
    #[serde(default)]
    #[schemars(with = "Option<AnyValue>")]
    pub config: Option<serde_yaml::Value>,
}

impl WasmRule {
    pub fn config_text(&self) -> String {
        match &self.config {
            None => String::new(),
            Some(serde_yaml::Value::String(s)) => s.clone(),
            Some(other) => serde_json::to_string(other).unwrap_or_default(),
        }
    }
}

/// One document of a policy file, parsed, with where it came from.
#[derive(Clone, Debug)]
pub struct SourcedDocument {
    pub file: String,
    /// Position in a multi-document file (0-based).
    pub index: usize,
    pub kind: PolicyKind,
    /// `apiVersion/kind` as written: a NetworkPolicy is read as the
    /// CiliumNetworkPolicy it means, but in Kubernetes it is its own object,
    /// so a NetworkPolicy and a CNP may share a name.
    pub written_as: String,
    pub document: PolicyDocument,
    /// An object of its own (the API server's), not a part of a file: when
    /// it is bad it is set aside alone, and the rest of the update goes in.
    pub independent: bool,
}

/// A problem in a policy or config file, located as precisely as we can.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyError {
    pub file: String,
    /// `policy default/allow-get`, or `document 2` when the name is unknown.
    pub object: Option<String>,
    /// `spec.ingress[0].toPorts[0].rules.http[1].path`
    pub field: Option<String>,
    pub message: String,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(object) = &self.object {
            write!(f, ": {object}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Split a file into documents and parse each. Returns the good documents
/// and an error for every bad one, so callers can report everything at once.
pub fn parse_file(file: &str, text: &str) -> (Vec<SourcedDocument>, Vec<PolicyError>) {
    let mut docs = Vec::new();
    let mut errors = Vec::new();
    for (index, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let object = format!("document {}", index + 1);
        let value = match serde_yaml::Value::deserialize(de) {
            Ok(serde_yaml::Value::Null) => continue, // empty document (a trailing `---`)
            Ok(value) => value,
            Err(e) => {
                errors.push(PolicyError {
                    file: file.into(),
                    object: Some(object),
                    field: None,
                    message: e.to_string(),
                });
                // the YAML stream is broken from here on
                break;
            }
        };
        match parse_document(file, index, value) {
            Ok(doc) => docs.push(doc),
            Err(e) => errors.push(e),
        }
    }
    (docs, errors)
}

/// Parse and compile policy files, reporting every problem in all of them.
pub fn load_files(files: impl IntoIterator<Item = (String, Result<String, String>)>) -> LoadedDocuments {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (file, text) in files {
        match text {
            Ok(text) => {
                let (mut docs, mut errs) = parse_file(&file, &text);
                documents.append(&mut docs);
                errors.append(&mut errs);
            }
            Err(message) => errors.push(PolicyError { file, object: None, field: None, message }),
        }
    }
    LoadedDocuments { documents, errors }
}

pub struct LoadedDocuments {
    pub documents: Vec<SourcedDocument>,
    /// Parse errors; compile errors of the parsed documents come from `PolicySet::compile`.
    pub errors: Vec<PolicyError>,
}

/// One object that did not come from a file (the Kubernetes source's):
/// read exactly as a document of a policy file is, and set aside alone when
/// it is bad.
pub fn parse_object(origin: &str, value: serde_yaml::Value) -> Result<SourcedDocument, PolicyError> {
    let mut document = parse_document(origin, 0, value)?;
    document.independent = true;
    Ok(document)
}

/// What names an independent object across updates: its origin and its
/// qualified name (`kubernetes ciliumnetworkpolicies: policy default/web`),
/// as its errors name it.
pub fn object_key(origin: &str, qualified_name: &str) -> String {
    format!("{origin}: policy {qualified_name}")
}

fn parse_document(file: &str, index: usize, value: serde_yaml::Value) -> Result<SourcedDocument, PolicyError> {
    let get = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(|n| n.as_str()).map(str::to_string);
    let object = Some(name.clone().map(|n| format!("policy {n}")).unwrap_or_else(|| format!("document {}", index + 1)));
    let err = |field: Option<&str>, message: String| PolicyError {
        file: file.into(),
        object: object.clone(),
        field: field.map(str::to_string),
        message,
    };
    let (api_version, kind) = (get("apiVersion").unwrap_or_default(), get("kind").unwrap_or_default());
    if api_version == super::k8s::API && kind == super::k8s::KIND {
        // read as the CiliumNetworkPolicy it means; errors name the NetworkPolicy's fields
        let value = super::k8s::to_cilium(value).map_err(|(field, message)| err(Some(&field), message))?;
        let mut document = parse_document(file, index, value)?;
        document.written_as = format!("{api_version}/{kind}");
        return Ok(document);
    }
    let Some(policy_kind) = PolicyKind::from_api(&api_version, &kind) else {
        let hint = "expected apiVersion cilium.io/v2 with kind CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy, \
             policy.weir.dev/v1alpha1 with kind WeirNetworkPolicy or WeirClusterwideNetworkPolicy, \
             or networking.k8s.io/v1 NetworkPolicy";
        return Err(err(Some("kind"), format!("unsupported policy type {api_version:?}/{kind:?}: {hint}")));
    };
    let document: PolicyDocument = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        err((path != ".").then_some(path.as_str()), e.into_inner().to_string())
    })?;
    let object = Some(format!("policy {}", qualified_name(&document, policy_kind)));
    let err = |field: &str, message: &str| PolicyError {
        file: file.into(),
        object: object.clone(),
        field: Some(field.into()),
        message: message.into(),
    };
    match (&document.spec, &document.specs) {
        (None, None) => return Err(err("spec", "a policy needs `spec` or `specs`")),
        (Some(_), Some(_)) => return Err(err("specs", "give either `spec` or `specs`, not both")),
        _ => {}
    }
    if document.metadata.name.is_empty() {
        return Err(err("metadata.name", "must not be empty"));
    }
    if policy_kind == PolicyKind::Clusterwide && document.metadata.namespace.is_some() {
        return Err(err("metadata.namespace", "a clusterwide policy has no namespace"));
    }
    let written_as = format!("{api_version}/{kind}");
    Ok(SourcedDocument { file: file.into(), index, kind: policy_kind, written_as, document, independent: false })
}

/// `namespace/name` for namespaced policies, `name` for clusterwide ones.
pub fn qualified_name(doc: &PolicyDocument, kind: PolicyKind) -> String {
    match kind {
        PolicyKind::Namespaced => {
            format!("{}/{}", doc.metadata.namespace.as_deref().unwrap_or("default"), doc.metadata.name)
        }
        PolicyKind::Clusterwide => doc.metadata.name.clone(),
    }
}

impl SourcedDocument {
    pub fn name(&self) -> String {
        qualified_name(&self.document, self.kind)
    }

    /// See [`object_key`].
    pub fn key(&self) -> String {
        object_key(&self.file, &self.name())
    }

    pub fn namespace(&self) -> Option<&str> {
        match self.kind {
            PolicyKind::Namespaced => Some(self.document.metadata.namespace.as_deref().unwrap_or("default")),
            PolicyKind::Clusterwide => None,
        }
    }

    /// `(rule, path prefix)`: `spec` or `specs[i]`.
    pub fn rules(&self) -> Vec<(&Rule, String)> {
        match (&self.document.spec, &self.document.specs) {
            (Some(rule), _) => vec![(rule, "spec".into())],
            (None, Some(rules)) => rules.iter().enumerate().map(|(i, r)| (r, format!("specs[{i}]"))).collect(),
            (None, None) => Vec::new(),
        }
    }
}
