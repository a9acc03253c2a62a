//! What a CQL statement does and to which table: Cilium's `query_action`
//! and the `keyspace.table` its `query_table` regex is matched against.
//!
//! A small tokenizer (comments, string and `$$` literals and quoted names
//! are understood, so none of them can hide or fake a table name), then the
//! few words of each statement kind that name its object. Unquoted names
//! are lowercased, quoted ones kept as written, as Cassandra does.

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub action: String,
    pub table: Option<String>,
    pub query: String,
}

/// A token borrows the text: only the names a statement reports are copied
/// (a large INSERT's values cost no allocation each).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted word as written (keywords, names, numbers).
    Word(&'a str),
    /// A "quoted" name, unescaped.
    Quoted(String),
    /// A string or `$$` literal (its content does not matter).
    Literal,
    Punct(char),
}

impl Token<'_> {
    /// This keyword (given lowercase), in any case.
    fn is(&self, keyword: &str) -> bool {
        matches!(self, Token::Word(w) if w.eq_ignore_ascii_case(keyword))
    }

    /// A name as Cassandra reads it: unquoted lowercased, quoted as written.
    fn name(&self) -> Option<String> {
        match self {
            Token::Word(w) => Some(w.to_ascii_lowercase()),
            Token::Quoted(q) => Some(q.clone()),
            _ => None,
        }
    }
}

/// Where a token starts and ends in the text.
type Span = (usize, usize);

/// The tokens of `text`, and their spans.
fn tokenize(text: &str) -> Result<(Vec<Token<'_>>, Vec<Span>), String> {
    let mut tokens = Vec::new();
    let mut spans = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let rest = &text[i..];
        let start = i;
        if c.is_ascii_whitespace() {
            i += 1;
        } else if rest.starts_with("--") || rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if let Some(after) = rest.strip_prefix("/*") {
            i += 2 + after.find("*/").ok_or("an unterminated /* comment")? + 2;
        } else if let Some(after) = rest.strip_prefix("$$") {
            i += 2 + after.find("$$").ok_or("an unterminated $$ string")? + 2;
            tokens.push(Token::Literal);
            spans.push((start, i));
        } else if c == b'\'' || c == b'"' {
            // '' and "" inside are the quote itself; a literal's value is not kept
            let quoted_name = c == b'"';
            let mut j = i + 1;
            let mut value = String::new();
            loop {
                let Some(k) = text[j..].find(c as char) else {
                    return Err(format!("an unterminated {} quote", c as char));
                };
                if quoted_name {
                    value.push_str(&text[j..j + k]);
                }
                j += k + 1;
                if b.get(j) == Some(&c) {
                    value.push(c as char);
                    j += 1;
                } else {
                    break;
                }
            }
            tokens.push(if quoted_name { Token::Quoted(value) } else { Token::Literal });
            i = j;
            spans.push((start, i));
        } else if c.is_ascii_alphanumeric() || c == b'_' {
            let len = rest.find(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')).unwrap_or(rest.len());
            tokens.push(Token::Word(&rest[..len]));
            i += len;
            spans.push((start, i));
        } else {
            let ch = rest.chars().next().unwrap();
            tokens.push(Token::Punct(ch));
            i += ch.len_utf8();
            spans.push((start, i));
        }
    }
    Ok((tokens, spans))
}

/// The statements a QUERY or PREPARE text runs: one, or each of a `BEGIN
/// BATCH ... APPLY BATCH`. `keyspace` qualifies names that have none.
pub fn classify(text: &str, keyspace: Option<&str>) -> Vec<Statement> {
    let (tokens, spans) = match tokenize(text) {
        Ok(t) => t,
        // no rule names this action, so only a rule-free port lets it pass
        Err(why) => return vec![Statement { action: format!("invalid ({why})"), table: None, query: text.into() }],
    };
    let mut tokens = &tokens[..];
    while let [rest @ .., Token::Punct(';')] = tokens {
        tokens = rest;
    }
    if tokens.first().is_some_and(|t| t.is("begin")) {
        return batch(tokens, &spans, keyspace, text);
    }
    vec![one(tokens, keyspace, text)]
}

/// Each statement of a `BEGIN [UNLOGGED | COUNTER] BATCH [USING ...] stmt;
/// ... APPLY BATCH`, with its own text (not the whole batch's, once per
/// statement: a large batch would be copied as many times).
fn batch(tokens: &[Token], spans: &[Span], keyspace: Option<&str>, text: &str) -> Vec<Statement> {
    let Some(start) = tokens.iter().position(|t| t.is("insert") || t.is("update") || t.is("delete")) else {
        return vec![one(tokens, keyspace, text)];
    };
    let mut end = tokens.len();
    if let [.., a, b] = tokens
        && a.is("apply")
        && b.is("batch")
    {
        end -= 2;
    }
    let mut statements = Vec::new();
    let mut from = start;
    for i in start..=end {
        if i == end || tokens[i] == Token::Punct(';') {
            if from < i {
                let own = &text[spans[from].0..spans[i - 1].1];
                statements.push(one(&tokens[from..i], keyspace, own));
            }
            from = i + 1;
        }
    }
    statements
}

/// The lowercase word at `i`, or "".
fn keyword(tokens: &[Token], i: usize) -> String {
    match tokens.get(i) {
        Some(Token::Word(w)) => w.to_ascii_lowercase(),
        _ => String::new(),
    }
}

fn one(tokens: &[Token], keyspace: Option<&str>, text: &str) -> Statement {
    let second_is = |word: &str| tokens.get(1).is_some_and(|t| t.is(word));
    let qualified = |at: usize| qualified_name(tokens, at, keyspace);
    let first = keyword(tokens, 0);
    let (action, table) = match first.as_str() {
        "select" | "delete" => (first.clone(), after_from(tokens).and_then(qualified)),
        "insert" => ("insert".into(), if second_is("into") { qualified(2) } else { None }),
        "update" => ("update".into(), qualified(1)),
        "use" => ("use".into(), tokens.get(1).and_then(Token::name)),
        "truncate" => {
            ("truncate-table".into(), qualified(if second_is("table") || second_is("columnfamily") { 2 } else { 1 }))
        }
        "create" | "alter" | "drop" => schema(&first, tokens, keyspace),
        "grant" | "revoke" => {
            let on = tokens.iter().any(|t| t.is("on"));
            (format!("{first}-{}", if on { "permission" } else { "role" }), None)
        }
        "list" => {
            let what = if second_is("roles") {
                "roles"
            } else if second_is("users") {
                "users"
            } else {
                "permissions"
            };
            (format!("list-{what}"), None)
        }
        "" => ("invalid".into(), None),
        _ => (first, None),
    };
    Statement { action, table, query: text.to_string() }
}

/// CREATE / ALTER / DROP: the object kind makes the action; tables and
/// keyspaces carry their name.
fn schema(verb: &str, tokens: &[Token], keyspace: Option<&str>) -> (String, Option<String>) {
    let mut i = 1;
    // CREATE OR REPLACE FUNCTION, CREATE CUSTOM INDEX
    while tokens.get(i).is_some_and(|t| t.is("or") || t.is("replace") || t.is("custom")) {
        i += 1;
    }
    let object = keyword(tokens, i);
    let object = match object.as_str() {
        "columnfamily" => "table",
        "schema" => "keyspace",
        "materialized" if tokens.get(i + 1).is_some_and(|t| t.is("view")) => {
            i += 1;
            "materialized-view"
        }
        other => other,
    };
    i += 1;
    // IF [NOT] EXISTS
    if tokens.get(i).is_some_and(|t| t.is("if")) {
        i += 1;
        if tokens.get(i).is_some_and(|t| t.is("not")) {
            i += 1;
        }
        i += 1;
    }
    let table = match object {
        "table" => qualified_name(tokens, i, keyspace),
        "keyspace" => tokens.get(i).and_then(Token::name),
        _ => None,
    };
    (format!("{verb}-{object}"), table)
}

/// The position after the first `FROM` outside parentheses.
fn after_from(tokens: &[Token]) -> Option<usize> {
    let mut depth = 0i32;
    for (i, t) in tokens.iter().enumerate() {
        match t {
            Token::Punct('(') => depth += 1,
            Token::Punct(')') => depth -= 1,
            t if depth == 0 && t.is("from") => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// `name` or `keyspace.name` at `at`, qualified with `keyspace` if unqualified.
fn qualified_name(tokens: &[Token], at: usize, keyspace: Option<&str>) -> Option<String> {
    let first = tokens.get(at)?.name()?;
    if tokens.get(at + 1) == Some(&Token::Punct('.')) {
        let second = tokens.get(at + 2)?.name()?;
        return Some(format!("{first}.{second}"));
    }
    Some(match keyspace {
        Some(ks) => format!("{ks}.{first}"),
        None => first,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(text: &str, ks: Option<&str>) -> (String, Option<String>) {
        let s = classify(text, ks);
        assert_eq!(s.len(), 1, "{s:?}");
        (s[0].action.clone(), s[0].table.clone())
    }

    fn at(action: &str, table: Option<&str>) -> (String, Option<String>) {
        (action.into(), table.map(str::to_string))
    }

    #[test]
    fn data_statements_name_their_table() {
        assert_eq!(one("SELECT * FROM ks.t WHERE k = 1", None), at("select", Some("ks.t")));
        assert_eq!(one("select count(*) from t;", Some("app")), at("select", Some("app.t")));
        assert_eq!(
            one("SELECT JSON token(k), CAST(v AS text) FROM \"Ks\".\"Tab\"", None),
            at("select", Some("Ks.Tab"))
        );
        assert_eq!(
            one("INSERT INTO attendance.daily_records (k) VALUES ('FROM x.y')", None),
            at("insert", Some("attendance.daily_records"))
        );
        assert_eq!(one("UPDATE t USING TTL 5 SET v = 1 WHERE k = 2", Some("ks")), at("update", Some("ks.t")));
        assert_eq!(one("DELETE m['from'] FROM ks.t WHERE k = 1", None), at("delete", Some("ks.t")));
        assert_eq!(one("TRUNCATE TABLE ks.t", None), at("truncate-table", Some("ks.t")));
        assert_eq!(one("truncate t", Some("ks")), at("truncate-table", Some("ks.t")));
        assert_eq!(one("USE \"MyKs\"", None), at("use", Some("MyKs")));
    }

    #[test]
    fn comments_and_literals_cannot_fake_a_table() {
        assert_eq!(one("SELECT * /* FROM ks.fake */ FROM ks.real", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT * -- FROM ks.fake\nFROM ks.real", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT \"from\" FROM ks.real", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT $$ FROM ks.fake $$ FROM ks.real", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT 'it''s FROM x' FROM ks.real", None), at("select", Some("ks.real")));
        assert!(one("SELECT * FROM 'ks.t", None).0.starts_with("invalid"));
        assert!(one("SELECT * /* FROM", None).0.starts_with("invalid"));
    }

    #[test]
    fn schema_and_admin_statements_use_ciliums_actions() {
        assert_eq!(one("CREATE TABLE IF NOT EXISTS ks.t (k int PRIMARY KEY)", None), at("create-table", Some("ks.t")));
        assert_eq!(one("create columnfamily t (k int primary key)", Some("ks")), at("create-table", Some("ks.t")));
        assert_eq!(one("DROP TABLE IF EXISTS t", Some("ks")), at("drop-table", Some("ks.t")));
        assert_eq!(one("ALTER TABLE ks.t ADD v text", None), at("alter-table", Some("ks.t")));
        assert_eq!(
            one("CREATE KEYSPACE IF NOT EXISTS app WITH replication = {'class': 'SimpleStrategy'}", None),
            at("create-keyspace", Some("app"))
        );
        assert_eq!(one("DROP SCHEMA app", None), at("drop-keyspace", Some("app")));
        assert_eq!(one("CREATE CUSTOM INDEX ON ks.t (v) USING 'x'", None), at("create-index", None));
        assert_eq!(
            one("CREATE MATERIALIZED VIEW ks.v AS SELECT * FROM ks.t", None),
            at("create-materialized-view", None)
        );
        assert_eq!(one("CREATE OR REPLACE FUNCTION ks.f (a int) ...", None), at("create-function", None));
        assert_eq!(one("GRANT SELECT ON ALL KEYSPACES TO bob", None), at("grant-permission", None));
        assert_eq!(one("GRANT admin TO bob", None), at("grant-role", None));
        assert_eq!(one("LIST ALL PERMISSIONS OF bob", None), at("list-permissions", None));
        assert_eq!(one("LIST ROLES", None), at("list-roles", None));
        assert_eq!(one("DESCRIBE KEYSPACES", None), at("describe", None));
    }

    #[test]
    fn a_cql_batch_is_each_of_its_statements() {
        let s = classify(
            "BEGIN UNLOGGED BATCH USING TIMESTAMP 5 INSERT INTO a.t (k) VALUES (1); UPDATE t SET v = 2 WHERE k = 1; \
             DELETE FROM b.u WHERE k = 3; APPLY BATCH;",
            Some("ks"),
        );
        let got: Vec<_> = s.iter().map(|s| (s.action.as_str(), s.table.as_deref())).collect();
        assert_eq!(got, [("insert", Some("a.t")), ("update", Some("ks.t")), ("delete", Some("b.u"))]);
        // each keeps its own text
        assert_eq!(s[1].query, "UPDATE t SET v = 2 WHERE k = 1");
    }
}
