//! A `configure` error that says which rule is wrong.
//!
//! `configure` returns a string through the WIT. A filter that returns a
//! [`ConfigError`] (`Err(ConfigError::at("path", "…").into())`, or `?` on a
//! `Result<_, ConfigError>`) sends it encoded as one JSON object,
//! `{"configError": {"group": …, "field": …, "message": …}}`, and weir points
//! at the field in the policy or weir.yaml (`…toPorts[0].rules.http[1].path`)
//! instead of showing the text. Any other string is shown as it is.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The group (allowing rule) the field is in, as the configuration
    /// named it; `None` for a filter's own configuration.
    pub group: Option<String>,
    /// Path of the wrong field inside the group's rules (`http[1].path`),
    /// `None` when the whole configuration is wrong.
    pub field: Option<String>,
    pub message: String,
}

impl ConfigError {
    /// The whole configuration is wrong (it does not parse, say).
    pub fn new(message: impl Into<String>) -> Self {
        ConfigError { group: None, field: None, message: message.into() }
    }

    /// `field` is wrong.
    pub fn at(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError { group: None, field: Some(field.into()), message: message.into() }
    }

    /// The same error seen from the enclosing value: `under("http[1]")`
    /// turns field `path` into `http[1].path` (and no field into `http[1]`).
    pub fn under(mut self, parent: &str) -> Self {
        self.field = Some(match self.field.take() {
            Some(field) if field.starts_with('[') => format!("{parent}{field}"),
            Some(field) => format!("{parent}.{field}"),
            None => parent.to_string(),
        });
        self
    }

    /// The same error, in the group named `group`.
    pub fn in_group(mut self, group: Option<&str>) -> Self {
        self.group = group.map(str::to_string);
        self
    }
}

/// Read by people: `group: field: message`.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in [&self.group, &self.field].into_iter().flatten() {
            write!(f, "{part}: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Read by weir: the JSON form `configure` returns.
impl From<ConfigError> for String {
    fn from(e: ConfigError) -> String {
        let mut out = String::from(r#"{"configError":{"#);
        let mut first = true;
        for (key, value) in
            [("group", e.group.as_deref()), ("field", e.field.as_deref()), ("message", Some(&e.message))]
        {
            let Some(value) = value else { continue };
            if !first {
                out.push(',');
            }
            first = false;
            out.push('"');
            out.push_str(key);
            out.push_str("\":");
            json_string(&mut out, value);
        }
        out.push_str("}}");
        out
    }
}

fn json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_nest_and_the_wire_form_is_json() {
        let e = ConfigError::at("path", "invalid \"(\"\n").under("http[1]").in_group(Some("p"));
        assert_eq!(e.field.as_deref(), Some("http[1].path"));
        assert_eq!(e.to_string(), "p: http[1].path: invalid \"(\"\n");
        assert_eq!(
            String::from(e),
            r#"{"configError":{"group":"p","field":"http[1].path","message":"invalid \"(\"\n"}}"#
        );
        assert_eq!(ConfigError::at("[0]", "x").under("l7").field.as_deref(), Some("l7[0]"));
        assert_eq!(String::from(ConfigError::new("\u{1}")), r#"{"configError":{"message":"\u0001"}}"#);
    }
}
