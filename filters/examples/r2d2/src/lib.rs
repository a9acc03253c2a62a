//! An example stream filter: Cilium's "r2d2" test protocol, a line protocol
//! weir knows nothing about, parsed and policed entirely inside a Wasm
//! component (`l7proto: r2d2` in a policy).
//!
//! Requests are lines `READ <file>`, `WRITE <file>`, `HALT` or `RESET`, each
//! ended by `\r\n`; replies are passed through untouched. Rules (the policy's
//! `l7` entries) have `cmd` (the command, exactly) and `file` (a regular
//! expression the whole file name must match); a rule matches when every
//! field it gives matches, and a request passes when some rule matches. A
//! denied request is dropped and answered `ERROR\r\n`. A line longer than
//! 1 KiB or an unknown command breaks the connection.

use std::collections::BTreeMap;

use weir_filter_sdk::ConfigError;
use weir_filter_sdk::l7_rules::{Group, compile_groups};
use weir_filter_sdk::stream::*;

const MAX_LINE: usize = 1024;
const COMMANDS: &[&str] = &["READ", "WRITE", "HALT", "RESET"];

struct Rule {
    cmd: Option<String>,
    file: Option<regex::Regex>,
}

pub struct R2d2 {
    groups: Vec<Group<Rule>>,
}

fn compile(fields: &BTreeMap<String, String>) -> Result<Rule, ConfigError> {
    let mut rule = Rule { cmd: None, file: None };
    for (name, value) in fields {
        match name.as_str() {
            "cmd" if COMMANDS.contains(&value.as_str()) => rule.cmd = Some(value.clone()),
            "cmd" => {
                return Err(ConfigError::at("cmd", format!("unknown command {value:?}; use {}", COMMANDS.join(", "))));
            }
            "file" => {
                let anchored = format!("^(?:{value})$");
                rule.file = Some(regex::Regex::new(&anchored).map_err(|e| ConfigError::at("file", e.to_string()))?);
            }
            other => return Err(ConfigError::at(other, "unknown field; r2d2 rules have cmd and file")),
        }
    }
    Ok(rule)
}

impl StreamFilter for R2d2 {
    fn configure(config: &str) -> Result<Self, String> {
        Ok(R2d2 { groups: compile_groups(config, "r2d2", compile)? })
    }

    fn on_data(&self, _conn: &Connection, side: Side, _end_stream: bool, data: &[u8]) -> Vec<Op> {
        if side == Side::Reply {
            return vec![Op::Pass(data.len() as u32)];
        }
        let mut ops = Vec::new();
        let mut rest = data;
        // every complete line in the buffer, in order
        while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
            let line_len = end + 2;
            let line = String::from_utf8_lossy(&rest[..end]);
            let mut words = line.split(' ');
            let cmd = words.next().unwrap_or_default();
            let file = words.next().unwrap_or_default();
            if !COMMANDS.contains(&cmd) || words.next().is_some() {
                ops.push(Op::Error(format!("not an r2d2 request: {line:?}")));
                return ops;
            }
            let fields = [("cmd", cmd), ("file", file)];
            match self.allowed_by(cmd, file) {
                Some(matched) => {
                    ops.push(flow(FlowVerdict::Forwarded, &fields, matched));
                    ops.push(Op::Pass(line_len as u32));
                }
                None => {
                    ops.push(flow(FlowVerdict::Denied, &fields, Some(format!("{cmd} {file} is not allowed"))));
                    ops.push(Op::Drop(line_len as u32));
                    ops.push(Op::Reply(b"ERROR\r\n".to_vec()));
                }
            }
            rest = &rest[line_len..];
        }
        if rest.len() > MAX_LINE {
            ops.push(Op::Error(format!("an r2d2 line longer than {MAX_LINE} bytes")));
        } else if !rest.is_empty() {
            ops.push(Op::More(1));
        }
        ops
    }
}

impl R2d2 {
    /// `Some(what matched)` when a rule allows the request.
    fn allowed_by(&self, cmd: &str, file: &str) -> Option<Option<String>> {
        for group in &self.groups {
            let matches = |r: &Rule| {
                r.cmd.as_deref().is_none_or(|c| c == cmd) && r.file.as_ref().is_none_or(|f| f.is_match(file))
            };
            if group.rules.is_empty() || group.rules.iter().any(matches) {
                return Some(group.name.clone());
            }
        }
        None
    }
}

weir_filter_sdk::stream_filter!(R2d2);
