//! The hand-over's messages: one JSON object per line over a unix stream
//! socket; the `Sockets` line carries the descriptors (`SCM_RIGHTS`).

use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt as _, AsyncWriteExt};

use super::sockets::SocketKey;

/// A line longer than this is not ours.
const MAX_LINE: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// new → running: take over, please.
    Hello { pid: u32, version: String, config: PathBuf },
    /// running → new: the sockets, in the order of the descriptors.
    Sockets { pid: u32, version: String, sockets: Vec<SocketKey> },
    /// running → new: no.
    Refused { reason: String },
    /// new → running: serving; stop.
    Ready,
    /// running → new: its DNS proxy learned these addresses.
    Learned { seq: u64, endpoint: String, name: String, addresses: Vec<(IpAddr, u32)> },
    /// new → running: `seq` is in the new weir's maps.
    Applied { seq: u64 },
    /// running → new: it writes no map any more (rewrite them all).
    Released,
    /// running → new: drained (`cut`: connections still open at the deadline).
    Done { finished: bool, cut: usize },
}

impl Message {
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("messages serialize");
        line.push(b'\n');
        line
    }

    pub fn parse(line: &[u8]) -> Result<Message, String> {
        serde_json::from_slice(line).map_err(|e| format!("not a hand-over message: {e}"))
    }
}

/// Read one message; `Ok(None)`: the peer closed.
pub async fn read<R: tokio::io::AsyncBufRead + Unpin>(reader: &mut R) -> Result<Option<Message>, String> {
    let mut line = Vec::new();
    let n = (&mut *reader).take(MAX_LINE as u64).read_until(b'\n', &mut line).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err("a hand-over message was cut off".into());
    }
    Message::parse(&line).map(Some)
}

pub async fn write<W: tokio::io::AsyncWrite + Unpin>(writer: &mut W, message: &Message) -> std::io::Result<()> {
    writer.write_all(&message.line()).await
}
