//! The Cassandra engine: frames CQL (native protocol v3, v4 and v5, with
//! v5's checksummed segments), reads what each request runs, judges it
//! through the cassandra-filter chain and answers refusals itself with an
//! Unauthorized error on the request's stream.

pub mod cql;
pub mod frame;
mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use server::serve;

/// How many prepared statements weir remembers (all servers together).
/// Beyond it an arbitrary one is forgotten: its next EXECUTE is answered
/// Unprepared and the driver prepares it again.
const MAX_PREPARED: usize = 100_000;

/// What each prepared-statement id runs, per server. Shared by every
/// connection: drivers prepare a statement on one connection and execute
/// it on any other to the same server.
#[derive(Default)]
pub struct PreparedStatements {
    by_server: Mutex<HashMap<SocketAddr, PreparedIds>>,
}

/// One server's prepared-statement ids and what each runs.
type PreparedIds = HashMap<Vec<u8>, Arc<[cql::Statement]>>;

impl PreparedStatements {
    pub fn get(&self, server: SocketAddr, id: &[u8]) -> Option<Arc<[cql::Statement]>> {
        self.by_server.lock().unwrap().get(&server)?.get(id).cloned()
    }

    /// Filed only from a server's answer to a PREPARE weir forwarded, so a
    /// client cannot make an id stand for another statement.
    pub fn insert(&self, server: SocketAddr, id: &[u8], statements: Vec<cql::Statement>) {
        let mut by_server = self.by_server.lock().unwrap();
        let held: usize = by_server.values().map(HashMap::len).sum();
        let ids = by_server.entry(server).or_default();
        if held >= MAX_PREPARED
            && let Some(victim) = ids.keys().next().cloned()
        {
            ids.remove(&victim);
        }
        ids.insert(id.to_vec(), statements.into());
    }
}
