//! Cilium's generic `l7` rules as weir hands them to a filter's `configure`:
//! `{"groups": [{"name": "<policy and rule>", "rules": [{"key": "value"}, ...]}]}`,
//! one group per rule that allowed the connection. For parsers named by
//! `l7proto` (stream filters and the built-in memcached policy).

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::ConfigError;

/// One allowing rule's `l7` entries, compiled by the filter.
pub struct Group<R> {
    /// Where the rule was written (`default/my-policy spec.ingress[0]...`).
    pub name: Option<String>,
    /// Empty: the rule allows everything.
    pub rules: Vec<R>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    groups: Vec<GroupConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupConfig {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    rules: Vec<BTreeMap<String, String>>,
}

/// Parse the configuration and compile every `l7` entry with
/// `compile(fields)`. An error's field is taken inside the entry (`command`)
/// and comes back as `l7[i].command` in its group, so weir can point at it.
/// An empty configuration is no groups. `filter` names the filter in parse
/// errors.
pub fn compile_groups<R>(
    config: &str,
    filter: &str,
    compile: impl Fn(&BTreeMap<String, String>) -> Result<R, ConfigError>,
) -> Result<Vec<Group<R>>, ConfigError> {
    let parsed: Config = if config.trim().is_empty() {
        Config::default()
    } else {
        serde_json::from_str(config).map_err(|e| ConfigError::new(format!("invalid {filter} configuration: {e}")))?
    };
    parsed
        .groups
        .into_iter()
        .enumerate()
        .map(|(g, group)| {
            let label = group.name.clone().unwrap_or_else(|| format!("group {g}"));
            let rules = group
                .rules
                .iter()
                .enumerate()
                .map(|(i, fields)| compile(fields).map_err(|e| e.under(&format!("l7[{i}]")).in_group(Some(&label))))
                .collect::<Result<_, _>>()?;
            Ok(Group { name: group.name, rules })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_compile_entry_by_entry_and_errors_name_the_entry() {
        let config = r#"{"groups": [{"name": "p1", "rules": [{"cmd": "READ"}]}, {"rules": []}]}"#;
        let groups = compile_groups(config, "t", |f| Ok(f["cmd"].clone())).unwrap();
        assert_eq!(groups.len(), 2);
        assert_eq!((groups[0].name.as_deref(), groups[0].rules.as_slice()), (Some("p1"), &["READ".to_string()][..]));
        assert!(groups[1].rules.is_empty(), "a group without entries allows everything");
        let err = compile_groups(r#"{"groups": [{"rules": [{}, {"x": "1"}]}]}"#, "t", |f| {
            if f.is_empty() { Ok(()) } else { Err(ConfigError::at("x", "bad")) }
        });
        assert_eq!(err.err().map(|e| e.to_string()).as_deref(), Some("group 0: l7[1].x: bad"));
        let unparsed = compile_groups("{", "t", |_| Ok(())).err().unwrap();
        assert!(unparsed.field.is_none() && unparsed.message.starts_with("invalid t configuration"), "{unparsed:?}");
        assert!(compile_groups("", "t", |_| Ok(())).unwrap().is_empty());
    }
}
