//! Sockets below every engine: how a proxy leg to the upstream is bound,
//! the TLS it may speak to the upstream, and the splicing of its writes.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::Arc;

use weir_datapath_common::SpliceKey;
use weir_datapath_common::mark::{self, Marks};

use rustls::pki_types::ServerName;

/// `datapath.marks`, for the whole process: the programs were loaded with
/// them, so the proxy must read and write the same.
static MARKS: std::sync::OnceLock<Marks> = std::sync::OnceLock::new();

/// At start, from the config (checked in `config.rs`), before anything
/// accepts. A second call changes nothing.
pub fn set_marks(marks: Marks) {
    if MARKS.set(marks).is_err() && self::marks() != marks {
        tracing::warn!(kept = ?self::marks(), ignored = ?marks, "datapath marks are set once, at start");
    }
}

fn marks() -> Marks {
    *MARKS.get_or_init(|| Marks::DEFAULT)
}

/// The mark of what the proxy sends on behalf of `identity`: the datapath
/// lets it pass once, already enforced.
pub fn from_proxy_mark(identity: u32) -> u32 {
    mark::make(marks().from_proxy, identity)
}

/// The identity a TO_PROXY mark carries (the SYN's, with
/// `tcp_fwmark_accept`, or a datagram's, with `SO_RCVMARK`).
pub fn sender_identity(socket_mark: u32) -> Option<u32> {
    let marks = marks();
    (marks.magic(socket_mark) == marks.to_proxy).then(|| mark::identity_of(socket_mark))
}

/// For connections the datapath redirected: dial from the client pod's own
/// address (`IP_TRANSPARENT`), with a mark that tells the datapath the
/// packets were already enforced (FROM_PROXY + the sender's identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamBind {
    pub source: IpAddr,
    pub mark: u32,
}

impl UpstreamBind {
    pub fn connect(self, address: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
        socket.set_ip_transparent(true)?;
        socket.set_mark(self.mark)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::new(self.source, 0).into())?;
        Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
    }
}

/// Where the system's CA bundle is on Debian and its kin: the roots an
/// upstream's certificate is checked against when a listener names none.
pub const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// TLS towards a listener's upstream: the name its certificate must carry
/// (also sent as SNI), and client settings offering HTTP/1.1 or h2 (ALPN),
/// with the roots to check it against and, for mutual TLS, weir's own
/// certificate. Equal when made from the same names and file contents, so
/// a reload that changes nothing keeps the warm connections.
pub struct UpstreamTls {
    pub server_name: ServerName<'static>,
    pub http1: Arc<rustls::ClientConfig>,
    pub http2: Arc<rustls::ClientConfig>,
    fingerprint: u64,
}

impl UpstreamTls {
    /// `ca`: PEM roots (else [`SYSTEM_CA_BUNDLE`]); `identity`: a PEM
    /// certificate chain and key for mutual TLS.
    pub fn load(server_name: &str, ca: Option<&Path>, identity: Option<(&Path, &Path)>) -> Result<Self, String> {
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|_| format!("server_name {server_name:?} is neither a DNS name nor an IP address"))?;
        let ca = ca.unwrap_or(Path::new(SYSTEM_CA_BUNDLE));
        let read = |what: &str, path: &Path| std::fs::read(path).map_err(|e| format!("{what} {}: {e}", path.display()));
        let ca_pem = read("ca", ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
            let cert = cert.map_err(|e| format!("ca {}: {e}", ca.display()))?;
            roots.add(cert).map_err(|e| format!("ca {}: {e}", ca.display()))?;
        }
        if roots.is_empty() {
            return Err(format!("ca {}: no PEM certificate found", ca.display()));
        }
        let mut hasher = std::hash::DefaultHasher::new();
        (server_name, &ca_pem).hash(&mut hasher);
        let identity = match identity {
            None => None,
            Some((cert_path, key_path)) => {
                let (cert_pem, key_pem) = (read("cert", cert_path)?, read("key", key_path)?);
                (&cert_pem, &key_pem).hash(&mut hasher);
                let chain: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("cert {}: {e}", cert_path.display()))?;
                if chain.is_empty() {
                    return Err(format!("cert {}: no PEM certificate found", cert_path.display()));
                }
                let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
                    .map_err(|e| format!("key {}: {e}", key_path.display()))?
                    .ok_or_else(|| format!("key {}: no PEM private key found", key_path.display()))?;
                Some((chain, key))
            }
        };
        let client = |alpn: &[u8]| -> Result<Arc<rustls::ClientConfig>, String> {
            let builder =
                rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                    .with_safe_default_protocol_versions()
                    .map_err(|e| e.to_string())?
                    .with_root_certificates(roots.clone());
            let mut config = match &identity {
                None => builder.with_no_client_auth(),
                Some((chain, key)) => builder
                    .with_client_auth_cert(chain.clone(), key.clone_key())
                    .map_err(|e| format!("certificate and key do not fit together: {e}"))?,
            };
            config.alpn_protocols = vec![alpn.to_vec()];
            Ok(Arc::new(config))
        };
        Ok(UpstreamTls {
            server_name: name,
            http1: client(b"http/1.1")?,
            http2: client(b"h2")?,
            fingerprint: hasher.finish(),
        })
    }
}

impl PartialEq for UpstreamTls {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint == other.fingerprint
    }
}

impl Eq for UpstreamTls {}

impl Hash for UpstreamTls {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fingerprint.hash(state);
    }
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls").field("server_name", &self.server_name).finish_non_exhaustive()
    }
}

/// Adds the proxy's sockets to the datapath's `WEIR_SPLICE_PROXY` map, whose
/// program splices their writes into local pods' sockets
/// (`datapath/splice.rs`).
pub struct Splicer {
    map: OwnedFd,
}

impl Splicer {
    pub fn new(map: OwnedFd) -> Splicer {
        Splicer { map }
    }

    /// Splice what the proxy writes on `socket` (local address `local`,
    /// connected to `peer`) into the pod socket at the other end, if that one
    /// is a local pod's known to `weir_sockops`. IPv4 only; a failure leaves
    /// the socket on the normal path.
    pub fn add(&self, socket: &impl AsRawFd, local: SocketAddr, peer: SocketAddr) {
        let (SocketAddr::V4(local), SocketAddr::V4(peer)) = (local, peer) else { return };
        let key = SpliceKey {
            local_ip: u32::from_ne_bytes(local.ip().octets()),
            remote_ip: u32::from_ne_bytes(peer.ip().octets()),
            local_port: local.port().to_be(),
            remote_port: peer.port().to_be(),
        };
        if let Err(e) = update(self.map.as_raw_fd(), &key, socket.as_raw_fd()) {
            tracing::debug!(%local, %peer, "not spliced: {e}");
        }
    }
}

/// BPF_MAP_UPDATE_ELEM through the raw syscall: aya's map wants `&mut`, and
/// every connection of every worker adds its socket.
fn update(map: RawFd, key: &SpliceKey, socket: RawFd) -> std::io::Result<()> {
    let value = socket as u32;
    let (key, value) = (std::ptr::from_ref(key).cast(), std::ptr::from_ref(&value).cast_mut().cast());
    // SAFETY: a key and a value of the sockhash's types, alive for the
    // call; the kernel only reads them (flags 0: BPF_ANY)
    unsafe { crate::bpf_syscall::map_elem(crate::bpf_syscall::MAP_UPDATE_ELEM, map, key, value, 0) }
}
