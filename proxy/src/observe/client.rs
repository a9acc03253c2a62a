//! `weir observe`: follow flow records from a running weir's admin API.

use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::model::fqdn::LearnedAddress;
use crate::observe::flow::FlowRecord;

pub struct ObserveOptions {
    pub admin: SocketAddr,
    /// `/flows` query: filters, follow, last.
    pub query: String,
    pub json: bool,
}

/// GET `path_and_query` from a running weir's admin API; the body streams.
async fn admin_get(admin: SocketAddr, path_and_query: &str) -> anyhow::Result<hyper::body::Incoming> {
    let stream = TcpStream::connect(admin)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach weir's admin API at {admin}: {e} (is weir running?)"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request =
        http::Request::get(path_and_query).header(http::header::HOST, admin.to_string()).body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body();
    if !status.is_success() {
        let text = body.collect().await?.to_bytes();
        anyhow::bail!("weir refused the query ({status}): {}", String::from_utf8_lossy(&text).trim());
    }
    Ok(body)
}

/// `weir fqdn cache`: what each endpoint learned through the DNS proxy.
pub async fn fqdn_cache(admin: SocketAddr, json: bool) -> anyhow::Result<()> {
    let body = admin_get(admin, "/fqdn").await?.collect().await?.to_bytes();
    if json {
        std::io::stdout().write_all(&body)?;
        return Ok(());
    }
    let entries: Vec<LearnedAddress> = serde_json::from_slice(&body)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{:<28} {:<40} {:<40} EXPIRES", "ENDPOINT", "NAME", "ADDRESS")?;
    for e in entries {
        let expires = if e.expires > now {
            format!("in {}s", e.expires - now)
        } else {
            format!("expired, kept for {} connection(s)", e.connections)
        };
        writeln!(out, "{:<28} {:<40} {:<40} {expires}", e.endpoint, e.name, e.address.to_string())?;
    }
    Ok(())
}

pub async fn run(options: ObserveOptions) -> anyhow::Result<()> {
    let mut body = admin_get(options.admin, &format!("/flows?{}", options.query)).await?;
    let mut pending = Vec::new();
    let stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        let Some(data) = frame?.into_data().ok() else { continue };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let mut out = stdout.lock();
            if options.json {
                out.write_all(&line)?;
            } else {
                match serde_json::from_slice::<FlowRecord>(&line) {
                    Ok(flow) => writeln!(out, "{}", flow.to_text())?,
                    Err(_) => out.write_all(&line)?, // e.g. a "lagged" notice
                }
            }
            out.flush()?;
        }
    }
    Ok(())
}
