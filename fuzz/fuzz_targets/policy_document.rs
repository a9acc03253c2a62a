//! Policy documents: CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy
//! and Kubernetes NetworkPolicy, in YAML or JSON (a YAML subset), one or
//! more per file.
//!
//! Input: a policy file's text. Parsing and compiling it must never panic,
//! whatever it holds: every problem is an error for the operator, and a
//! document either parses or is reported, never both. Compiling the
//! documents that parsed either succeeds or reports at least one error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weir::policy::PolicySet;
use weir::policy::document::parse_file;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (documents, errors) = parse_file("fuzz.yaml", text);
    for e in &errors {
        let _ = e.to_string();
    }
    for d in &documents {
        let _ = (d.name(), d.namespace(), d.rules());
    }
    if let Err(errors) = PolicySet::compile(&documents) {
        assert!(!errors.is_empty(), "a refused compile with no error to show");
    }
});
