//! Example filter: a per-caller rate limit that holds across weir's workers.
//!
//! Each caller (the source identity, or its value of a label) gets a token
//! bucket in the filter's shared state (`host::take_tokens`): every instance
//! of the filter, on every worker, draws from the same bucket, so a limit of
//! 5 lets 5 through whatever `workers` says.
//!
//! ```yaml
//! rules:
//!   wasm:
//!     - name: rate-limit
//!       config: {perSecond: 10, burst: 20, by: app}   # `by`: a label key; default: the identity
//! ```

use serde::Deserialize;
use weir_filter_sdk::host;
use weir_filter_sdk::http::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    per_second: u32,
    burst: u32,
    #[serde(default)]
    by: Option<String>,
}

pub struct RateLimit {
    config: Config,
}

impl RateLimit {
    /// The bucket a caller draws from: the caller's, toward this
    /// destination (the filter's state is shared by every rule that names it
    /// with this same config, whatever service they guard).
    pub fn bucket(&self, caller: &Identity, destination: &Identity) -> String {
        let who = match &self.config.by {
            Some(key) => {
                let namespace = caller.label("io.kubernetes.pod.namespace").unwrap_or("");
                format!("{namespace}/{key}={}", caller.label(key).unwrap_or(""))
            }
            None => format!("identity={}", caller.id),
        };
        format!("{who} to {}", destination.id)
    }
}

impl HttpFilter for RateLimit {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("rate-limit config: {e}"))?;
        if config.burst == 0 {
            return Err("rate-limit config: `burst` must be at least 1".into());
        }
        Ok(RateLimit { config })
    }

    fn on_request(&self, conn: &Connection, _request: &Request) -> RequestDecision {
        let bucket = self.bucket(&conn.source(), &conn.destination());
        if host::take_tokens(&bucket, self.config.per_second, self.config.burst, 1) {
            allow()
        } else {
            host::counter_add("limited", 1);
            deny_with(
                format!("{bucket}: over {} requests per second (burst {})", self.config.per_second, self.config.burst),
                429,
                &[("retry-after", "1")],
                b"rate limited\n".to_vec(),
            )
        }
    }
}

weir_filter_sdk::http_filter!(RateLimit);
