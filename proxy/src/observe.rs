//! `weir observe`: follow flow records from a running weir's admin API.

use std::io::Write;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::flow::FlowRecord;

pub struct ObserveOptions {
    pub admin: SocketAddr,
    /// `/flows` query: filters, follow, last.
    pub query: String,
    pub json: bool,
}

pub async fn run(options: ObserveOptions) -> anyhow::Result<()> {
    let stream = TcpStream::connect(options.admin)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach weir's admin API at {}: {e} (is weir running?)", options.admin))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = http::Request::get(format!("/flows?{}", options.query))
        .header(http::header::HOST, options.admin.to_string())
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    if !status.is_success() {
        let text = body.collect().await?.to_bytes();
        anyhow::bail!("weir refused the query ({status}): {}", String::from_utf8_lossy(&text).trim());
    }
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
