//! Stream filters (`stream-filter` world): parsers for protocols weir does
//! not know, in the shape of Cilium proxylib's `OnData`.
//!
//! Each connection gets an instance of its own, so the value `configure`
//! built sees one connection's bytes only; state that changes per call goes
//! in a `Cell`/`RefCell` field.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "stream-filter",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_stream_filter_world",
        default_bindings_module: "weir_filter_sdk::stream::bindings",
        // one Connection type for every world
        with: {
            "weir:filter/types@0.1.0": crate::http::bindings::weir::filter::types,
            "weir:filter/host@0.1.0": crate::http::bindings::weir::filter::host,
        },
    });
}

pub use crate::{Connection, Direction, Identity};
pub use bindings::weir::filter::stream_types::{Flow, FlowVerdict, Op, Side};

/// A stream filter. One value is built per instance by `configure`.
pub trait StreamFilter: Sized + 'static {
    /// Parse and validate the configuration (the policy's `l7` rules, as
    /// `{"groups": [{"name": ..., "rules": [{...}, ...]}]}`). An error
    /// rejects the policy that carried it, with this message.
    fn configure(config: &str) -> Result<Self, String>;

    /// Decide what becomes of `data`, the undecided bytes of `side`.
    fn on_data(&self, conn: &Connection, side: Side, end_stream: bool, data: &[u8]) -> Vec<Op>;
}

/// A flow record with these fields.
pub fn flow(verdict: FlowVerdict, fields: &[(&str, &str)], reason: Option<String>) -> Op {
    Op::Flow(Flow { verdict, fields: fields.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), reason })
}

/// Export a type implementing [`StreamFilter`] as this component's filter.
#[macro_export]
macro_rules! stream_filter {
    ($filter:ty) => {
        // exported only where it runs: natively (`cargo test` on a filter
        // crate) the component's exports would not link
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static FILTER: $crate::Slot<$filter> = $crate::Slot::new();

            struct WeirStreamExport;

            impl $crate::stream::bindings::Guest for WeirStreamExport {
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    FILTER.set(<$filter as $crate::stream::StreamFilter>::configure(&config)?);
                    Ok(())
                }
            }

            impl $crate::stream::bindings::exports::weir::filter::stream_handler::Guest for WeirStreamExport {
                fn on_data(
                    conn: &$crate::Connection,
                    side: $crate::stream::Side,
                    end_stream: bool,
                    data: ::std::vec::Vec<u8>,
                ) -> ::std::vec::Vec<$crate::stream::Op> {
                    <$filter as $crate::stream::StreamFilter>::on_data(FILTER.get(), conn, side, end_stream, &data)
                }
            }

    $crate::stream::bindings::export_stream_filter_world!(WeirStreamExport with_types_in $crate::stream::bindings);
        };
    };
}
