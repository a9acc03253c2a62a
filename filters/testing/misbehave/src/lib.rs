//! A filter that misbehaves on purpose, for the host's failure-handling tests.
//! Never use it in a real policy.
//!
//! The request path picks the failure: `/trap` panics (a Wasm trap), `/loop`
//! spins forever (hits the CPU deadline), `/oom` allocates until the memory
//! limit stops it, `/leak` leaks 1 MiB and allows (memory that only grows
//! from call to call), `/slow-ok` burns some CPU and then allows. Any other path is
//! allowed and counted. Every response gets `x-misbehave-responses: N`, the
//! responses this instance has seen. `{"rejectConfig": "why"}` makes
//! `configure` fail, and `{"trapInConfigure": true}` makes it trap.

use serde::Deserialize;
use weir_filter_sdk::host;
use weir_filter_sdk::http::*;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    #[serde(default)]
    reject_config: Option<String>,
    #[serde(default)]
    trap_in_configure: bool,
}

pub struct Misbehave {
    /// Requests seen by this instance; a fresh instance starts again at zero,
    /// which lets tests observe that a trapped instance was replaced.
    seen: core::cell::Cell<u64>,
    responses: core::cell::Cell<u64>,
}

impl HttpFilter for Misbehave {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = if config.trim().is_empty() {
            Config::default()
        } else {
            serde_json::from_str(config).map_err(|e| format!("misbehave config: {e}"))?
        };
        if let Some(why) = config.reject_config {
            return Err(why);
        }
        if config.trap_in_configure {
            panic!("asked to trap in configure");
        }
        Ok(Misbehave { seen: core::cell::Cell::new(0), responses: core::cell::Cell::new(0) })
    }

    fn on_request(&self, _conn: &Connection, request: &Request) -> RequestDecision {
        self.seen.set(self.seen.get() + 1);
        match request.path_only() {
            "/trap" => panic!("asked to trap"),
            "/loop" => loop {
                core::hint::black_box(self.seen.get());
            },
            "/oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    core::hint::black_box(&hoard);
                }
            }
            "/leak" => {
                core::mem::forget(core::hint::black_box(vec![1u8; 1 << 20]));
                RequestDecision::Allow(Allow {
                    edits: vec![set_header("x-misbehave-seen", &self.seen.get().to_string())],
                    matched: None,
                })
            }
            "/slow-ok" => {
                let start = host::monotonic_now();
                while host::monotonic_now() - start < 2_000_000 {}
                allow()
            }
            _ => {
                host::counter_add("requests", 1);
                RequestDecision::Allow(Allow {
                    edits: vec![set_header("x-misbehave-seen", &self.seen.get().to_string())],
                    matched: None,
                })
            }
        }
    }

    fn on_response(&self, _conn: &Connection, _response: &Response) -> ResponseDecision {
        self.responses.set(self.responses.get() + 1);
        ResponseDecision::Pass(vec![set_header("x-misbehave-responses", &self.responses.get().to_string())])
    }
}

weir_filter_sdk::http_filter!(Misbehave);
