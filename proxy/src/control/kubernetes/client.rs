//! The little of a Kubernetes API client the source needs: where the API
//! server is and how to authenticate (a kubeconfig, or the pod's service
//! account when weir runs in the cluster), one-shot GETs for lists and
//! streamed GETs for watches. Written on the proxy's own hyper and rustls
//! (ring), so the control plane adds no TLS stack and no code generator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde::Deserialize;

use crate::observe::metrics::ApiRequestLabels;

/// Where the API server is and who we are to it.
#[derive(Clone)]
pub struct ApiClient {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    /// Bearer token; `None` with client-certificate authentication.
    token: Option<String>,
    /// Shown in logs and errors.
    pub server: String,
    /// `weir/VERSION (node)`: the API server's audit log says which node asked.
    user_agent: String,
    /// Requests made, by verb and answer (`weir_kubernetes_requests`).
    counted: Option<Family<ApiRequestLabels, Counter>>,
}

/// The service account's files in a pod.
const SERVICE_ACCOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl ApiClient {
    /// From `--kubeconfig FILE`, else `$KUBECONFIG`, else the pod's service
    /// account (in-cluster).
    pub fn configure(kubeconfig: Option<&Path>) -> anyhow::Result<Self> {
        let from_env = std::env::var_os("KUBECONFIG").map(PathBuf::from);
        match kubeconfig.map(Path::to_path_buf).or(from_env) {
            Some(path) => Self::from_kubeconfig(&path).with_context(|| format!("kubeconfig {}", path.display())),
            None => Self::in_cluster().context("in-cluster configuration (no --kubeconfig given)"),
        }
    }

    /// Name this client in the API server's audit log (`weir/0.1.0 (node-a)`).
    pub fn with_agent(mut self, who: &str) -> Self {
        self.user_agent = format!("weir/{} ({who})", env!("CARGO_PKG_VERSION"));
        self
    }

    /// Count every request in `requests`.
    pub fn counted(mut self, requests: Family<ApiRequestLabels, Counter>) -> Self {
        self.counted = Some(requests);
        self
    }

    pub fn in_cluster() -> anyhow::Result<Self> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST").context("KUBERNETES_SERVICE_HOST is not set")?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let token = std::fs::read_to_string(format!("{SERVICE_ACCOUNT}/token")).context("service account token")?;
        let ca = std::fs::read(format!("{SERVICE_ACCOUNT}/ca.crt")).context("service account CA")?;
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        Self::new(&format!("https://{host}:{port}"), Trust::Ca(ca), None, Some(token.trim().to_string()))
    }

    pub fn from_kubeconfig(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let config: Kubeconfig = serde_yaml::from_str(&text)?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let context_name = config.current_context.as_deref().context("no current-context")?;
        let context =
            &config.contexts.iter().find(|c| c.name == context_name).context("current-context not found")?.context;
        let cluster =
            &config.clusters.iter().find(|c| c.name == context.cluster).context("context's cluster not found")?.cluster;
        let user = config.users.iter().find(|u| u.name == context.user).map(|u| &u.user);

        let read = |inline: &Option<String>, file: &Option<PathBuf>| -> anyhow::Result<Option<Vec<u8>>> {
            if let Some(data) = inline {
                return Ok(Some(base64::engine::general_purpose::STANDARD.decode(data.trim())?));
            }
            match file {
                Some(f) => Ok(Some(std::fs::read(dir.join(f)).with_context(|| format!("reading {}", f.display()))?)),
                None => Ok(None),
            }
        };
        let trust = if cluster.insecure_skip_tls_verify {
            Trust::Anything
        } else {
            match read(&cluster.certificate_authority_data, &cluster.certificate_authority)? {
                Some(ca) => Trust::Ca(ca),
                None => bail!("the cluster names no certificate-authority and does not skip verification"),
            }
        };
        let (mut token, mut identity) = (None, None);
        if let Some(user) = user {
            token = match (&user.token, &user.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(f)) => Some(std::fs::read_to_string(dir.join(f))?.trim().to_string()),
                (None, None) => None,
            };
            let cert = read(&user.client_certificate_data, &user.client_certificate)?;
            let key = read(&user.client_key_data, &user.client_key)?;
            if let (Some(cert), Some(key)) = (cert, key) {
                identity = Some((cert, key));
            }
        }
        Self::new(&cluster.server, trust, identity, token)
    }

    fn new(
        server: &str,
        trust: Trust,
        identity: Option<(Vec<u8>, Vec<u8>)>,
        token: Option<String>,
    ) -> anyhow::Result<Self> {
        let uri: http::Uri = server.parse().with_context(|| format!("server {server:?}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("server {server:?}: only https API servers are supported");
        }
        let authority = uri.authority().context("server has no host")?;
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        let port = authority.port_u16().unwrap_or(443);
        let server_name = match host.parse::<std::net::IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(host.clone())?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder =
            rustls::ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
        let builder = match trust {
            Trust::Ca(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                    roots.add(cert.context("CA certificate")?)?;
                }
                if roots.is_empty() {
                    bail!("the certificate authority holds no certificate");
                }
                builder.with_root_certificates(roots)
            }
            Trust::Anything => {
                tracing::warn!("kubeconfig says insecure-skip-tls-verify: the API server's certificate is not checked");
                builder.dangerous().with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            }
        };
        let tls = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert.as_slice())
                    .collect::<Result<_, _>>()
                    .context("client certificate")?;
                let key: PrivateKeyDer<'static> =
                    rustls_pemfile::private_key(&mut key.as_slice())?.context("client key holds no key")?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        let user_agent = concat!("weir/", env!("CARGO_PKG_VERSION")).to_string();
        let server = server.to_string();
        Ok(ApiClient { host, port, server_name, tls: Arc::new(tls), token, server, user_agent, counted: None })
    }

    /// GET `path`: its status and body (bounded, so a runaway answer cannot
    /// take the proxy's memory).
    pub async fn get(&self, path: &str) -> anyhow::Result<(http::StatusCode, Bytes)> {
        self.call(http::Method::GET, path, None).await
    }

    /// One request with an optional JSON body (`(content type, bytes)`):
    /// its status and whole body.
    pub async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> anyhow::Result<(http::StatusCode, Bytes)> {
        let what = format!("{method} {path}");
        let response = self.request(method, path, body).await?;
        let status = response.status();
        let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow!("reading the answer to {what}: {e}"))?
            .to_bytes();
        Ok((status, body))
    }

    /// GET `path` and hand back the response whose body streams (watches).
    pub async fn send(&self, path: &str) -> anyhow::Result<http::Response<Incoming>> {
        self.request(http::Method::GET, path, None).await
    }

    async fn request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> anyhow::Result<http::Response<Incoming>> {
        let tcp = tokio::net::TcpStream::connect((self.host.as_str(), self.port))
            .await
            .with_context(|| format!("connecting to {}", self.server))?;
        tcp.set_nodelay(true)?;
        let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
            .connect(self.server_name.clone(), tcp)
            .await
            .with_context(|| format!("TLS with {}", self.server))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, self.user_agent.as_str());
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = match body {
            Some((content_type, bytes)) => {
                request = request.header(http::header::CONTENT_TYPE, content_type);
                Full::new(Bytes::from(bytes))
            }
            None => Full::new(Bytes::new()),
        };
        let request = request.body(body)?;
        let response = sender.send_request(request).await.with_context(|| format!("{method} {path}"));
        if let Some(counted) = &self.counted {
            let verb = if path.contains("watch=true") { "WATCH".to_string() } else { method.to_string() };
            let code = response.as_ref().map_or("error".to_string(), |r| r.status().as_u16().to_string());
            counted.get_or_create(&ApiRequestLabels { verb, code }).inc();
        }
        response
    }
}

/// Largest answer read whole (64 MiB): one page of a list, or a write's answer.
const MAX_ANSWER_BYTES: usize = 64 << 20;

enum Trust {
    Ca(Vec<u8>),
    Anything,
}

/// `insecure-skip-tls-verify: true`: the handshake's signatures are still
/// checked, the certificate's issuer and names are not.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The parts of a kubeconfig weir reads (exec and auth-provider plugins are
/// not run: give a token or a client certificate).
#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Kubeconfig {
    #[serde(default)]
    clusters: Vec<NamedCluster>,
    #[serde(default)]
    users: Vec<NamedUser>,
    #[serde(default)]
    contexts: Vec<NamedContext>,
    current_context: Option<String>,
}

#[derive(Deserialize)]
struct NamedCluster {
    name: String,
    cluster: Cluster,
}

#[derive(Deserialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster {
    server: String,
    certificate_authority: Option<PathBuf>,
    certificate_authority_data: Option<String>,
    #[serde(default)]
    insecure_skip_tls_verify: bool,
}

#[derive(Deserialize)]
struct NamedUser {
    name: String,
    #[serde(default)]
    user: User,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    token: Option<String>,
    #[serde(rename = "tokenFile")]
    token_file: Option<PathBuf>,
    client_certificate: Option<PathBuf>,
    client_certificate_data: Option<String>,
    client_key: Option<PathBuf>,
    client_key_data: Option<String>,
}

#[derive(Deserialize)]
struct NamedContext {
    name: String,
    context: ContextRef,
}

#[derive(Deserialize)]
struct ContextRef {
    cluster: String,
    user: String,
}
