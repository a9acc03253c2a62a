//! The admin API: /healthz, /metrics, /config, /flows, a service map at /
//! and the live flow page at /ui.
//! The same server, limited to /metrics and /healthz, is the metrics
//! listener (`metrics:` in weir.yaml): what Prometheus and the kubelet's
//! probes reach on a node's address, without the policies and traffic the
//! full API shows.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc;

use crate::engines::state::ProxyState;
use crate::observe::flow::{FlowFilter, FlowRecord, Verdict};
use crate::observe::metrics::{COMMIT, VERSION};

type AdminBody = UnsyncBoxBody<Bytes, Infallible>;

const FLOW_PAGE: &str = include_str!("../assets/flow-page.html");

/// What a listener of this server answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Everything: loopback only, by default.
    Admin,
    /// /metrics and /healthz.
    Metrics,
}

/// Serve until `stop` turns true (a hand-over: the new weir serves the same
/// socket); the listening socket may be one a previous weir handed over.
pub async fn serve(
    state: Arc<ProxyState>,
    addr: SocketAddr,
    scope: Scope,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = crate::handover::sockets::tcp_listener(addr, false, || {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        Ok(socket.into())
    })?;
    match scope {
        Scope::Admin => tracing::info!(%addr, "admin API listening"),
        Scope::Metrics => tracing::info!(%addr, "metrics listening (/metrics, /healthz)"),
    }
    tokio::spawn(async move {
        crate::handover::sockets::until_serving().await;
        loop {
            let accepted = tokio::select! {
                () = crate::handover::stopped(&mut stop) => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, _)) = accepted else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(route(&state, req, scope)) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(())
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<AdminBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()).boxed_unsync())
        .expect("static response parts are valid")
}

fn route(state: &Arc<ProxyState>, req: Request<Incoming>, scope: Scope) -> Response<AdminBody> {
    if req.method() != Method::GET {
        return full(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let query = req.uri().query().unwrap_or("");
    let path = req.uri().path();
    if scope == Scope::Metrics && !matches!(path, "/healthz" | "/metrics") {
        return full(StatusCode::NOT_FOUND, "text/plain", "not found; this listener serves /healthz and /metrics\n");
    }
    match path {
        "/healthz" => {
            let generation = state.model.load().generation;
            let (pid, start) = (std::process::id(), state.handover.describe_start());
            full(
                StatusCode::OK,
                "text/plain",
                format!("ok version={VERSION} commit={COMMIT} pid={pid} {start} generation={generation}\n"),
            )
        }
        "/metrics" => full(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", state.metrics.encode()),
        "/config" => {
            let model = state.model.load();
            let reload = state.reload.lock().unwrap().clone();
            let body = serde_json::json!({ "model": model.describe(), "reload": reload });
            full(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&body).unwrap_or_default())
        }
        "/flows" => match FlowFilter::from_query(query) {
            Ok((filter, options)) => flows(state, filter, options),
            Err(e) => full(StatusCode::BAD_REQUEST, "text/plain", format!("{e}\n")),
        },
        "/fqdn" => {
            let entries = state.fqdn.entries();
            full(StatusCode::OK, "application/json", serde_json::to_vec_pretty(&entries).unwrap_or_default())
        }
        "/" => full(StatusCode::OK, "text/html; charset=utf-8", service_map(state)),
        // the live flow page: one file, built into the binary (nothing to
        // install or build); it reads /flows and /config like any client
        "/ui" => full(StatusCode::OK, "text/html; charset=utf-8", FLOW_PAGE),
        _ => full(StatusCode::NOT_FOUND, "text/plain", "not found; try /ui /healthz /metrics /config /flows /fqdn\n"),
    }
}

/// NDJSON: the kept history (or its last N), then live flows if `follow`.
fn flows(
    state: &Arc<ProxyState>,
    filter: FlowFilter,
    options: crate::observe::flow::QueryOptions,
) -> Response<AdminBody> {
    let (history, mut live) = state.flows.subscribe();
    let mut past: Vec<Arc<FlowRecord>> = history.into_iter().filter(|f| filter.matches(f)).collect();
    if let Some(last) = options.last {
        past.drain(..past.len().saturating_sub(last));
    }
    let line = |f: &FlowRecord| {
        let mut line = serde_json::to_vec(f).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    };
    if !options.follow {
        let body: Vec<u8> = past.iter().flat_map(|f| line(f)).collect();
        return full(StatusCode::OK, "application/x-ndjson", body);
    }
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(async move {
        for f in &past {
            if tx.send(line(f)).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(f) if filter.matches(&f) => {
                    if tx.send(line(&f)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("{{\"lagged\":{n}}}\n");
                    if tx.send(Bytes::from(note)).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .body(ChannelBody(rx).boxed_unsync())
        .expect("static response parts are valid")
}

struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Who talked to whom in the kept flow history, and how it went.
fn service_map(state: &Arc<ProxyState>) -> String {
    let (history, _) = state.flows.subscribe();
    let mut edges: BTreeMap<(String, String), [u64; 5]> = BTreeMap::new();
    let name = |labels: &[String], id: u32| {
        let app: Vec<&str> = labels
            .iter()
            .filter(|l| !l.contains("io.kubernetes.pod.namespace"))
            .map(|l| l.split_once(':').map_or(l.as_str(), |(_, r)| r))
            .collect();
        if app.is_empty() { id.to_string() } else { app.join(",") }
    };
    for f in &history {
        let key = (name(&f.source.labels, f.source.identity), name(&f.destination.labels, f.destination.identity));
        let slot = match f.verdict {
            Verdict::Forwarded => 0,
            Verdict::Denied => 1,
            Verdict::Dropped => 2,
            Verdict::Error => 3,
            Verdict::Audited => 4,
        };
        edges.entry(key).or_default()[slot] += 1;
    }
    let escape = |s: &str| s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut rows = String::new();
    for ((src, dst), counts) in &edges {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>&rarr;</td><td>{}</td><td class=ok>{}</td><td class=deny>{}</td><td class=deny>{}</td><td>{}</td><td class=audit>{}</td></tr>\n",
            escape(src),
            escape(dst),
            counts[0],
            counts[1],
            counts[2],
            counts[3],
            counts[4]
        ));
    }
    let generation = state.model.load().generation;
    format!(
        "<!doctype html><html><head><meta charset=utf-8><title>weir service map</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.3em .8em;text-align:left}}\
         .ok{{color:#070}}.deny{{color:#a00}}.audit{{color:#a60}}</style></head><body>\
         <h1>weir service map</h1><p>policy generation {generation}; last {} flows. \
         <a href=/ui>live flows</a> · <a href=/flows>flows</a> · <a href=/config>config</a> · <a href=/metrics>metrics</a></p>\
         <table><tr><th>source</th><th></th><th>destination</th><th>forwarded</th><th>denied</th>\
         <th>dropped</th><th>error</th><th>audited</th></tr>\n{rows}</table></body></html>\n",
        history.len()
    )
}
