//! What a CQL statement does and to which table: Cilium's `query_action`
//! and the `keyspace.table` its `query_table` regex is matched against.
//!
//! The tokenizer follows Cassandra's lexer (`src/antlr/Lexer.g`, 5.0) on
//! every rule that decides where a word, a name or a statement is seen:
//! whitespace is exactly space, tab, LF and CR; `--` and `//` comments end at
//! the first LF *or* CR (and one with neither after it is a lexer error, as
//! in Cassandra); `/* */` comments end at the first `*/` (not nested);
//! strings double `''`, quoted names double `""`, `$$` strings end at the
//! first `$$`; identifiers start with an ASCII letter; numbers, hex blobs,
//! UUIDs and durations are single tokens. Whatever Cassandra's lexer would
//! refuse, or split where weir cannot be sure it splits the same way (a
//! number run into a word, like `0xUPDATE` or `3dDELETE`), makes the text
//! `invalid`: weir refuses what it cannot read exactly.
//!
//! Then the grammar's outline (`Parser.g`, `Cql.g`): a QUERY is one
//! statement and optional trailing `;` (more is invalid, Cassandra refuses
//! it too), and a `BEGIN BATCH ... APPLY BATCH` is split where Cassandra
//! splits it: at every INSERT, UPDATE and DELETE (reserved words, so they
//! only ever start a statement), the `;` between them being optional.
//! Unquoted names are lowercased, quoted ones kept as written.

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
    /// An identifier or keyword as written: an ASCII letter, then letters,
    /// digits and `_` (Cassandra's IDENT; keywords are IDENTs it knows).
    Word(&'a str),
    /// A "quoted" name, unescaped.
    Quoted(String),
    /// A string or `$$` string, a number, blob, UUID or duration, `-NaN`
    /// or `-Infinity`: a value, whose content does not matter here.
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

/// The single-character tokens of Cassandra's grammar (operators, brackets,
/// separators); any other character outside quotes and comments is a
/// lexer error there.
const PUNCTUATION: &[u8] = b"();,.=<>![]{}:+-*/%?";

/// The tokens of `text`, and their spans, as Cassandra's lexer cuts them;
/// `Err`: text it refuses, or that weir cannot be sure it cuts alike.
fn tokenize(text: &str) -> Result<(Vec<Token<'_>>, Vec<Span>), String> {
    let mut tokens = Vec::new();
    let mut spans = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        let start = i;
        let token = match b[i] {
            // WS: exactly these four (a form feed or a vertical tab is an error there)
            b' ' | b'\t' | b'\n' | b'\r' => {
                i += 1;
                continue;
            }
            b'-' | b'/' if rest.starts_with("--") || rest.starts_with("//") => {
                // COMMENT: ('--' | '//') .* ('\n' | '\r'), the first of either
                let end = rest[2..].find(['\n', '\r']).ok_or(
                    "a -- or // comment with no line end after it (Cassandra's lexer refuses it at the end of the text)",
                )?;
                i += 2 + end + 1;
                continue;
            }
            b'/' if rest.starts_with("/*") => {
                // MULTILINE_COMMENT: '/*' .* '*/', not nested
                i += 2 + rest[2..].find("*/").ok_or("an unterminated /* comment")? + 2;
                continue;
            }
            b'$' if rest.starts_with("$$") => {
                i += 2 + rest[2..].find("$$").ok_or("an unterminated $$ string")? + 2;
                Token::Literal
            }
            b'\'' => {
                i += quoted(rest, '\'', None)?;
                Token::Literal
            }
            b'"' => {
                let mut name = String::new();
                i += quoted(rest, '"', Some(&mut name))?;
                Token::Quoted(name)
            }
            c if c.is_ascii_alphabetic() => match uuid_len(&b[i..]).or_else(|| iso_alternative_len(&b[i..])) {
                // a UUID or an ISO duration goes on past where an identifier ends
                Some(len) => {
                    i += len;
                    not_glued(text, start, i)?;
                    Token::Literal
                }
                None => {
                    let len = word_len(&b[i..]);
                    i += len;
                    Token::Word(&rest[..len])
                }
            },
            c if c.is_ascii_digit() || (c == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) => {
                i += number_len(&b[i..]);
                not_glued(text, start, i)?;
                Token::Literal
            }
            b'-' => match negative_word_len(&b[i..])? {
                Some(len) => {
                    i += len;
                    not_glued(text, start, i)?;
                    Token::Literal
                }
                None => {
                    i += 1;
                    Token::Punct('-')
                }
            },
            c if PUNCTUATION.contains(&c) => {
                i += 1;
                Token::Punct(c as char)
            }
            _ => {
                let ch = rest.chars().next().unwrap();
                return Err(format!("{ch:?} outside quotes and comments (Cassandra's lexer refuses it)"));
            }
        };
        tokens.push(token);
        spans.push((start, i));
    }
    Ok((tokens, spans))
}

/// The length of the '...' string or "..." name `rest` starts with (a
/// doubled quote inside is the quote itself); its content goes to `value`.
fn quoted(rest: &str, quote: char, mut value: Option<&mut String>) -> Result<usize, String> {
    let mut j = 1;
    loop {
        let Some(k) = rest[j..].find(quote) else {
            return Err(format!("an unterminated {quote} quote"));
        };
        if let Some(v) = value.as_deref_mut() {
            v.push_str(&rest[j..j + k]);
        }
        j += k + 1;
        if !rest[j..].starts_with(quote) {
            return Ok(j);
        }
        if let Some(v) = value.as_deref_mut() {
            v.push(quote);
        }
        j += 1;
    }
}

fn is_word_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

fn word_len(b: &[u8]) -> usize {
    b.iter().take_while(|c| is_word_byte(**c)).count()
}

fn digits(b: &[u8], from: usize) -> usize {
    b.get(from..).map_or(0, |b| b.iter().take_while(|c| c.is_ascii_digit()).count())
}

/// A value token ending at `end` must not run straight into a word: where
/// Cassandra's lexer ends `0xUPDATE` or `3dDELETE` (a blob or duration,
/// then a keyword) is not something weir should guess.
fn not_glued(text: &str, start: usize, end: usize) -> Result<(), String> {
    if text.as_bytes().get(end).is_some_and(|c| is_word_byte(*c)) {
        let run = &text[start..end + word_len(&text.as_bytes()[end..])];
        return Err(format!("{run:?} runs a value into a word, which weir does not split for Cassandra"));
    }
    Ok(())
}

/// UUID: 8-4-4-4-12 hex digits.
fn uuid_len(b: &[u8]) -> Option<usize> {
    let ok = b.len() >= 36
        && b[..36].iter().enumerate().all(|(k, c)| match k {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    ok.then_some(36)
}

/// DURATION's ISO 8601 "alternative format", `P0001-02-03T04:05:06`.
fn iso_alternative_len(b: &[u8]) -> Option<usize> {
    let pattern = b"P####-##-##T##:##:##";
    let ok = b.len() >= pattern.len()
        && pattern.iter().zip(b).all(|(p, c)| if *p == b'#' { c.is_ascii_digit() } else { p == c });
    ok.then_some(pattern.len())
}

/// DURATION's other ISO 8601 forms (`P1Y2M3DT4H5M6S`, `PT1H`, `P2W`): the
/// length of the one `b` starts with, if any. The designators are
/// uppercase, each used at most once and in order.
fn iso_designators_len(b: &[u8]) -> Option<usize> {
    if b.first() != Some(&b'P') {
        return None;
    }
    let n = digits(b, 1);
    if n > 0 && b.get(1 + n) == Some(&b'W') {
        return Some(n + 2);
    }
    let pairs = |mut at: usize, designators: &[u8]| {
        let mut order = designators.iter();
        let mut seen = 0;
        loop {
            let n = digits(b, at);
            match b.get(at + n) {
                Some(d) if n > 0 && order.any(|o| o == d) => {
                    at += n + 1;
                    seen += 1;
                }
                _ => return (at, seen),
            }
        }
    };
    let (mut at, period) = pairs(1, b"YMD");
    let mut time = 0;
    if b.get(at) == Some(&b'T') {
        let (after, seen) = pairs(at + 1, b"HMS");
        if seen > 0 {
            (at, time) = (after, seen);
        }
    }
    (period + time > 0).then_some(at)
}

/// The numeric token `b` starts with (a digit, or `-` and a digit): the
/// longest of INTEGER, FLOAT, DURATION, HEXNUMBER and UUID, as Cassandra's
/// lexer takes the longest.
fn number_len(b: &[u8]) -> usize {
    let sign = usize::from(b[0] == b'-');
    // INTEGER, FLOAT: '-'? DIGIT+ ('.' DIGIT*)? EXPONENT?, but `1..2` is a range
    let mut float = sign + digits(b, sign);
    if b.get(float) == Some(&b'.') && b.get(float + 1) != Some(&b'.') {
        float += 1 + digits(b, float + 1);
    }
    if matches!(b.get(float), Some(b'e' | b'E')) {
        let signed = usize::from(matches!(b.get(float + 1), Some(b'+' | b'-')));
        let n = digits(b, float + 1 + signed);
        if n > 0 {
            float += 1 + signed + n;
        }
    }
    // DURATION: '-'? (DIGIT+ unit)+
    let mut duration = sign;
    loop {
        let n = digits(b, duration);
        match (n > 0).then(|| duration_unit_len(&b[duration + n..])).flatten() {
            Some(unit) => duration += n + unit,
            None => break,
        }
    }
    let mut longest = float.max(duration);
    if sign == 0 {
        if b[0] == b'0' && matches!(b.get(1), Some(b'x' | b'X')) {
            longest = longest.max(2 + b[2..].iter().take_while(|c| c.is_ascii_hexdigit()).count());
        }
        longest = longest.max(uuid_len(b).unwrap_or(0));
    }
    longest
}

/// DURATION_UNIT (any case): y mo w d h m s ms us µs ns, longest first.
fn duration_unit_len(b: &[u8]) -> Option<usize> {
    let lower = |k: usize| b.get(k).map(u8::to_ascii_lowercase);
    match (lower(0), lower(1)) {
        (Some(b'm'), Some(b'o' | b's')) | (Some(b'u' | b'n'), Some(b's')) => Some(2),
        _ if b.starts_with("µ".as_bytes()) && matches!(lower(2), Some(b's')) => Some(3),
        (Some(b'y' | b'w' | b'd' | b'h' | b'm' | b's'), _) => Some(1),
        _ => None,
    }
}

/// At a `-` not followed by a digit: `-NaN`, `-Infinity` and negative ISO
/// durations are one token in Cassandra. `Ok(None)`: a plain `-`.
fn negative_word_len(b: &[u8]) -> Result<Option<usize>, String> {
    let starts = |word: &str| b.len() > word.len() && b[1..=word.len()].eq_ignore_ascii_case(word.as_bytes());
    if starts("infinity") {
        return Ok(Some(9));
    }
    if starts("nan") {
        return Ok(Some(4));
    }
    if b.get(1) != Some(&b'P') {
        return Ok(None);
    }
    if let Some(len) = iso_alternative_len(&b[1..]) {
        return Ok(Some(1 + len));
    }
    // a negative ISO duration must fill its word exactly; anything else
    // that might start one (`-P1DUPDATE`) is not guessed at
    let run = word_len(&b[1..]);
    match iso_designators_len(&b[1..]) {
        Some(len) if len == run => Ok(Some(1 + len)),
        _ if matches!(b.get(2), Some(b'T' | b'0'..=b'9')) => {
            Err("a negative ISO duration weir cannot delimit as Cassandra does".into())
        }
        _ => Ok(None),
    }
}

/// The statements a QUERY or PREPARE text runs: one, or each of a `BEGIN
/// BATCH ... APPLY BATCH`. `keyspace` qualifies names that have none. Text
/// Cassandra would not read as that (or weir cannot be sure it reads alike)
/// is one `invalid (why)` statement, which no rule names.
pub fn classify(text: &str, keyspace: Option<&str>) -> Vec<Statement> {
    let invalid = |why: &str| vec![Statement { action: format!("invalid ({why})"), table: None, query: text.into() }];
    match statements(text, keyspace) {
        // a request always runs something in the policy's eyes: an empty
        // batch would otherwise be allowed by every rule set (found by the
        // cql_statement fuzz target: `BEGIN UNLOGGED BATCH USING APPLY BATCH`)
        Ok(statements) if statements.is_empty() => invalid("a batch without statements"),
        Ok(statements) => statements,
        Err(why) => invalid(&why),
    }
}

fn statements(text: &str, keyspace: Option<&str>) -> Result<Vec<Statement>, String> {
    let (tokens, spans) = tokenize(text)?;
    // Cql.g: `query: cqlStatement (';')* EOF`
    let mut tokens = &tokens[..];
    while let [rest @ .., Token::Punct(';')] = tokens {
        tokens = rest;
    }
    if tokens.first().is_some_and(|t| t.is("begin")) {
        return batch(tokens, &spans, keyspace, text);
    }
    if tokens.contains(&Token::Punct(';')) {
        return Err("more than one statement (Cassandra runs one per request and refuses this)".into());
    }
    Ok(vec![one(tokens, keyspace, text)])
}

/// INSERT, UPDATE and DELETE are reserved words: in a batch, each starts
/// the next statement.
fn starts_statement(token: &Token) -> bool {
    token.is("insert") || token.is("update") || token.is("delete")
}

/// Each statement of `BEGIN [UNLOGGED | COUNTER] BATCH [USING ...] (stmt
/// [;])* APPLY BATCH` (Parser.g's batchStatement: the `;` is optional), with
/// its own text (not the whole batch's, once per statement: a large batch
/// would be copied as many times).
fn batch(tokens: &[Token], spans: &[Span], keyspace: Option<&str>, text: &str) -> Result<Vec<Statement>, String> {
    let mut i = 1;
    if tokens.get(i).is_some_and(|t| t.is("unlogged") || t.is("counter")) {
        i += 1;
    }
    if !tokens.get(i).is_some_and(|t| t.is("batch")) {
        return Err("BEGIN without BATCH".into());
    }
    i += 1;
    let apply = tokens.iter().position(|t| t.is("apply")).ok_or("a batch without APPLY BATCH")?;
    if apply + 2 != tokens.len() || !tokens[apply + 1].is("batch") {
        return Err("something other than APPLY BATCH and ';' ends the batch".into());
    }
    let starts: Vec<usize> = (i..apply).filter(|&k| starts_statement(&tokens[k])).collect();
    let first = starts.first().copied().unwrap_or(apply);
    // between BATCH and the first statement, only `USING TIMESTAMP n AND TTL n`
    if first > i && (!tokens[i].is("using") || tokens[i..first].contains(&Token::Punct(';'))) {
        return Err("something other than a USING clause before the batch's first statement".into());
    }
    let mut statements = Vec::with_capacity(starts.len());
    for (n, &from) in starts.iter().enumerate() {
        let mut to = starts.get(n + 1).copied().unwrap_or(apply);
        if tokens[to - 1] == Token::Punct(';') {
            to -= 1;
        }
        if tokens[from..to].contains(&Token::Punct(';')) {
            return Err("two ';' after a statement of a batch".into());
        }
        let own = &text[spans[from].0..spans[to - 1].1];
        statements.push(one(&tokens[from..to], keyspace, own));
    }
    Ok(statements)
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

    fn invalid(text: &str) -> String {
        let s = classify(text, Some("ks"));
        assert_eq!(s.len(), 1, "{text:?}: {s:?}");
        assert!(s[0].action.starts_with("invalid"), "{text:?} was read as {s:?}");
        s[0].action.clone()
    }

    #[test]
    fn a_batch_without_statements_is_invalid_not_empty() {
        invalid("BEGIN UNLOGGED BATCH USING APPLY BATCH;");
        invalid("BEGIN BATCH APPLY BATCH");
    }

    fn all(text: &str) -> Vec<(String, Option<String>)> {
        classify(text, Some("ks")).into_iter().map(|s| (s.action, s.table)).collect()
    }

    #[test]
    fn line_comments_end_at_a_carriage_return_as_in_cassandras_lexer() {
        // Lexer.g COMMENT: ('--' | '//') .* ('\n' | '\r')
        assert_eq!(one("SELECT * FROM --\rks.real\n", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT * FROM // x\rks.real -- y\n", None), at("select", Some("ks.real")));
        assert_eq!(
            all("BEGIN BATCH INSERT INTO a.t (k) VALUES (1); --\rDELETE FROM b.secret WHERE k = 1;\nAPPLY BATCH"),
            [at("insert", Some("a.t")), at("delete", Some("b.secret"))]
        );
        // a line comment needs a line end: Cassandra's lexer refuses one at the end
        assert!(invalid("SELECT * FROM ks.t -- the end").contains("line end"));
        assert!(invalid("SELECT * FROM ks.t //").contains("line end"));
    }

    #[test]
    fn only_cassandras_whitespace_and_characters_are_accepted() {
        assert_eq!(one("SELECT\t*\r\nFROM\n\rks.t", None), at("select", Some("ks.t")));
        for text in ["SELECT * FROM\x0cks.t", "SELECT * FROM\x0bks.t", "SELECT * FROM ks.t\0", "SELECT * FROM _t"] {
            invalid(text);
        }
        invalid("SELECT * FROM ks.tablé");
        invalid("SELECT $x FROM ks.t");
        invalid("SELECT * FROM ks.t WHERE k = `1`");
        // inside quotes anything goes, and names keep their case
        assert_eq!(one("SELECT 'é\u{0}' FROM \"Ks\".\"Tablé\"", None), at("select", Some("Ks.Tablé")));
        assert_eq!(one("SELECT * FROM KS.Tab", None), at("select", Some("ks.tab")));
        assert_eq!(one("SELECT * FROM \"a\"\"b\"", None), at("select", Some("a\"b")));
    }

    #[test]
    fn block_comments_do_not_nest_and_strings_end_where_cassandras_do() {
        // MULTILINE_COMMENT: '/*' .* '*/' ends at the first */
        assert_eq!(one("SELECT * FROM /* /* */ ks.real", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT * FROM /* -- */ ks.real", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT * FROM -- /*\n ks.real", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT '--', $$'$$, '/*' FROM ks.real", None), at("select", Some("ks.real")));
        assert_eq!(one("SELECT $$ $ $$ FROM ks.real", None), at("select", Some("ks.real")));
        // $$ ends at the first $$: a third $ is a lone $, refused
        invalid("SELECT $$x$$$ FROM ks.t");
        invalid("SELECT \"\"\" FROM ks.t");
    }

    #[test]
    fn values_run_into_words_are_refused_not_guessed() {
        for text in [
            "BEGIN BATCH UPDATE ks.a SET v = 0x01 WHERE k = 0xUPDATE ks.b SET v = 1 WHERE k = 1 APPLY BATCH",
            "BEGIN BATCH UPDATE ks.a SET v = 1 WHERE k = 3dDELETE FROM ks.b WHERE k = 1 APPLY BATCH",
            "BEGIN BATCH UPDATE ks.a SET v = 1 WHERE k = -nanUPDATE ks.b SET v = 1 WHERE k = 1 APPLY BATCH",
            "BEGIN BATCH UPDATE ks.a SET v = 1 WHERE k = -P1DUPDATE ks.b SET v = 1 WHERE k = 1 APPLY BATCH",
            "BEGIN BATCH UPDATE ks.a SET v = 1 WHERE k = 1e5DELETE FROM ks.b WHERE k = 1 APPLY BATCH",
            "SELECT * FROM ks.t WHERE k = 12345678-1234-1234-1234-123456789abcx",
            "SELECT * FROM ks.t WHERE k = 1.x",
        ] {
            invalid(text);
        }
        assert!(invalid("SELECT 0xDELETE FROM ks.t").contains("runs a value into a word"));
        // the values Cassandra reads as one token are read whole
        assert_eq!(
            one(
                "SELECT * FROM ks.t WHERE a = 1.5e-3 AND b = -1 AND c = 1h30m AND d = 0xff AND e = -NaN \
                 AND f = -Infinity AND g = P0001-02-03T04:05:06 AND h = -PT1H AND i = 12345678-abcd-1234-1234-123456789abc \
                 AND j = deadbeef-dead-beef-dead-beefdeadbeef AND k = 1µs AND l = P1Y2M AND m IN (1, 2)",
                None
            ),
            at("select", Some("ks.t"))
        );
        assert_eq!(one("SELECT m[1..2] FROM ks.t", None), at("select", Some("ks.t")));
    }

    #[test]
    fn batch_statements_need_no_semicolon_between_them() {
        // Parser.g batchStatement: ( batchStatementObjective ';'? )*
        assert_eq!(
            all(
                "BEGIN BATCH INSERT INTO a.t (k) VALUES (1) DELETE FROM b.u WHERE k = 1 UPDATE t SET v = 1 WHERE k = 1 \
                 APPLY BATCH"
            ),
            [at("insert", Some("a.t")), at("delete", Some("b.u")), at("update", Some("ks.t"))]
        );
        assert_eq!(
            all("begin counter batch using timestamp 1 update a.c set n = n + 1 where k = 1 apply batch;;"),
            [at("update", Some("a.c"))]
        );
        invalid("BEGIN BATCH INSERT INTO a.t (k) VALUES (1);; DELETE FROM b.u WHERE k = 1 APPLY BATCH");
        invalid("BEGIN BATCH INSERT INTO a.t (k) VALUES (1) APPLY BATCH; DROP TABLE b.u");
        invalid("BEGIN BATCH INSERT INTO a.t (k) VALUES (1)");
        invalid("BEGIN BATCH SELECT * FROM b.u; INSERT INTO a.t (k) VALUES (1) APPLY BATCH");
        invalid("BEGIN INSERT INTO a.t (k) VALUES (1) APPLY BATCH");
    }

    #[test]
    fn a_query_is_one_statement() {
        // Cql.g query: cqlStatement (';')* EOF
        assert_eq!(one("SELECT * FROM ks.a;;;", None), at("select", Some("ks.a")));
        assert!(invalid("SELECT * FROM ks.a; DROP TABLE ks.b").contains("more than one statement"));
        assert!(invalid("USE a; SELECT * FROM t").contains("more than one statement"));
    }

    #[test]
    fn no_text_makes_the_tokenizer_panic() {
        // every string of up to 4 of these pieces (multibyte ones included)
        let pieces =
            ["-", "/", "*", "$", "'", "\"", "\r", "\n", "µ", "1", "e", "x", "P", "T", "n", ";", " ", "0", "é", "."];
        let mut texts = vec![String::new()];
        for _ in 0..4 {
            let longer: Vec<String> =
                texts.iter().flat_map(|t| pieces.iter().map(move |p| format!("{t}{p}"))).collect();
            for text in &longer {
                classify(text, Some("ks"));
                classify(&format!("BEGIN BATCH UPDATE t SET v = {text} WHERE k = 1 APPLY BATCH"), None);
            }
            texts = longer;
        }
    }
}
