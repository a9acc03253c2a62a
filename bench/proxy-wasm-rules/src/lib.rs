//! The quickstart's `demo-api` rules (GET /public/.*, POST /api/orders with
//! `Content-Type: application/json`, everything else 403) as an Envoy
//! proxy-wasm HTTP filter: what Istio's WasmPlugin or Cilium's Envoy would
//! run for the same policy. bench/http.sh puts it beside weir's component.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Rules))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Rules;

impl Context for Rules {}

impl HttpContext for Rules {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let method = self.get_http_request_header(":method").unwrap_or_default();
        let path = self.get_http_request_header(":path").unwrap_or_default();
        let allowed = (method == "GET" && path.starts_with("/public/"))
            || (method == "POST"
                && path == "/api/orders"
                && self.get_http_request_header("content-type").as_deref() == Some("application/json"));
        if allowed {
            return Action::Continue;
        }
        self.send_http_response(403, vec![], Some(b"Access denied\r\n"));
        Action::Pause
    }
}
