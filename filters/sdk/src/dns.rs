//! DNS filters (`dns-filter` world): one call per query.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "dns-filter",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_dns_filter_world",
        default_bindings_module: "weir_filter_sdk::dns::bindings",
        // one Connection type for every world
        with: {
            "weir:filter/types@0.1.0": crate::http::bindings::weir::filter::types,
            "weir:filter/host@0.1.0": crate::http::bindings::weir::filter::host,
        },
    });
}

pub use crate::{Connection, Direction, Identity};
pub use bindings::weir::filter::dns_types::{Allow, Deny, Query, QueryDecision, Question, Refusal, Transport};

/// A DNS filter. One value is built per instance by `configure` and then
/// asked about every query.
pub trait DnsFilter: Sized + 'static {
    /// Parse and validate the configuration. An error rejects the policy that
    /// carried it, with this message.
    fn configure(config: &str) -> Result<Self, String>;

    fn on_query(&self, conn: &Connection, query: &Query) -> QueryDecision;
}

/// Allow; `matched` names what allowed it in the flow record.
pub fn allow(matched: Option<String>) -> QueryDecision {
    QueryDecision::Allow(Allow { matched })
}

/// Refuse with the listener's configured response code (REFUSED by default).
pub fn refuse(reason: impl Into<String>) -> QueryDecision {
    QueryDecision::Deny(Deny { reason: reason.into(), rcode: None })
}

/// Refuse with this response code.
pub fn refuse_with(reason: impl Into<String>, rcode: Refusal) -> QueryDecision {
    QueryDecision::Deny(Deny { reason: reason.into(), rcode: Some(rcode) })
}

/// Export a type implementing [`DnsFilter`] as this component's filter.
#[macro_export]
macro_rules! dns_filter {
    ($filter:ty) => {
        // exported only where it runs: natively (`cargo test` on a filter
        // crate) the component's exports would not link
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static FILTER: $crate::Slot<$filter> = $crate::Slot::new();

            struct WeirDnsExport;

            impl $crate::dns::bindings::Guest for WeirDnsExport {
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    FILTER.set(<$filter as $crate::dns::DnsFilter>::configure(&config)?);
                    Ok(())
                }
            }

            impl $crate::dns::bindings::exports::weir::filter::dns_handler::Guest for WeirDnsExport {
                fn on_query(conn: &$crate::Connection, query: $crate::dns::Query) -> $crate::dns::QueryDecision {
                    <$filter as $crate::dns::DnsFilter>::on_query(FILTER.get(), conn, &query)
                }
            }

    $crate::dns::bindings::export_dns_filter_world!(WeirDnsExport with_types_in $crate::dns::bindings);
        };
    };
}
