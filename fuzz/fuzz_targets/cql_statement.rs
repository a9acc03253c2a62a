//! The CQL tokenizer and statement classifier.
//!
//! Input: a keyspace name, a NUL, then CQL text (both UTF-8). `classify`
//! must never panic; it names at least one statement, and each statement's
//! text is part of the query (batch entries are slices of it).
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::engines::cassandra::cql;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (keyspace, query) = match text.split_once('\0') {
        Some((k, q)) => (Some(k).filter(|k| !k.is_empty()), q),
        None => (None, text),
    };
    let statements = cql::classify(query, keyspace);
    assert!(!statements.is_empty(), "no statement for {query:?}");
    for s in &statements {
        assert!(query.contains(s.query.as_str()), "statement text {:?} is not part of the query", s.query);
    }
});
