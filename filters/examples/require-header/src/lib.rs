//! Example custom filter: requests must carry a header whose value matches a
//! regular expression, or they get a 401 of the filter's own making.
//!
//! Policy usage (a `wasm` rule next to or instead of `http` rules):
//!
//! ```yaml
//! rules:
//!   wasm:
//!     - name: require-header
//!       config:
//!         header: x-api-key
//!         pattern: "[0-9a-f]{32}"
//!         realm: demo            # optional, for WWW-Authenticate
//!         stampHeader: x-weir-caller   # optional: tell the upstream who called
//! ```

use regex::Regex;
use serde::Deserialize;
use weir_filter_sdk::host;
use weir_filter_sdk::http::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Config {
    header: String,
    pattern: String,
    #[serde(default = "default_realm")]
    realm: String,
    #[serde(default)]
    stamp_header: Option<String>,
}

fn default_realm() -> String {
    "weir".to_string()
}

pub struct RequireHeader {
    header: String,
    pattern: Regex,
    challenge: String,
    stamp_header: Option<String>,
}

impl HttpFilter for RequireHeader {
    fn configure(config: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config).map_err(|e| format!("require-header config: {e}"))?;
        if config.header.is_empty() {
            return Err("require-header config: `header` must not be empty".into());
        }
        let pattern = Regex::new(&format!("^(?:{})$", config.pattern))
            .map_err(|e| format!("require-header config: `pattern`: {e}"))?;
        Ok(RequireHeader {
            header: config.header.to_ascii_lowercase(),
            pattern,
            challenge: format!("ApiKey realm=\"{}\", header=\"{}\"", config.realm, config.header),
            stamp_header: config.stamp_header,
        })
    }

    fn on_request(&self, conn: &Connection, request: &Request) -> RequestDecision {
        match request.header(&self.header) {
            Some(value) if self.pattern.is_match(value) => {
                host::counter_add("accepted", 1);
                let edits = match &self.stamp_header {
                    Some(name) => vec![set_header(name, &conn.source().id.to_string())],
                    None => Vec::new(),
                };
                RequestDecision::Allow(Allow { edits, matched: Some("require-header".into()) })
            }
            found => {
                host::counter_add("rejected", 1);
                let why = if found.is_some() { "malformed" } else { "missing" };
                deny_with(
                    format!("{why} {}", self.header),
                    401,
                    &[("www-authenticate", &self.challenge), ("content-type", "text/plain")],
                    format!("{why} {} header\n", self.header),
                )
            }
        }
    }
}

weir_filter_sdk::http_filter!(RequireHeader);
