//! One kind of object, mirrored from the API server: list it (in pages),
//! then watch from the list's `resourceVersion`, resuming the watch from the
//! last version seen (events and bookmarks) when the server ends it, and
//! listing again only when the server says that version is gone (`410`) or
//! the watch cannot be resumed. Each object is kept as its projection (only
//! what weir reads of it), so a change to anything else is no change.
//!
//! A relist replaces the kind's objects in one step: a reader never sees
//! half of the new list beside half of the old.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::Deserialize;

use super::client::ApiClient;
use super::{Changes, Resource};

/// How a kind stands with the API server.
#[derive(Clone, Debug, PartialEq)]
pub enum Standing {
    /// Not listed yet.
    Pending,
    /// Listed; its objects are here and a watch keeps them.
    Listed,
    /// The API server does not serve it (no CRD): no objects.
    Absent,
    /// Never listed, and the last attempt failed: why.
    Failing(String),
}

impl Standing {
    pub fn synced(&self) -> bool {
        matches!(self, Standing::Listed | Standing::Absent)
    }
}

/// `(namespace, name)`; the namespace is empty for cluster-scoped objects.
pub type Key = (String, String);

/// What is known of one kind.
pub struct Table<T> {
    pub standing: Standing,
    pub objects: BTreeMap<Key, T>,
}

/// A kind's table, shared between its reflector and its readers.
pub type Shared<T> = Arc<Mutex<Table<T>>>;

pub fn table<T>() -> Shared<T> {
    Arc::new(Mutex::new(Table { standing: Standing::Pending, objects: BTreeMap::new() }))
}

/// How a missing CRD waits before the next list.
const ABSENT_RETRY: Duration = Duration::from_secs(5);
/// How long one watch request asks to run; the server ends it and the
/// reflector resumes from the last version it saw.
const WATCH_SECONDS: u32 = 290;
/// A list page, or the start of a watch, that takes longer has failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// A watch silent for longer (no event, no bookmark, not ended by the
/// server at WATCH_SECONDS) is a dead connection.
const WATCH_SILENCE: Duration = Duration::from_secs(WATCH_SECONDS as u64 + 30);
/// The longest watch event line accepted.
const MAX_EVENT_BYTES: usize = 16 << 20;
/// Failed resumes of a watch before the kind is listed again.
const RESUME_ATTEMPTS: u32 = 3;
/// Objects per list page: a large cluster's pods come in several answers,
/// none of them large.
const PAGE: usize = 500;

/// Mirror `resource` into `table` forever. `project` keeps what weir reads
/// of an object (`None`: not kept, as if absent); every change is counted in
/// `changes`.
pub async fn run<T: Clone + PartialEq + Send + 'static>(
    client: ApiClient,
    resource: &'static Resource,
    project: fn(&Resource, &serde_json::Value) -> Option<T>,
    table: Shared<T>,
    changes: Arc<Changes>,
) {
    let mut backoff = Duration::from_millis(100);
    let mut ever_listed = false;
    loop {
        let listed = list(&client, resource, project).await;
        match listed {
            Ok(None) => {
                let changed = {
                    let mut t = table.lock().unwrap();
                    let changed = t.standing != Standing::Absent || !t.objects.is_empty();
                    t.standing = Standing::Absent;
                    t.objects.clear();
                    changed
                };
                if changed {
                    changes.bump();
                }
                tokio::time::sleep(ABSENT_RETRY).await;
            }
            Ok(Some((objects, mut version))) => {
                backoff = Duration::from_millis(100);
                if ever_listed {
                    tracing::info!(resource = resource.plural, "listed again after the watch could not resume");
                    changes.relisted(resource.plural);
                }
                ever_listed = true;
                let changed = {
                    let mut t = table.lock().unwrap();
                    let changed = t.standing != Standing::Listed || t.objects != objects;
                    t.standing = Standing::Listed;
                    t.objects = objects;
                    changed
                };
                if changed {
                    changes.bump();
                }
                // watch, and resume from the last version seen for as long
                // as the server takes it; a version it keeps refusing
                // (a restored etcd, say) is listed again
                let mut failures = 0;
                loop {
                    match watch(&client, resource, project, &mut version, &table, &changes).await {
                        Ok(()) => {
                            backoff = Duration::from_millis(100);
                            failures = 0;
                        }
                        Err(WatchEnd::Gone) => break,
                        Err(WatchEnd::Failed(e)) => {
                            changes.disconnected(resource.plural);
                            tracing::warn!(resource = resource.plural, "watch failed, resuming: {e:#}");
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(10));
                            failures += 1;
                            if failures >= RESUME_ATTEMPTS {
                                break;
                            }
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(resource = resource.plural, "list failed: {e:#}");
                changes.disconnected(resource.plural);
                {
                    // what was listed (or found absent) before stays: stale
                    // is better than empty
                    let mut t = table.lock().unwrap();
                    if matches!(t.standing, Standing::Pending | Standing::Failing(_)) {
                        t.standing = Standing::Failing(format!("{e:#}"));
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[derive(Deserialize)]
struct List {
    metadata: ListMeta,
    #[serde(default)]
    items: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[serde(default)]
    resource_version: String,
    #[serde(default, rename = "continue")]
    next: Option<String>,
}

/// Every object of a kind and the version to watch from; `None`: the API
/// server does not serve the kind.
async fn list<T>(
    client: &ApiClient,
    resource: &Resource,
    project: fn(&Resource, &serde_json::Value) -> Option<T>,
) -> anyhow::Result<Option<(BTreeMap<Key, T>, String)>> {
    let mut objects = BTreeMap::new();
    let mut next: Option<String> = None;
    let mut version = String::new();
    loop {
        let mut path = format!("{}?limit={PAGE}", resource.path());
        if let Some(token) = &next {
            path.push_str("&continue=");
            path.push_str(&percent_encode(token));
        }
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.get(&path)).await;
        let (status, body) = answer.map_err(|_| anyhow::anyhow!("no answer in {REQUEST_TIMEOUT:?}"))??;
        if status == http::StatusCode::NOT_FOUND && next.is_none() {
            return Ok(None);
        }
        if !status.is_success() {
            bail!("GET {path}: {status}: {}", String::from_utf8_lossy(&body[..body.len().min(300)]));
        }
        let page: List = serde_json::from_slice(&body).with_context(|| format!("GET {path}: not a list"))?;
        if next.is_none() {
            version = page.metadata.resource_version;
        }
        for item in &page.items {
            if let (Some(key), Some(kept)) = (key_of(item), project(resource, item)) {
                objects.insert(key, kept);
            }
        }
        match page.metadata.next.filter(|t| !t.is_empty()) {
            Some(token) => next = Some(token),
            None => return Ok(Some((objects, version))),
        }
    }
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    kind: String,
    object: serde_json::Value,
}

enum WatchEnd {
    /// The version is too old (`410 Gone`): list again.
    Gone,
    /// The connection or the server failed: resume from the last version.
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for WatchEnd {
    fn from(e: anyhow::Error) -> Self {
        WatchEnd::Failed(e)
    }
}

/// Follow changes from `version` until the server ends the watch (`Ok`);
/// `version` moves with every event and bookmark.
async fn watch<T: Clone + PartialEq>(
    client: &ApiClient,
    resource: &Resource,
    project: fn(&Resource, &serde_json::Value) -> Option<T>,
    version: &mut String,
    table: &Mutex<Table<T>>,
    changes: &Changes,
) -> Result<(), WatchEnd> {
    let query = format!(
        "{}?watch=true&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}&resourceVersion={}",
        resource.path(),
        percent_encode(version)
    );
    let response = tokio::time::timeout(REQUEST_TIMEOUT, client.send(&query)).await.context("no answer")??;
    if response.status() == http::StatusCode::GONE {
        return Err(WatchEnd::Gone);
    }
    if !response.status().is_success() {
        return Err(WatchEnd::Failed(anyhow::anyhow!("GET {query}: {}", response.status())));
    }
    let mut body = response.into_body();
    let mut pending = BytesMut::new();
    while let Some(frame) = tokio::time::timeout(WATCH_SILENCE, body.frame()).await.context("the watch went silent")? {
        let Ok(data) = frame.context("the watch broke")?.into_data() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line = pending.split_to(end + 1);
            let event: WatchEvent = serde_json::from_slice(&line[..end]).context("a watch event that is not JSON")?;
            if event.kind == "ERROR" {
                // 410 Gone (the version is too old) and the like
                let code = event.object.get("code").and_then(|c| c.as_u64());
                let message = event.object.get("message").and_then(|m| m.as_str()).unwrap_or("watch error");
                if code == Some(410) {
                    tracing::info!(resource = resource.plural, "watch: {message}; listing again");
                    return Err(WatchEnd::Gone);
                }
                return Err(WatchEnd::Failed(anyhow::anyhow!("{message}")));
            }
            if let Some(v) = event.object.pointer("/metadata/resourceVersion").and_then(|v| v.as_str()) {
                *version = v.to_string();
            }
            let Some(key) = key_of(&event.object) else { continue };
            let changed = match event.kind.as_str() {
                "ADDED" | "MODIFIED" => {
                    let mut t = table.lock().unwrap();
                    match project(resource, &event.object) {
                        Some(kept) => t.objects.insert(key, kept.clone()).as_ref() != Some(&kept),
                        // projected away (a pod that finished): as deleted
                        None => t.objects.remove(&key).is_some(),
                    }
                }
                "DELETED" => table.lock().unwrap().objects.remove(&key).is_some(),
                "BOOKMARK" => false,
                other => return Err(WatchEnd::Failed(anyhow::anyhow!("unknown watch event type {other:?}"))),
            };
            if changed {
                changes.bump();
            }
        }
        if pending.len() > MAX_EVENT_BYTES {
            return Err(WatchEnd::Failed(anyhow::anyhow!("a watch event longer than {MAX_EVENT_BYTES} bytes")));
        }
    }
    Ok(())
}

fn key_of(object: &serde_json::Value) -> Option<Key> {
    let metadata = object.get("metadata")?;
    let name = metadata.get("name")?.as_str()?.to_string();
    let namespace = metadata.get("namespace").and_then(|n| n.as_str()).unwrap_or_default().to_string();
    Some((namespace, name))
}

/// Continue tokens and versions are opaque: keep them intact in a query.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
