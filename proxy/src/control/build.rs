//! One model from what the sources say, with the API server's objects
//! judged one by one.
//!
//! A policy file is all or nothing, as before: a bad document refuses the
//! whole update and the last good model stays. An object of the API server
//! (an independent document) is set aside alone: a team's broken policy must
//! not stop every other team's policies, nor the pods that come and go,
//! from reaching the model. Where the object was good before, its last good
//! version stays in force; an object that was never good is not enforced,
//! as the API server would not have stored it with a validating schema.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::model::fqdn::FqdnCache;
use crate::model::{ModelInputs, PolicyModel};
use crate::policy::PolicyError;
use crate::policy::document::SourcedDocument;
use crate::wasm::FilterRuntime;

use super::source::Read;

/// The last good version of every independent object, by key.
pub type LastGood = HashMap<String, SourcedDocument>;

/// A model and what was left out of it.
pub struct Built {
    pub model: Arc<PolicyModel>,
    /// Objects left out or held at their last good version, with why.
    pub set_aside: Vec<SetAside>,
    /// The independent objects in the model: the next build's last good.
    pub good: LastGood,
}

#[derive(Clone, Debug)]
pub struct SetAside {
    pub key: String,
    pub errors: Vec<PolicyError>,
    /// Its last good version is in the model instead.
    pub previous_kept: bool,
}

impl std::fmt::Display for SetAside {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let errors: Vec<String> = self.errors.iter().map(ToString::to_string).collect();
        write!(f, "{}", errors.join("; "))?;
        if self.previous_kept {
            write!(f, " (its last good version stays in force)")
        } else {
            write!(f, " (not enforced)")
        }
    }
}

/// How many times a build is tried with more objects set aside: each round
/// sets aside every object its errors name, so a second round only meets
/// what the first one's errors hid (L7 rules are checked only once the
/// documents compile).
const ROUNDS: usize = 4;

/// Build from `read`; `Err`: no model, for reasons not of one object (a bad
/// `weir.yaml`, a bad policy file, a source that failed).
pub fn build(
    read: Read,
    runtime: &Arc<FilterRuntime>,
    fqdn: &Arc<FqdnCache>,
    generation: u64,
    last_good: &LastGood,
) -> Result<Built, Vec<PolicyError>> {
    let Read { mut inputs, errors, set_aside: unreadable } = read;
    if !errors.is_empty() {
        // still build, so the answer names every problem at once
        let more = PolicyModel::build(inputs, runtime, fqdn, generation).err().unwrap_or_default();
        return Err(errors.into_iter().chain(more).collect());
    }
    let mut aside: BTreeMap<String, SetAside> = BTreeMap::new();
    let mut substituted = HashSet::new();
    for (key, error) in unreadable {
        aside
            .entry(key.clone())
            .or_insert_with(|| SetAside { key, errors: Vec::new(), previous_kept: false })
            .errors
            .push(error);
    }
    for (key, entry) in aside.iter_mut() {
        if let Some(previous) = last_good.get(key) {
            inputs.documents.push(previous.clone());
            substituted.insert(key.clone());
            entry.previous_kept = true;
        }
    }
    for _ in 0..ROUNDS {
        let errors = match PolicyModel::build(inputs.clone(), runtime, fqdn, generation) {
            Ok(model) => {
                let good = independent(&inputs).map(|d| (d.key(), d.clone())).collect();
                return Ok(Built { model: Arc::new(model), set_aside: aside.into_values().collect(), good });
            }
            Err(errors) => errors,
        };
        // which errors are an independent object's own
        let keys: HashMap<String, String> =
            independent(&inputs).map(|d| (format!("{}\u{0}policy {}", d.file, d.name()), d.key())).collect();
        let owner =
            |e: &PolicyError| keys.get(&format!("{}\u{0}{}", e.file, e.object.as_deref().unwrap_or(""))).cloned();
        if errors.iter().any(|e| owner(e).is_none()) {
            return Err(errors);
        }
        let mut bad: BTreeMap<String, Vec<PolicyError>> = BTreeMap::new();
        for e in errors {
            bad.entry(owner(&e).expect("checked")).or_default().push(e);
        }
        inputs = set_aside(inputs, &bad, last_good, &mut substituted, &mut aside);
    }
    Err(aside.into_values().flat_map(|a| a.errors).collect())
}

fn independent(inputs: &ModelInputs) -> impl Iterator<Item = &SourcedDocument> {
    inputs.documents.iter().filter(|d| d.independent)
}

/// Take the `bad` objects out of `inputs`: each is replaced by its last
/// good version the first time, and left out once that fails too.
fn set_aside(
    mut inputs: ModelInputs,
    bad: &BTreeMap<String, Vec<PolicyError>>,
    last_good: &LastGood,
    substituted: &mut HashSet<String>,
    aside: &mut BTreeMap<String, SetAside>,
) -> ModelInputs {
    inputs.documents.retain(|d| !(d.independent && bad.contains_key(&d.key())));
    for (key, errors) in bad {
        let entry = aside.entry(key.clone()).or_insert_with(|| SetAside {
            key: key.clone(),
            errors: Vec::new(),
            previous_kept: false,
        });
        if substituted.contains(key) {
            // the last good version failed too (weir.yaml changed under it)
            entry.previous_kept = false;
            if entry.errors.is_empty() {
                entry.errors.extend(errors.iter().cloned());
            }
            continue;
        }
        entry.errors.extend(errors.iter().cloned());
        if let Some(previous) = last_good.get(key) {
            inputs.documents.push(previous.clone());
            substituted.insert(key.clone());
            entry.previous_kept = true;
        }
    }
    inputs
}
