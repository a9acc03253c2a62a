//! Custom filters as objects: a `WasmFilter` (`policy.weir.dev/v1alpha1`,
//! cluster-scoped: a filter runs inside every node's proxy, so writing one
//! is the platform team's right, not a namespace's) names its component by
//! a key of a ConfigMap in weir's own namespace, or by a URL and the
//! component's sha256, with the failure policy and limits `weir.yaml` gives
//! a filter. A `wasm` rule names it by the object's name.
//!
//! The [`Resolver`] turns the objects into the components a model loads:
//! bytes from the ConfigMap (watched, so editing it is an update) or
//! fetched once per URL and digest, the digest checked, and the component
//! loaded once to see that it is one. A version that fails leaves the last
//! good one in force; a filter that never loaded is supplied as unavailable,
//! and the rules naming it refuse their traffic until it loads (fail
//! closed). Nodes and the operator run the same resolver: the nodes load
//! what it hands them, the operator writes its verdict on the object.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::reflect::Key;
use super::resources::{Resource, WEIR_API};
use crate::config::{FilterConfig, SuppliedFilter};
use crate::units::{bytes, duration};
use crate::wasm::{FailurePolicy, FilterLimits, FilterRuntime};

pub const WASM_FILTERS: Resource = Resource {
    prefix: "/apis/policy.weir.dev/v1alpha1",
    plural: "wasmfilters",
    api_version: WEIR_API,
    kind: "WasmFilter",
    namespaced: false,
};

/// Where filter errors are said to come from.
pub const ORIGIN: &str = "kubernetes wasmfilters";

/// The ConfigMaps of weir's own namespace (the only ones a WasmFilter may
/// name, so weir reads no other namespace's).
pub fn config_maps(namespace: &str) -> &'static Resource {
    let prefix: &'static str = Box::leak(format!("/api/v1/namespaces/{namespace}").into_boxed_str());
    Box::leak(Box::new(Resource {
        prefix,
        plural: "configmaps",
        api_version: "v1",
        kind: "ConfigMap",
        namespaced: false,
    }))
}

/// Largest component weir takes (as the API server's object size limit is
/// about 1.5 MiB, a URL is the way to larger ones).
const MAX_COMPONENT_BYTES: usize = 64 << 20;
/// A fetch that takes longer has failed (well inside the 30 s a starting
/// node waits for its first model).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed fetch is not tried again sooner (not on every pod event).
const FETCH_RETRY: Duration = Duration::from_secs(10);

/// A WasmFilter's `spec`.
#[derive(Clone, Debug, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// A key of a ConfigMap in weir's own namespace (binaryData) holding the component.
    #[serde(default)]
    pub config_map: Option<ConfigMapKey>,
    /// Where to fetch the component (http or https; redirects are not followed).
    #[serde(default)]
    pub url: Option<String>,
    /// The component's SHA-256, hexadecimal; required with url, checked before it is loaded.
    #[serde(default)]
    pub sha256: Option<String>,
    /// What a trap, a timeout or an exhausted limit means for the request.
    #[serde(default)]
    pub failure: FailurePolicy,
    /// CPU time per call, as weir.yaml writes it (5ms, 1s).
    #[serde(default = "default_timeout", with = "duration")]
    #[schemars(with = "String")]
    pub timeout: Duration,
    /// Linear memory per instance, as weir.yaml writes it (16MiB; at most 1GiB).
    #[serde(default = "default_memory", with = "bytes")]
    #[schemars(with = "String")]
    pub memory: usize,
}

fn default_timeout() -> Duration {
    FilterLimits::default().timeout
}
fn default_memory() -> usize {
    FilterLimits::default().memory
}

#[derive(Clone, Debug, Deserialize, PartialEq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigMapKey {
    pub name: String,
    pub key: String,
}

impl Spec {
    fn check(&self) -> Result<(), String> {
        match (&self.config_map, &self.url) {
            (Some(_), Some(_)) | (None, None) => return Err("spec: give exactly one of configMap and url".into()),
            (None, Some(url)) => {
                if self.sha256.is_none() {
                    return Err("spec.sha256: required with url (the component is checked against it)".into());
                }
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(format!("spec.url: {url:?} is not an http:// or https:// URL"));
                }
            }
            (Some(_), None) => {}
        }
        if let Some(sha) = &self.sha256
            && (sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(format!("spec.sha256: {sha:?} is not 64 hexadecimal digits"));
        }
        if self.memory > crate::wasm::MAX_FILTER_MEMORY {
            return Err("spec.memory: at most 1GiB".into());
        }
        if self.timeout.is_zero() {
            return Err("spec.timeout: must be more than zero".into());
        }
        Ok(())
    }
}

/// What weir keeps of a WasmFilter object: its spec as read (or why it
/// does not read) and what the operator needs to write its verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct WasmFilterObject {
    pub spec: Result<Spec, String>,
    pub uid: String,
    pub generation: i64,
}

pub fn wasm_filter(_: &Resource, object: &serde_json::Value) -> Option<WasmFilterObject> {
    let spec = match object.get("spec") {
        None => Err("spec: missing".to_string()),
        Some(spec) => serde_json::from_value::<Spec>(spec.clone())
            .map_err(|e| format!("spec: {e}"))
            .and_then(|spec| spec.check().map(|()| spec)),
    };
    Some(WasmFilterObject {
        spec,
        uid: object.pointer("/metadata/uid")?.as_str()?.to_string(),
        generation: object.pointer("/metadata/generation").and_then(|g| g.as_i64()).unwrap_or(0),
    })
}

/// A ConfigMap's entries (`data` as UTF-8 bytes, `binaryData` decoded).
pub type ConfigMapData = BTreeMap<String, Arc<[u8]>>;

pub fn config_map(_: &Resource, object: &serde_json::Value) -> Option<ConfigMapData> {
    let mut entries = ConfigMapData::new();
    for (key, value) in object.get("data").and_then(|d| d.as_object()).into_iter().flatten() {
        entries.insert(key.clone(), value.as_str()?.as_bytes().into());
    }
    for (key, value) in object.get("binaryData").and_then(|d| d.as_object()).into_iter().flatten() {
        let decoded = base64::engine::general_purpose::STANDARD.decode(value.as_str()?).ok()?;
        entries.insert(key.clone(), decoded.into());
    }
    Some(entries)
}

/// One filter as the resolver last saw it.
struct Entry {
    /// The object's uid: one deleted and made again starts afresh, with no
    /// last good version of the one before.
    uid: String,
    /// What was last tried (the spec and the component's digest): the same
    /// again is not loaded again.
    tried: Option<(Spec, [u8; 32])>,
    good: Option<(Spec, Arc<[u8]>)>,
    problem: Option<String>,
}

/// What changed about one filter, for its object.
#[derive(Clone, Debug)]
pub struct Report {
    pub name: String,
    pub uid: String,
    pub generation: i64,
    /// `None`: it loads.
    pub problem: Option<String>,
    /// Its last good version stays in force.
    pub previous_kept: bool,
}

/// What one [`Resolver::resolve`] did.
pub struct Resolved {
    /// What [`Resolver::supplied`] says changed.
    pub changed: bool,
    /// Filters that loaded a new version or failed anew.
    pub reports: Vec<Report>,
}

/// Turns WasmFilter objects into the components a model loads.
pub struct Resolver {
    /// Loads each new component once, to check it (never serves).
    runtime: Arc<FilterRuntime>,
    namespace: String,
    entries: BTreeMap<String, Entry>,
    /// Components fetched by (url, sha256); only the ones still named stay.
    fetched: HashMap<(String, String), Arc<[u8]>>,
    /// Fetches that failed, by (url, sha256): when, and why.
    failed: HashMap<(String, String), (std::time::Instant, String)>,
}

impl Resolver {
    pub fn new(namespace: &str) -> anyhow::Result<Self> {
        let metrics = Arc::new(crate::observe::metrics::Metrics::default());
        let options = crate::wasm::RuntimeOptions { cache_dir: None, max_instances: Some(16) };
        Ok(Resolver {
            runtime: Arc::new(FilterRuntime::new(metrics, options)?),
            namespace: namespace.to_string(),
            entries: BTreeMap::new(),
            fetched: HashMap::new(),
            failed: HashMap::new(),
        })
    }

    /// Bring every filter up to its object; fetches that failed are tried
    /// again on the next call.
    pub async fn resolve(
        &mut self,
        objects: &BTreeMap<Key, WasmFilterObject>,
        maps: &BTreeMap<Key, ConfigMapData>,
    ) -> Resolved {
        let mut reports = Vec::new();
        let before = self.entries.len();
        self.entries.retain(|name, _| objects.contains_key(&(String::new(), name.clone())));
        let removed = before != self.entries.len();
        let named: Vec<(String, String)> = objects
            .values()
            .filter_map(|o| o.spec.as_ref().ok())
            .filter_map(|s| Some((s.url.clone()?, s.sha256.clone()?.to_ascii_lowercase())))
            .collect();
        self.fetched.retain(|key, _| named.contains(key));
        self.failed.retain(|key, _| named.contains(key));
        for ((_, name), object) in objects {
            let fresh = || Entry { uid: object.uid.clone(), tried: None, good: None, problem: None };
            let entry = self.entries.entry(name.clone()).or_insert_with(fresh);
            if entry.uid != object.uid {
                *entry = fresh();
            }
            let outcome = match &object.spec {
                Err(problem) => {
                    entry.tried = None;
                    Err(problem.clone())
                }
                Ok(spec) => match component(spec, &self.namespace, maps, &mut self.fetched, &mut self.failed).await {
                    Err(problem) => {
                        // what comes back is checked again
                        entry.tried = None;
                        Err(problem)
                    }
                    Ok(bytes) => {
                        let digest: [u8; 32] = Sha256::digest(&bytes).into();
                        if entry.tried.as_ref() == Some(&(spec.clone(), digest)) {
                            continue;
                        }
                        entry.tried = Some((spec.clone(), digest));
                        let runtime = self.runtime.clone();
                        let (name, checked) = (name.clone(), bytes.clone());
                        let loaded = tokio::task::spawn_blocking(move || runtime.load(&name, &checked).map(drop))
                            .await
                            .unwrap_or_else(|e| {
                                Err(crate::wasm::LoadError::Compile {
                                    name: Default::default(),
                                    message: format!("loading panicked: {e}"),
                                })
                            });
                        match loaded {
                            Ok(()) => Ok((spec.clone(), bytes)),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                },
            };
            let problem = match outcome {
                Ok(good) => {
                    entry.good = Some(good);
                    None
                }
                Err(problem) if entry.problem.as_ref() == Some(&problem) => continue,
                Err(problem) => Some(problem),
            };
            reports.push(Report {
                name: name.clone(),
                uid: object.uid.clone(),
                generation: object.generation,
                previous_kept: problem.is_some() && entry.good.is_some(),
                problem: problem.clone(),
            });
            entry.problem = problem;
        }
        Resolved { changed: removed || !reports.is_empty(), reports }
    }

    /// Every filter as a model takes it.
    pub fn supplied(&self) -> Vec<FilterConfig> {
        self.entries
            .iter()
            .map(|(name, entry)| {
                let (spec, component) = match &entry.good {
                    Some((spec, bytes)) => (Some(spec), Ok(bytes.clone())),
                    None => (None, Err(entry.problem.clone().unwrap_or_else(|| "not loaded yet".into()))),
                };
                FilterConfig {
                    name: name.clone(),
                    path: None,
                    builtin: None,
                    timeout: spec.map_or_else(default_timeout, |s| s.timeout),
                    memory: spec.map_or_else(default_memory, |s| s.memory),
                    failure: spec.map_or(FailurePolicy::Closed, |s| s.failure),
                    supplied: Some(SuppliedFilter { origin: ORIGIN.into(), component }),
                }
            })
            .collect()
    }

    /// Why the filter's current version is not loaded, and what is in force
    /// instead; `None`: it is loaded.
    pub fn problem(&self, name: &str) -> Option<String> {
        let entry = self.entries.get(name)?;
        let problem = entry.problem.as_ref()?;
        Some(match entry.good {
            Some(_) => format!("{problem} (its last good version stays in force)"),
            None => format!("{problem} (rules naming it refuse their traffic until it loads)"),
        })
    }
}

/// The component `spec` names, its digest checked.
async fn component(
    spec: &Spec,
    namespace: &str,
    maps: &BTreeMap<Key, ConfigMapData>,
    fetched: &mut HashMap<(String, String), Arc<[u8]>>,
    failed: &mut HashMap<(String, String), (std::time::Instant, String)>,
) -> Result<Arc<[u8]>, String> {
    let bytes = match (&spec.config_map, &spec.url) {
        (Some(ConfigMapKey { name, key }), _) => {
            let map = maps
                .get(&(namespace.to_string(), name.clone()))
                .ok_or_else(|| format!("spec.configMap: no ConfigMap {namespace}/{name}"))?;
            map.get(key)
                .cloned()
                .ok_or_else(|| format!("spec.configMap: ConfigMap {namespace}/{name} has no key {key:?}"))?
        }
        (None, Some(url)) => {
            let sha = spec.sha256.clone().unwrap_or_default().to_ascii_lowercase();
            let key = (url.clone(), sha);
            if let Some(bytes) = fetched.get(&key) {
                bytes.clone()
            } else {
                if let Some((when, why)) = failed.get(&key)
                    && when.elapsed() < FETCH_RETRY
                {
                    return Err(why.clone());
                }
                let attempt = async {
                    let bytes: Arc<[u8]> = tokio::time::timeout(FETCH_TIMEOUT, fetch(url))
                        .await
                        .map_err(|_| format!("spec.url: no answer from {url} in {FETCH_TIMEOUT:?}"))?
                        .map_err(|e| format!("spec.url: {e:#}"))?
                        .into();
                    // kept only once it is the component named
                    check_digest(spec, &bytes)?;
                    Ok::<_, String>(bytes)
                };
                match attempt.await {
                    Ok(bytes) => {
                        failed.remove(&key);
                        fetched.insert(key, bytes.clone());
                        bytes
                    }
                    Err(why) => {
                        failed.insert(key, (std::time::Instant::now(), why.clone()));
                        return Err(why);
                    }
                }
            }
        }
        (None, None) => unreachable!("Spec::check"),
    };
    check_digest(spec, &bytes)?;
    Ok(bytes)
}

fn check_digest(spec: &Spec, bytes: &[u8]) -> Result<(), String> {
    let Some(wanted) = &spec.sha256 else { return Ok(()) };
    let actual: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    if !actual.eq_ignore_ascii_case(wanted) {
        // the actual digest only in the log: a file that changes at every
        // fetch must not make a new problem (and a status write) each time
        tracing::warn!(%actual, %wanted, "a WasmFilter component's digest does not match");
        return Err(format!("spec.sha256: the component's sha256 is not {wanted}: not loaded"));
    }
    Ok(())
}

/// GET `url` whole (HTTP/1.1; https trusts the system's certificate
/// authorities). Redirects are not followed: name the component's place.
async fn fetch(url: &str) -> anyhow::Result<Vec<u8>> {
    let uri: http::Uri = url.parse().context("not a URL")?;
    let host = uri.host().context("no host")?.trim_start_matches('[').trim_end_matches(']').to_string();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let request = http::Request::get(path)
        .header(http::header::HOST, uri.authority().context("no host")?.as_str())
        .header(http::header::USER_AGENT, concat!("weir/", env!("CARGO_PKG_VERSION")))
        .body(http_body_util::Empty::<::bytes::Bytes>::new())?;
    let response = if https {
        let mut roots = rustls::RootCertStore::empty();
        let bundle = std::fs::read("/etc/ssl/certs/ca-certificates.crt").context("the system's CA bundle")?;
        for cert in rustls_pemfile::certs(&mut bundle.as_slice()).flatten() {
            let _ = roots.add(cert);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone())?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp).await.context("TLS")?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        sender.send_request(request).await?
    };
    if !response.status().is_success() {
        bail!("GET {url}: {}", response.status());
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_COMPONENT_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?;
    Ok(body.to_bytes().to_vec())
}
