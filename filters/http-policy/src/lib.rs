//! Built-in HTTP policy filter: CiliumNetworkPolicy `rules.http` semantics.
//!
//! The host resolves selectors: it hands this filter, per (endpoint, direction,
//! port, peer identity), the groups of HTTP rules whose selector chose the
//! peer. A request is allowed when any group allows it; a group with no rules
//! allows everything (an L3/L4 rule, or `http: [{}]`). Inside a group, rules
//! are OR-ed. This mirrors cilium/proxy's `PortNetworkPolicyRules`.

mod config;
mod rules;

use config::PolicyConfig;
use rules::{CompiledPolicy, HeaderView};
use weir_filter_sdk::ConfigError;
use weir_filter_sdk::http::*;

pub struct HttpPolicy(CompiledPolicy);

impl HttpFilter for HttpPolicy {
    fn configure(config: &str) -> Result<Self, String> {
        let parsed: PolicyConfig =
            serde_json::from_str(config).map_err(|e| ConfigError::new(format!("http-policy config: {e}")))?;
        Ok(HttpPolicy(CompiledPolicy::compile(&parsed)?))
    }

    fn on_request(&self, _conn: &Connection, request: &Request) -> RequestDecision {
        let mut view = HeaderView::new(request);
        match self.0.evaluate(&mut view) {
            Some(matched) => {
                RequestDecision::Allow(Allow { edits: view.into_edits(), matched: matched.map(str::to_string) })
            }
            None => deny("no HTTP rule matched"),
        }
    }
}

weir_filter_sdk::http_filter!(HttpPolicy);
