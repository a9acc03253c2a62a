//! Identities for this node's pods, allocated through the API server.
//!
//! A label set's identity is an object named by its number. A node that
//! finds one of its pods' label sets without an object creates one, trying
//! the numbers [`candidates`] gives in order: every node tries the same
//! numbers for the same set, so when two nodes race, the API server's
//! create conflict (`409`) settles it — the loser reads the object, finds
//! its own labels there, and uses it. A number held by another set is
//! skipped. Objects no pod uses are collected by the operator after a grace
//! period (`operator.rs`), never by a node.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use super::client::ApiClient;
use super::endpoints::{IdentityIndex, candidates, identity_labels, security_labels};
use super::resources::{IDENTITIES, WEIR_API, identity};
use super::{Changes, Tables};
use crate::identity::Labels;

/// Allocate for this node's pods whenever anything changes, forever.
pub(super) async fn run(client: ApiClient, node: String, tables: Arc<Tables>, changes: Arc<Changes>) {
    let mut changed = changes.subscribe();
    loop {
        for labels in wanted(&node, &tables) {
            match allocate(&client, &labels, &tables).await {
                Ok((number, news)) => {
                    changes.metrics.identities_allocated.inc();
                    tracing::info!(identity = number, labels = %labels, "identity allocated");
                    // the watch may have brought the object (and said so)
                    // before the create's answer: no second rebuild for it
                    if news {
                        changes.bump();
                    }
                }
                Err(e) => {
                    tracing::warn!(labels = %labels, "identity not allocated (retrying): {e:#}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        // the next change, or a second: a failed allocation is retried
        let _ = tokio::time::timeout(Duration::from_secs(1), changed.changed()).await;
    }
}

/// Label sets of this node's pods that no identity object holds yet.
pub(super) fn wanted(node: &str, tables: &Tables) -> BTreeSet<Labels> {
    let synced = |standing: &super::reflect::Standing| standing.synced();
    let identities = tables.identities.lock().unwrap();
    if !synced(&identities.standing) || identities.standing == super::reflect::Standing::Absent {
        return BTreeSet::new();
    }
    let index = IdentityIndex::new(identities.objects.iter().filter_map(|((_, n), l)| Some((n.parse().ok()?, l))));
    drop(identities);
    let namespaces = tables.namespaces.lock().unwrap().objects.clone();
    let pods = tables.pods.lock().unwrap();
    pods.objects
        .iter()
        .filter(|(_, pod)| pod.node == node && !pod.host_network)
        .filter_map(|((namespace, _), pod)| {
            let namespace_labels = namespaces.get(&(String::new(), namespace.clone()))?;
            Some(Labels::of_endpoint(namespace, &identity_labels(pod, Some(namespace_labels))))
        })
        .filter(|labels| index.get(labels).is_none())
        .collect()
}

/// Create (or find, when another node won the race) the identity object of
/// `labels`; its number, and whether the table learned it from this call
/// (not from the watch, which can bring the object before the create's
/// answer). What it creates or finds goes into the table at once.
async fn allocate(client: &ApiClient, labels: &Labels, tables: &Tables) -> anyhow::Result<(u32, bool)> {
    let wanted = security_labels(labels);
    for number in candidates(labels) {
        let name = number.to_string();
        let key = (String::new(), name.clone());
        match tables.identities.lock().unwrap().objects.get(&key) {
            Some(theirs) if theirs == labels => return Ok((number, false)),
            Some(_) => continue,
            None => {}
        }
        let object = serde_json::json!({
            "apiVersion": WEIR_API,
            "kind": IDENTITIES.kind,
            "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "weir"}},
            "securityLabels": wanted,
        });
        let body = serde_json::to_vec(&object)?;
        let (status, answer) =
            client.call(http::Method::POST, &IDENTITIES.path(), Some(("application/json", body))).await?;
        let found = match status {
            s if s.is_success() => serde_json::from_slice(&answer)?,
            // taken: by the same labels (a node that raced us), or by others
            http::StatusCode::CONFLICT => {
                let (status, answer) = client.get(&IDENTITIES.object_path("", &name)).await?;
                if status == http::StatusCode::NOT_FOUND {
                    // collected between our create and our read: try it again
                    bail!("identity {number} was deleted while allocating");
                }
                if !status.is_success() {
                    bail!("GET identity {number}: {status}");
                }
                serde_json::from_slice(&answer)?
            }
            status => bail!("creating identity {number}: {status}: {}", String::from_utf8_lossy(&answer)),
        };
        let Some(theirs) = identity(&IDENTITIES, &found) else { continue };
        let known = tables.identities.lock().unwrap().objects.insert(key, theirs.clone());
        if &theirs == labels {
            return Ok((number, known.as_ref() != Some(&theirs)));
        }
    }
    bail!("every identity number is taken")
}
