//! The one filter-chain runner every engine uses: each filter is timed (its
//! duration histogram and the request's filter time), a failure follows the
//! filter's failure policy, and the first denial or closed failure ends the
//! run. Engines only translate their world's decisions into an [`Answer`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::context::ConnectionContext;
use crate::model::{Audit, ChainLink, WouldBe};
use crate::wasm::{ConnectionView, FailurePolicy, FilterFailure};

/// What one filter said, in the engine's terms.
pub enum Answer<D> {
    /// Allowed; what allowed it, for the flow record.
    Allow(Option<String>),
    /// Refused, with the engine's detail (a reason, a reply, an error code).
    Deny(D),
}

/// Why a run ended before the last filter.
pub enum Stopped<D> {
    Denied(D),
    /// A filter whose failure policy is closed failed.
    Failed(FilterFailure),
}

/// What a run leaves for the flow record; runs over several chains (request
/// and response) add up.
#[derive(Debug, Default)]
pub struct ChainRun {
    pub filter_time: Duration,
    /// What each allowing filter said allowed the request, in chain order.
    pub matched: Vec<String>,
}

/// Ask each of `links` in turn.
pub fn run<'a, D>(
    links: impl IntoIterator<Item = &'a ChainLink>,
    context: &Arc<ConnectionContext>,
    run: &mut ChainRun,
    mut ask: impl FnMut(&ChainLink, ConnectionView) -> Result<Answer<D>, FilterFailure>,
) -> Option<Stopped<D>> {
    for link in links {
        let view = ConnectionView { context: context.clone(), direction: link.direction };
        let started = Instant::now();
        let answer = ask(link, view);
        let elapsed = started.elapsed();
        link.filter.observe_duration(elapsed);
        run.filter_time += elapsed;
        match answer {
            Ok(Answer::Allow(matched)) => run.matched.extend(matched),
            Ok(Answer::Deny(detail)) => return Some(Stopped::Denied(detail)),
            Err(failure) if link.filter.failure == FailurePolicy::Open => {
                tracing::debug!("{failure}; failure policy open, continuing");
            }
            Err(failure) => return Some(Stopped::Failed(failure)),
        }
    }
    None
}

/// What the audited rules would have said of a request the enforced chain
/// allowed: `Some(reason)` when they would have refused it. Nothing they say
/// is applied (a filter's edits are the caller's to drop: `ask` only
/// answers). The time spent counts in `run`.
pub fn audit(
    audit: &Audit,
    context: &Arc<ConnectionContext>,
    run: &mut ChainRun,
    ask: impl FnMut(&ChainLink, ConnectionView) -> Result<Answer<String>, FilterFailure>,
) -> Option<String> {
    let links = match &audit.would {
        WouldBe::Drop(reason) => return Some(format!("would be dropped: {reason}")),
        WouldBe::Judge(links) => links,
    };
    let mut audited = ChainRun::default();
    let stopped = self::run(links, context, &mut audited, ask);
    run.filter_time += audited.filter_time;
    match stopped? {
        Stopped::Denied(reason) => Some(format!("would be denied: {reason}")),
        Stopped::Failed(failure) => Some(format!("would fail closed: {failure}")),
    }
}
