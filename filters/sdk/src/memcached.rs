//! memcached filters (`memcached-filter` world): one call per request.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "memcached-filter",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_memcached_filter_world",
        default_bindings_module: "weir_filter_sdk::memcached::bindings",
        // one Connection type for every world
        with: {
            "weir:filter/types@0.1.0": crate::http::bindings::weir::filter::types,
            "weir:filter/host@0.1.0": crate::http::bindings::weir::filter::host,
        },
    });
}

pub use crate::{Connection, Direction, Identity};
pub use bindings::weir::filter::memcached_types::{Allow, Deny, Protocol, Request, RequestDecision};

/// A memcached filter. One value is built per instance by `configure` and
/// then asked about every request.
pub trait MemcachedFilter: Sized + 'static {
    /// Parse and validate the configuration. An error rejects the policy that
    /// carried it, with this message.
    fn configure(config: &str) -> Result<Self, String>;

    fn on_request(&self, conn: &Connection, request: &Request) -> RequestDecision;
}

/// Allow; `matched` names what allowed it in the flow record.
pub fn allow(matched: Option<String>) -> RequestDecision {
    RequestDecision::Allow(Allow { matched })
}

/// Refuse: the client gets the protocol's "access denied" error.
pub fn deny(reason: impl Into<String>) -> RequestDecision {
    RequestDecision::Deny(Deny { reason: reason.into() })
}

/// Export a type implementing [`MemcachedFilter`] as this component's filter.
#[macro_export]
macro_rules! memcached_filter {
    ($filter:ty) => {
        // exported only where it runs: natively (`cargo test` on a filter
        // crate) the component's exports would not link
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static FILTER: $crate::Slot<$filter> = $crate::Slot::new();

            struct WeirMemcachedExport;

            impl $crate::memcached::bindings::Guest for WeirMemcachedExport {
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    FILTER.set(<$filter as $crate::memcached::MemcachedFilter>::configure(&config)?);
                    Ok(())
                }
            }

            impl $crate::memcached::bindings::exports::weir::filter::memcached_handler::Guest for WeirMemcachedExport {
                fn on_request(
                    conn: &$crate::Connection,
                    request: $crate::memcached::Request,
                ) -> $crate::memcached::RequestDecision {
                    <$filter as $crate::memcached::MemcachedFilter>::on_request(FILTER.get(), conn, &request)
                }
            }

    $crate::memcached::bindings::export_memcached_filter_world!(WeirMemcachedExport with_types_in $crate::memcached::bindings);
        };
    };
}
