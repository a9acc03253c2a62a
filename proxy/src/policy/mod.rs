//! The policy model: documents compiled into rules, and the L3/L4 verdict
//! for one side of a connection with the L7 rules that then apply.
//!
//! Semantics follow Cilium:
//! - an endpoint is *enforced* in a direction when a rule selecting it has an
//!   `ingress`/`ingressDeny` (resp. egress) section, unless that rule sets
//!   `enableDefaultDeny` off for the direction; enforced endpoints deny what
//!   no rule allows;
//! - deny rules win over allow rules and carry L3/L4 only;
//! - rules whose peers and ports match are OR-ed; each contributes its L7
//!   rules as one group, and a matching rule without L7 rules allows all L7.

mod compile;
pub mod document;
mod evaluate;
mod k8s;
mod rules;
pub mod schema;
pub mod selector;
mod wire;

pub use document::{FqdnSelector, HttpRule, KafkaRule, PolicyError, SourcedDocument};
pub use evaluate::SubjectRules;
pub use rules::*;

#[cfg(test)]
mod tests;
