//! Kafka filters (`kafka-filter` world): one call per request.

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "kafka-filter",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "export_kafka_filter_world",
        default_bindings_module: "weir_filter_sdk::kafka::bindings",
        // one Connection type for every world
        with: {
            "weir:filter/types@0.1.0": crate::http::bindings::weir::filter::types,
            "weir:filter/host@0.1.0": crate::http::bindings::weir::filter::host,
        },
    });
}

pub use crate::{Connection, Direction, Identity};
pub use bindings::weir::filter::kafka_types::{Allow, Deny, Request, RequestDecision, Topics};

/// A Kafka filter. One value is built per instance by `configure` and then
/// asked about every request.
pub trait KafkaFilter: Sized + 'static {
    /// Parse and validate the configuration. An error rejects the policy that
    /// carried it, with this message.
    fn configure(config: &str) -> Result<Self, String>;

    fn on_request(&self, conn: &Connection, request: &Request) -> RequestDecision;
}

/// Allow; `matched` names what allowed it in the flow record.
pub fn allow(matched: Option<String>) -> RequestDecision {
    RequestDecision::Allow(Allow { matched })
}

/// Refuse with the authorization error that fits the request's API.
pub fn deny(reason: impl Into<String>) -> RequestDecision {
    RequestDecision::Deny(Deny { reason: reason.into(), error_code: None })
}

/// Refuse with this Kafka error code.
pub fn deny_with(reason: impl Into<String>, error_code: i16) -> RequestDecision {
    RequestDecision::Deny(Deny { reason: reason.into(), error_code: Some(error_code) })
}

/// Export a type implementing [`KafkaFilter`] as this component's filter.
#[macro_export]
macro_rules! kafka_filter {
    ($filter:ty) => {
        // exported only where it runs: natively (`cargo test` on a filter
        // crate) the component's exports would not link
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            static FILTER: $crate::Slot<$filter> = $crate::Slot::new();

            struct WeirKafkaExport;

            impl $crate::kafka::bindings::Guest for WeirKafkaExport {
                fn configure(config: ::std::string::String) -> ::core::result::Result<(), ::std::string::String> {
                    FILTER.set(<$filter as $crate::kafka::KafkaFilter>::configure(&config)?);
                    Ok(())
                }
            }

            impl $crate::kafka::bindings::exports::weir::filter::kafka_handler::Guest for WeirKafkaExport {
                fn on_request(
                    conn: &$crate::Connection,
                    request: $crate::kafka::Request,
                ) -> $crate::kafka::RequestDecision {
                    <$filter as $crate::kafka::KafkaFilter>::on_request(FILTER.get(), conn, &request)
                }
            }

    $crate::kafka::bindings::export_kafka_filter_world!(WeirKafkaExport with_types_in $crate::kafka::bindings);
        };
    };
}
