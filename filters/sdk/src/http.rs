//! HTTP filters (`http-filter` world): HTTP/1.1, HTTP/2 and gRPC.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "http-filter",
        path: "../../wit",
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

    fn on_response(&self, _conn: &Connection, _response: &Response) -> ResponseDecision {
        ResponseDecision::Pass(Vec::new())
    }
}

impl Request {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::headers::get(&self.headers, name)
    }

    /// All headers in wire order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        crate::headers::iter(&self.headers)
    }

    /// The path without the query string.
    pub fn path_only(&self) -> &str {
        self.path.split_once('?').map_or(&self.path, |(p, _)| p)
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
