//! Built-in Cassandra policy filter: CiliumNetworkPolicy `l7proto:
//! cassandra` with `l7` rules of `query_action` and `query_table`.
//!
//! A rule matches a statement when `query_action` (if given) equals the
//! statement's action and `query_table` (if given) — a regular expression,
//! found anywhere in the name as Go's `regexp.MatchString` does in Cilium,
//! so anchor it with `^...$` — matches its `keyspace.table`. A request is
//! allowed when every statement it runs is matched by some rule: a batch is
//! allowed whole or refused whole, as in Cilium.
//!
//! As in Cilium: the handshake (`startup`, `options`, `register`,
//! `auth-response`) and `use` are always allowed (`use` only changes which
//! keyspace later statements are qualified with); `query_action` must be one
//! of Cilium's actions; an action without a table (roles, functions...)
//! cannot take a `query_table`. Unlike Cilium, a `query_table` rule never
//! matches a statement that names no table (Cilium lets it pass).
//!
//! Tested end to end with the cassandra-driver client:
//! `integration/tests/cassandra_local.rs`.

use std::collections::BTreeMap;

use weir_filter_sdk::ConfigError;
use weir_filter_sdk::cassandra::*;
use weir_filter_sdk::l7_rules::{Group, compile_groups};

/// Cilium's `query_action` values that name a table (or, for keyspace
/// actions and `use`, a keyspace) ...
const WITH_TABLE: &[&str] = &[
    "select",
    "delete",
    "insert",
    "update",
    "create-table",
    "drop-table",
    "alter-table",
    "truncate-table",
    "use",
    "create-keyspace",
    "alter-keyspace",
    "drop-keyspace",
];

/// ... and those that do not.
const WITHOUT_TABLE: &[&str] = &[
    "drop-index",
    "create-index",
    "create-materialized-view",
    "drop-materialized-view",
    "create-role",
    "alter-role",
    "drop-role",
    "grant-role",
    "revoke-role",
    "list-roles",
    "grant-permission",
    "revoke-permission",
    "list-permissions",
    "create-user",
    "alter-user",
    "drop-user",
    "list-users",
    "create-function",
    "drop-function",
    "create-aggregate",
    "drop-aggregate",
    "create-type",
    "alter-type",
    "drop-type",
    "create-trigger",
    "drop-trigger",
];

/// Requests that carry no statement and are always allowed.
const HANDSHAKE: &[&str] = &["startup", "options", "register", "auth-response"];

struct Rule {
    action: Option<String>,
    table: Option<regex::Regex>,
}

impl Rule {
    fn matches(&self, statement: &Statement) -> bool {
        self.action.as_ref().is_none_or(|a| *a == statement.action)
            && self.table.as_ref().is_none_or(|t| statement.table.as_deref().is_some_and(|name| t.is_match(name)))
    }
}

pub struct CassandraPolicy {
    groups: Vec<Group<Rule>>,
}

fn compile(fields: &BTreeMap<String, String>) -> Result<Rule, ConfigError> {
    let mut rule = Rule { action: None, table: None };
    for (name, value) in fields {
        match name.as_str() {
            "query_action" => {
                if !WITH_TABLE.contains(&value.as_str()) && !WITHOUT_TABLE.contains(&value.as_str()) {
                    return Err(ConfigError::at(
                        "query_action",
                        format!(
                            "unknown action {value:?}; use one of {}, {}",
                            WITH_TABLE.join(", "),
                            WITHOUT_TABLE.join(", ")
                        ),
                    ));
                }
                rule.action = Some(value.clone());
            }
            // an empty regex is no condition, as in Cilium
            "query_table" if value.is_empty() => {}
            "query_table" => {
                rule.table = Some(
                    regex::Regex::new(value)
                        .map_err(|e| ConfigError::at("query_table", format!("invalid regular expression: {e}")))?,
                );
            }
            other => {
                return Err(ConfigError::at(other, "unknown field; cassandra rules have query_action and query_table"));
            }
        }
    }
    if let (Some(action), Some(_)) = (&rule.action, &rule.table)
        && WITHOUT_TABLE.contains(&action.as_str())
    {
        return Err(ConfigError::at(
            "query_table",
            format!("query_action {action} names no table, so it takes no query_table"),
        ));
    }
    Ok(rule)
}

impl CassandraFilter for CassandraPolicy {
    fn configure(config: &str) -> Result<Self, String> {
        Ok(CassandraPolicy { groups: compile_groups(config, "cassandra-policy", compile)? })
    }

    fn on_request(&self, _conn: &Connection, request: &Request) -> RequestDecision {
        if let Some(open) = self.groups.iter().find(|g| g.rules.is_empty()) {
            return allow(open.name.clone());
        }
        if HANDSHAKE.contains(&request.opcode.as_str()) {
            return allow(None);
        }
        if request.statements.is_empty() {
            return deny(format!("{} carries no statement weir could judge", request.opcode));
        }
        let mut matched: Option<&Group<Rule>> = None;
        for statement in &request.statements {
            if statement.action == "use" {
                continue;
            }
            let rule = self
                .groups
                .iter()
                .flat_map(|g| g.rules.iter().map(move |r| (g, r)))
                .find(|(_, r)| r.matches(statement));
            match rule {
                Some((g, _)) => matched = matched.or(Some(g)),
                None => {
                    return deny(match &statement.table {
                        Some(table) => format!("{} on {table} is not allowed", statement.action),
                        None => format!("{} is not allowed", statement.action),
                    });
                }
            }
        }
        allow(matched.and_then(|g| g.name.clone()))
    }
}

weir_filter_sdk::cassandra_filter!(CassandraPolicy);
