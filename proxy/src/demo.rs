//! A small HTTP backend for the quickstart and tests: it answers every
//! request with what it received, as JSON, over HTTP/1.1 or HTTP/2 (h2c).
//! `/echo-body` streams the request body back instead.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};

type DemoBody = UnsyncBoxBody<Bytes, hyper::Error>;

/// Serve until `stop` says true; the socket may be one a previous weir
/// handed over (`handover`).
pub async fn serve(addr: SocketAddr, mut stop: tokio::sync::watch::Receiver<bool>) -> std::io::Result<SocketAddr> {
    let listener = crate::handover::sockets::tcp_listener(addr, false, || {
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket.into())
    })?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        crate::handover::sockets::until_serving().await;
        loop {
            let accepted = tokio::select! {
                () = crate::handover::stopped(&mut stop) => break,
                accepted = listener.accept() => accepted,
            };
            let Ok((stream, peer)) = accepted else { continue };
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(req, peer));
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(bound)
}

async fn answer(req: Request<Incoming>, peer: SocketAddr) -> Result<Response<DemoBody>, Infallible> {
    if req.uri().path() == "/echo-body" {
        let body = req.into_body().boxed_unsync();
        return Ok(Response::new(body));
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in req.headers() {
        headers.entry(name.to_string()).or_default().push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let body_bytes = match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes().len(),
        Err(_) => 0,
    };
    let json = serde_json::json!({
        "service": "weir-demo-backend",
        "method": method,
        "uri": uri,
        "version": version,
        "peer": peer.to_string(),
        "headers": headers,
        "body_bytes": body_bytes,
    });
    let mut body = serde_json::to_vec_pretty(&json).unwrap_or_default();
    body.push(b'\n');
    let response = Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-demo-backend", "1")
        .body(Full::new(Bytes::from(body)).map_err(|never| match never {}).boxed_unsync())
        .expect("static response parts are valid");
    Ok(response)
}
