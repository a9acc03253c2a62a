//! Label selectors, compiled: Kubernetes `matchLabels`/`matchExpressions`
//! with Cilium's label sources (`k8s:app`, `any:app`, `reserved:world`).

use serde::Serialize;

use super::document;
use crate::identity::{Identity, Labels, NAMESPACE_LABEL};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LabelKey {
    /// `None` matches a label from any source.
    pub source: Option<String>,
    pub key: String,
}

impl LabelKey {
    /// `k8s:app` → source k8s; `app` and `any:app` → any source. Keys may
    /// themselves contain dots and slashes (`app.kubernetes.io/name`).
    pub fn parse(text: &str) -> Self {
        match text.split_once(':') {
            Some(("any", key)) => LabelKey { source: None, key: key.into() },
            Some((source, key)) if !source.is_empty() && !source.contains(['.', '/']) => {
                LabelKey { source: Some(source.into()), key: key.into() }
            }
            _ => LabelKey { source: None, key: text.into() },
        }
    }

    fn value_in<'a>(&self, labels: &'a Labels) -> Option<&'a str> {
        labels.get(self.source.as_deref(), &self.key)
    }

    fn is_namespace(&self) -> bool {
        self.key == NAMESPACE_LABEL && matches!(self.source.as_deref(), None | Some("k8s"))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Requirement {
    In { key: LabelKey, values: Vec<String> },
    NotIn { key: LabelKey, values: Vec<String> },
    Exists { key: LabelKey },
    DoesNotExist { key: LabelKey },
}

impl Requirement {
    fn matches(&self, labels: &Labels) -> bool {
        match self {
            Requirement::In { key, values } => key.value_in(labels).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn { key, values } => !key.value_in(labels).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::Exists { key } => key.value_in(labels).is_some(),
            Requirement::DoesNotExist { key } => key.value_in(labels).is_none(),
        }
    }

    fn key(&self) -> &LabelKey {
        match self {
            Requirement::In { key, .. }
            | Requirement::NotIn { key, .. }
            | Requirement::Exists { key }
            | Requirement::DoesNotExist { key } => key,
        }
    }
}

/// All requirements must hold. An empty selector selects every endpoint,
/// but never a reserved identity (world, host, …): those are named with
/// `fromEntities`/`toEntities`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Selector {
    pub requirements: Vec<Requirement>,
}

impl Selector {
    /// Compile a document selector; `path` names it in errors.
    pub fn compile(doc: &document::Selector, path: &str) -> Result<Self, (String, String)> {
        let mut requirements = Vec::new();
        for (key, value) in doc.match_labels.iter().flatten() {
            requirements.push(Requirement::In { key: LabelKey::parse(key), values: vec![value.clone()] });
        }
        for (i, expr) in doc.match_expressions.iter().flatten().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            let key = LabelKey::parse(&expr.key);
            let values = expr.values.clone().unwrap_or_default();
            let requirement = match expr.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err((
                        format!("{at}.values"),
                        format!("operator {} needs at least one value", expr.operator),
                    ));
                }
                "In" => Requirement::In { key, values },
                "NotIn" => Requirement::NotIn { key, values },
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err((format!("{at}.values"), format!("operator {} takes no values", expr.operator)));
                }
                "Exists" => Requirement::Exists { key },
                "DoesNotExist" => Requirement::DoesNotExist { key },
                other => {
                    return Err((
                        format!("{at}.operator"),
                        format!("unknown operator {other:?}; use In, NotIn, Exists or DoesNotExist"),
                    ));
                }
            };
            requirements.push(requirement);
        }
        Ok(Selector { requirements })
    }

    pub fn all() -> Self {
        Selector { requirements: Vec::new() }
    }

    /// Confine to a namespace unless the selector already names one
    /// (Cilium's rule for namespaced policies).
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        if !self.requirements.iter().any(|r| r.key().is_namespace()) {
            self.requirements.push(Requirement::In {
                key: LabelKey { source: Some("k8s".into()), key: NAMESPACE_LABEL.into() },
                values: vec![namespace.into()],
            });
        }
        self
    }

    pub fn selects(&self, identity: &Identity) -> bool {
        if identity.id < crate::identity::FIRST_ENDPOINT_IDENTITY
            && self.requirements.iter().all(|r| !mentions_reserved(r))
        {
            return false;
        }
        self.requirements.iter().all(|r| r.matches(&identity.labels))
    }
}

/// A selector that names `reserved:…` labels may select reserved identities.
fn mentions_reserved(r: &Requirement) -> bool {
    r.key().source.as_deref() == Some("reserved")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Label, reserved};

    fn identity(id: u32, labels: &[&str]) -> Identity {
        Identity::new(id, Labels::new(labels.iter().map(|l| Label::parse(l)).collect()))
    }

    fn selector(yaml: &str) -> Selector {
        let doc: document::Selector = serde_yaml::from_str(yaml).unwrap();
        Selector::compile(&doc, "sel").unwrap()
    }

    #[test]
    fn match_labels_and_expressions() {
        let web = identity(300, &["k8s:app=web", "k8s:tier=front", "k8s:io.kubernetes.pod.namespace=default"]);
        assert!(selector("matchLabels: {app: web}").selects(&web));
        assert!(selector("matchLabels: {'k8s:app': web}").selects(&web));
        assert!(selector("matchLabels: {'any:app': web}").selects(&web));
        assert!(!selector("matchLabels: {'container:app': web}").selects(&web));
        assert!(!selector("matchLabels: {app: db}").selects(&web));
        assert!(selector("matchExpressions: [{key: tier, operator: In, values: [front, back]}]").selects(&web));
        assert!(!selector("matchExpressions: [{key: tier, operator: NotIn, values: [front]}]").selects(&web));
        assert!(selector("matchExpressions: [{key: tier, operator: Exists}]").selects(&web));
        assert!(selector("matchExpressions: [{key: gone, operator: DoesNotExist}]").selects(&web));
        assert!(selector("{}").selects(&web));
    }

    #[test]
    fn empty_selector_never_selects_reserved_identities() {
        let world = Identity::reserved(reserved::WORLD);
        assert!(!selector("{}").selects(&world));
        assert!(selector("matchLabels: {'reserved:world': ''}").selects(&world));
    }

    #[test]
    fn namespace_is_added_unless_given() {
        let other = identity(301, &["k8s:app=web", "k8s:io.kubernetes.pod.namespace=other"]);
        assert!(!selector("matchLabels: {app: web}").in_namespace("default").selects(&other));
        let explicit = selector("matchLabels: {app: web, 'k8s:io.kubernetes.pod.namespace': other}");
        assert!(explicit.in_namespace("default").selects(&other));
    }

    #[test]
    fn bad_operators_are_named() {
        let doc: document::Selector =
            serde_yaml::from_str("matchExpressions: [{key: a, operator: Equals, values: [x]}]").unwrap();
        let (path, message) = Selector::compile(&doc, "spec.endpointSelector").unwrap_err();
        assert_eq!(path, "spec.endpointSelector.matchExpressions[0].operator");
        assert!(message.contains("Equals"));
    }
}
