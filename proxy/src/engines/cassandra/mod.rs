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

/// How much weir remembers of prepared statements (all servers together):
/// this many ids and this many bytes of statement text. Beyond either, an
/// arbitrary one is forgotten: its next EXECUTE is answered Unprepared and
/// the driver prepares it again.
const MAX_PREPARED: usize = 100_000;
const MAX_PREPARED_BYTES: usize = 64 << 20;

/// What each prepared-statement id runs, per server. Shared by every
/// connection: drivers prepare a statement on one connection and execute
/// it on any other to the same server.
#[derive(Default)]
pub struct PreparedStatements {
    held: Mutex<Held>,
}

#[derive(Default)]
struct Held {
    by_server: HashMap<SocketAddr, PreparedIds>,
    count: usize,
    bytes: usize,
}

/// One server's prepared-statement ids and what each runs.
type PreparedIds = HashMap<Vec<u8>, Arc<[cql::Statement]>>;

fn size(statements: &[cql::Statement]) -> usize {
    statements.iter().map(|s| s.query.len() + s.action.len() + s.table.as_ref().map_or(0, String::len)).sum()
}

impl PreparedStatements {
    pub fn get(&self, server: SocketAddr, id: &[u8]) -> Option<Arc<[cql::Statement]>> {
        self.held.lock().unwrap().by_server.get(&server)?.get(id).cloned()
    }

    /// Filed only from a server's answer to a PREPARE weir forwarded, so a
    /// client cannot make an id stand for another statement.
    pub fn insert(&self, server: SocketAddr, id: &[u8], statements: Arc<[cql::Statement]>) {
        let added = size(&statements);
        let mut held = self.held.lock().unwrap();
        let held = &mut *held;
        while held.count > 0 && (held.count >= MAX_PREPARED || held.bytes + added > MAX_PREPARED_BYTES) {
            let Some(ids) = held.by_server.values_mut().find(|ids| !ids.is_empty()) else { break };
            let victim = ids.keys().next().cloned().unwrap();
            let gone = ids.remove(&victim).unwrap();
            held.count -= 1;
            held.bytes -= size(&gone);
        }
        let replaced = held.by_server.entry(server).or_default().insert(id.to_vec(), statements);
        match replaced {
            Some(old) => held.bytes -= size(&old),
            None => held.count += 1,
        }
        held.bytes += added;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement(query: &str) -> Arc<[cql::Statement]> {
        Arc::new([cql::Statement { action: "select".into(), table: None, query: query.into() }])
    }

    #[test]
    fn prepared_statements_are_kept_per_server_and_bounded_in_bytes() {
        let p = PreparedStatements::default();
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
        p.insert(a, b"id", statement("SELECT 1"));
        assert_eq!(p.get(a, b"id").unwrap()[0].query, "SELECT 1");
        assert!(p.get(b, b"id").is_none(), "ids are per server");
        // statements bigger than the byte bound push the others out
        let big = "x".repeat(MAX_PREPARED_BYTES / 2);
        p.insert(a, b"big1", statement(&big));
        p.insert(a, b"big2", statement(&big));
        let held = p.held.lock().unwrap();
        assert!(held.bytes <= MAX_PREPARED_BYTES, "{}", held.bytes);
        assert!(held.by_server[&a].contains_key(b"big2".as_slice()));
        assert_eq!(held.count, held.by_server.values().map(HashMap::len).sum::<usize>());
    }
}
