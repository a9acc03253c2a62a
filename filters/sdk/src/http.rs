//! HTTP filters (`http-filter` world): HTTP/1.1, HTTP/2 and gRPC.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "http-filter",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_http_filter_world",
        default_bindings_module: "weir_filter_sdk::http::bindings",
    });
}

pub use crate::{Connection, Direction, Identity};
pub use bindings::weir::filter::http_types::{
    Allow, Deny, Header, HeaderOp, Reply, Request, RequestDecision, Response, ResponseDecision,
};

/// An HTTP filter. One value is built per instance by `configure` and then
/// asked about every request (and every response of an allowed request).
pub trait HttpFilter: Sized + 'static {
    /// Parse and validate the configuration. An error rejects the policy that
    /// carried it, with this message.
    fn configure(config: &str) -> Result<Self, String>;

    fn on_request(&self, conn: &Connection, request: &Request) -> RequestDecision;

    /// Judge or edit a response head. Not implementing it tells the host,
    /// on the first response, to stop calling (`ResponseDecision::IgnoreResponses`).
    fn on_response(&self, _conn: &Connection, _response: &Response) -> ResponseDecision {
        ResponseDecision::IgnoreResponses
    }
}

/// A request head split into its parts (see [`Request::parts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub scheme: &'a str,
    /// The header lines, `name: value\n` each.
    pub headers: &'a [u8],
}

impl Request {
    /// All parts of the head in one pass. Each accessor below parses again;
    /// a filter that reads several fields per request should call this once.
    pub fn parts(&self) -> RequestParts<'_> {
        let head = self.head.as_slice();
        let mut spaces = [head.len(); 3];
        let mut found = 0;
        let mut end = head.len();
        for (i, &b) in head.iter().enumerate() {
            if b == b'\n' {
                end = i;
                break;
            }
            if b == b' ' && found < 3 {
                spaces[found] = i;
                found += 1;
            }
        }
        // the host only sends UTF-8; a broken head reads as empty
        let Ok(line) = core::str::from_utf8(&head[..end]) else { return RequestParts::default() };
        let field = |from: usize, to: usize| line.get(from.min(end)..to.min(end)).unwrap_or("");
        RequestParts {
            method: field(0, spaces[0]),
            path: field(spaces[0] + 1, spaces[1]),
            authority: field(spaces[1] + 1, spaces[2]),
            scheme: field(spaces[2] + 1, end),
            headers: head.get(end + 1..).unwrap_or(&[]),
        }
    }

    /// `(method, path, authority, scheme)`.
    pub fn request_line(&self) -> (&str, &str, &str, &str) {
        let p = self.parts();
        (p.method, p.path, p.authority, p.scheme)
    }

    pub fn method(&self) -> &str {
        self.request_line().0
    }

    /// The normalized path and the query string, as Cilium's `path` rule sees it.
    pub fn path(&self) -> &str {
        self.request_line().1
    }

    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        let path = self.path();
        path.split_once('?').map_or(path, |(p, _)| p)
    }

    /// `:authority`, or the Host header on HTTP/1.1; may be empty.
    pub fn authority(&self) -> &str {
        self.request_line().2
    }

    /// `http` or `https`.
    pub fn scheme(&self) -> &str {
        self.request_line().3
    }

    /// The header lines (`name: value\n`), without the request line.
    pub fn header_block(&self) -> &[u8] {
        self.parts().headers
    }

    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::headers::get(self.header_block(), name)
    }

    /// All headers in wire order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        crate::headers::iter(self.header_block())
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::headers::get(&self.headers, name)
    }
}

/// Allow, unchanged.
pub fn allow() -> RequestDecision {
    RequestDecision::Allow(Allow { edits: Vec::new(), matched: None })
}

/// Deny with the protocol's standard refusal (403 `Access denied`).
pub fn deny(reason: impl Into<String>) -> RequestDecision {
    RequestDecision::Deny(Deny { reason: reason.into(), reply: None })
}

/// Deny with a reply of the filter's choosing.
pub fn deny_with(
    reason: impl Into<String>,
    status: u16,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> RequestDecision {
    RequestDecision::Deny(Deny {
        reason: reason.into(),
        reply: Some(Reply {
            status,
            headers: headers
                .iter()
                .map(|(name, value)| Header { name: name.to_string(), value: value.to_string() })
                .collect(),
            body: body.into(),
        }),
    })
}

pub fn set_header(name: &str, value: &str) -> HeaderOp {
    HeaderOp::Set(Header { name: name.to_string(), value: value.to_string() })
}

pub fn append_header(name: &str, value: &str) -> HeaderOp {
    HeaderOp::Append(Header { name: name.to_string(), value: value.to_string() })
}

pub fn remove_header(name: &str) -> HeaderOp {
    HeaderOp::Remove(name.to_string())
}

/// Export a type implementing [`HttpFilter`] as this component's filter.
#[macro_export]
macro_rules! http_filter {
    ($filter:ty) => {
        // exported only where it runs: natively (`cargo test` on a filter
        // crate) the component's exports would not link
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static FILTER: $crate::Slot<$filter> = $crate::Slot::new();

            struct WeirHttpExport;

            impl $crate::http::bindings::Guest for WeirHttpExport {
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    FILTER.set(<$filter as $crate::http::HttpFilter>::configure(&config)?);
                    Ok(())
                }
            }

            impl $crate::http::bindings::exports::weir::filter::http_handler::Guest for WeirHttpExport {
                fn on_request(
                    conn: &$crate::Connection,
                    request: $crate::http::Request,
                ) -> $crate::http::RequestDecision {
                    <$filter as $crate::http::HttpFilter>::on_request(FILTER.get(), conn, &request)
                }

                fn on_response(
                    conn: &$crate::Connection,
                    response: $crate::http::Response,
                ) -> $crate::http::ResponseDecision {
                    <$filter as $crate::http::HttpFilter>::on_response(FILTER.get(), conn, &response)
                }
            }

    $crate::http::bindings::export_http_filter_world!(WeirHttpExport with_types_in $crate::http::bindings);
        };
    };
}
