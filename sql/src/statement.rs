//! [`ParsedStatement`]: a statement of Sluice's SQL — PostgreSQL's, as sqlparser reads it, plus
//! the streaming statements sqlparser does not know (`FLUSH`, `CREATE SOURCE`, ...).
//!
//! Why parse them here instead of extending sqlparser: they are few and their grammar is
//! small; the parser's public token-level API reads them and hands everything else (column
//! definitions, names, values) to sqlparser's own routines.

use std::collections::BTreeMap;
use std::fmt;

use datafusion::sql::sqlparser::ast::{
    self, ColumnDef, CreateTableOptions, Ident, ObjectName, SqlOption, Statement, TableConstraint, Value,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

/// One parsed statement.
///
/// sqlparser's `Statement` makes the `Sql` variant large; statements are parsed once per query
/// and matched deeply (`Sql(Statement::Insert(..))`), which a box would prevent.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum ParsedStatement {
    /// A statement sqlparser reads (queries, DML, DDL, CREATE MATERIALIZED VIEW, ...).
    Sql(Statement),
    /// `FLUSH`: wait until every change so far is visible in every view.
    Flush,
    /// `CREATE SOURCE`.
    CreateSource(CreateSource),
    /// `SHOW SOURCES`, `SHOW MATERIALIZED VIEWS`, `SHOW SINKS`.
    ShowObjects(ObjectKind),
    /// `SHOW HISTORY FOR source`: the source's archived partitions.
    ShowHistory(ObjectName),
    /// `CREATE TABLE` with Sluice's event-time clauses (`WATERMARK FOR`, `APPEND ONLY`);
    /// tables without them are plain [`ParsedStatement::Sql`].
    CreateTable(Box<CreateEventTable>),
    /// `CREATE SINK name FROM view WITH (...) FORMAT ... ENCODE ...`.
    CreateSink(CreateSink),
    /// `DROP SINK`.
    DropSink {
        /// The sinks.
        names: Vec<ObjectName>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `DROP SOURCE`.
    DropSource {
        /// The sources.
        names: Vec<ObjectName>,
        /// `IF EXISTS`.
        if_exists: bool,
        /// `CASCADE`.
        cascade: bool,
    },
}

/// Kinds of catalog objects listed by SHOW.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// Sources.
    Sources,
    /// Materialized views.
    MaterializedViews,
    /// Sinks.
    Sinks,
}

/// `WATERMARK FOR column AS expr`: rows whose `column` is below the largest `expr` seen so far
/// are late.
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkClause {
    /// The event-time column.
    pub column: Ident,
    /// The watermark expression (usually `column - INTERVAL '...'`).
    pub expr: ast::Expr,
}

/// `CREATE TABLE name (columns, WATERMARK FOR ...) [APPEND ONLY]`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateEventTable {
    /// The table as sqlparser represents it (without the clauses below).
    pub create: ast::CreateTable,
    /// The watermark, if declared.
    pub watermark: Option<WatermarkClause>,
    /// `APPEND ONLY`: rows are only ever inserted.
    pub append_only: bool,
}

/// The `WITH` option of a materialized view that `EMIT ON WINDOW CLOSE` becomes.
pub const EMIT_OPTION: &str = "emit";
/// Its value for `EMIT ON WINDOW CLOSE`.
pub const EMIT_ON_WINDOW_CLOSE: &str = "on_window_close";

/// `CREATE SOURCE name (columns) WITH (options)`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSource {
    /// The source name.
    pub name: ObjectName,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// The columns.
    pub columns: Vec<ColumnDef>,
    /// Table constraints given (refused: sources have no keys yet).
    pub constraints: Vec<TableConstraint>,
    /// The `WITH` options, keys lower-cased.
    pub options: BTreeMap<String, String>,
    /// `WATERMARK FOR ...`, if declared.
    pub watermark: Option<WatermarkClause>,
    /// `FORMAT ... ENCODE ...`, if given.
    pub format: Option<crate::catalog::FormatClause>,
}

/// `CREATE SINK` as parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateSink {
    /// The sink's name.
    pub name: ObjectName,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// The materialized view whose changes it sends.
    pub from: ObjectName,
    /// The `WITH` options, keys lower-cased.
    pub options: BTreeMap<String, String>,
    /// `FORMAT ... ENCODE ...`.
    pub format: Option<crate::catalog::FormatClause>,
}

impl fmt::Display for ParsedStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParsedStatement::Sql(stmt) => write!(f, "{stmt}"),
            ParsedStatement::Flush => write!(f, "FLUSH"),
            ParsedStatement::CreateSource(source) => write!(f, "CREATE SOURCE {}", source.name),
            ParsedStatement::CreateTable(table) => write!(f, "CREATE TABLE {}", table.create.name),
            ParsedStatement::CreateSink(sink) => write!(f, "CREATE SINK {}", sink.name),
            ParsedStatement::DropSink { names, .. } => {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                write!(f, "DROP SINK {}", names.join(", "))
            }
            ParsedStatement::ShowObjects(kind) => write!(f, "SHOW {}", kind.plural()),
            ParsedStatement::ShowHistory(name) => write!(f, "SHOW HISTORY FOR {name}"),
            ParsedStatement::DropSource { names, .. } => {
                let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
                write!(f, "DROP SOURCE {}", names.join(", "))
            }
        }
    }
}

impl ObjectKind {
    /// The plural words of SHOW.
    pub fn plural(self) -> &'static str {
        match self {
            ObjectKind::Sources => "SOURCES",
            ObjectKind::MaterializedViews => "MATERIALIZED VIEWS",
            ObjectKind::Sinks => "SINKS",
        }
    }
}

fn word_is(token: &Token, word: &str) -> bool {
    matches!(token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(word))
}

fn peek_words(parser: &Parser<'_>, words: &[&str]) -> bool {
    words.iter().enumerate().all(|(i, w)| word_is(&parser.peek_nth_token_ref(i).token, w))
}

fn skip(parser: &mut Parser<'_>, n: usize) {
    for _ in 0..n {
        parser.next_token();
    }
}

/// The tokens of the statement at the parser's position (up to a `;` outside parentheses, or
/// the end), without consuming them.
fn statement_tokens(parser: &Parser<'_>) -> Vec<TokenWithSpan> {
    let mut tokens = Vec::new();
    let mut depth = 0usize;
    loop {
        let token = parser.peek_nth_token_ref(tokens.len()).clone();
        match &token.token {
            Token::EOF => break,
            Token::SemiColon if depth == 0 => break,
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ => {}
        }
        tokens.push(token);
    }
    tokens
}

/// Where the words `words` start in `tokens` at parenthesis depth `at_depth`, if they do.
fn find_words(tokens: &[TokenWithSpan], words: &[&str], at_depth: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, token) in tokens.iter().enumerate() {
        match &token.token {
            Token::LParen => depth += 1,
            Token::RParen => depth = depth.saturating_sub(1),
            _ if depth == at_depth && words.iter().enumerate().all(|(k, w)| tokens.get(i + k).is_some_and(|t| word_is(&t.token, w))) => {
                return Some(i);
            }
            _ => {}
        }
    }
    None
}

/// The column list of CREATE TABLE or SOURCE, which may hold one `WATERMARK FOR col AS expr`.
/// The columns, table constraints and watermark of a column list.
type ColumnList = (Vec<ColumnDef>, Vec<TableConstraint>, Option<WatermarkClause>);

fn parse_columns_with_watermark(parser: &mut Parser<'_>) -> Result<ColumnList, ParserError> {
    let mut columns = Vec::new();
    let mut constraints = Vec::new();
    let mut watermark = None;
    parser.expect_token(&Token::LParen)?;
    if parser.consume_token(&Token::RParen) {
        return Ok((columns, constraints, watermark));
    }
    loop {
        if peek_words(parser, &["WATERMARK", "FOR"]) {
            skip(parser, 2);
            let column = parser.parse_identifier()?;
            parser.expect_keyword(Keyword::AS)?;
            let expr = parser.parse_expr()?;
            if watermark.replace(WatermarkClause { column, expr }).is_some() {
                return Err(ParserError::ParserError("only one WATERMARK FOR clause is allowed".into()));
            }
        } else if let Some(constraint) = parser.parse_optional_table_constraint()? {
            constraints.push(constraint);
        } else {
            columns.push(parser.parse_column_def()?);
        }
        if parser.consume_token(&Token::Comma) {
            continue;
        }
        parser.expect_token(&Token::RParen)?;
        return Ok((columns, constraints, watermark));
    }
}

/// Parses a Sluice-only statement at the parser's position, or returns `None` (consuming
/// nothing) if the statement is standard SQL.
pub(crate) fn parse_sluice_statement(parser: &mut Parser<'_>) -> Result<Option<ParsedStatement>, ParserError> {
    if peek_words(parser, &["CREATE", "TABLE"]) {
        let tokens = statement_tokens(parser);
        let event_time = find_words(&tokens, &["WATERMARK", "FOR"], 1).is_some() || find_words(&tokens, &["APPEND", "ONLY"], 0).is_some();
        if event_time {
            skip(parser, 2);
            let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
            let name = parser.parse_object_name(false)?;
            let (columns, constraints, watermark) = parse_columns_with_watermark(parser)?;
            let append_only = peek_words(parser, &["APPEND", "ONLY"]);
            if append_only {
                skip(parser, 2);
            }
            let create = ast::helpers::stmt_create_table::CreateTableBuilder::new(name)
                .if_not_exists(if_not_exists)
                .columns(columns)
                .constraints(constraints)
                .build();
            return Ok(Some(ParsedStatement::CreateTable(Box::new(CreateEventTable { create, watermark, append_only }))));
        }
    }
    if peek_words(parser, &["CREATE", "MATERIALIZED", "VIEW"]) || peek_words(parser, &["EXPLAIN", "CREATE", "MATERIALIZED", "VIEW"]) {
        let tokens = statement_tokens(parser);
        if let Some(at) = find_words(&tokens, &["EMIT", "ON", "WINDOW", "CLOSE"], 0) {
            if at + 4 != tokens.len() {
                return Err(ParserError::ParserError("EMIT ON WINDOW CLOSE must end the statement".into()));
            }
            let dialect = PostgreSqlDialect {};
            let mut inner = Parser::new(&dialect).with_tokens_with_locations(tokens[..at].to_vec());
            let mut statement = inner.parse_statement()?;
            if inner.peek_token().token != Token::EOF {
                return Err(ParserError::ParserError(format!("expected EMIT ON WINDOW CLOSE, found: {}", inner.peek_token())));
            }
            let create = match &mut statement {
                Statement::CreateView(create) => create,
                Statement::Explain { statement: inner, .. } => match inner.as_mut() {
                    Statement::CreateView(create) => create,
                    _ => return Err(ParserError::ParserError("EMIT ON WINDOW CLOSE ends CREATE MATERIALIZED VIEW only".into())),
                },
                _ => return Err(ParserError::ParserError("EMIT ON WINDOW CLOSE ends CREATE MATERIALIZED VIEW only".into())),
            };
            let option = SqlOption::KeyValue {
                key: Ident::new(EMIT_OPTION),
                value: ast::Expr::Value(Value::SingleQuotedString(EMIT_ON_WINDOW_CLOSE.into()).into()),
            };
            create.options = match std::mem::replace(&mut create.options, CreateTableOptions::None) {
                CreateTableOptions::With(mut options) => {
                    options.push(option);
                    CreateTableOptions::With(options)
                }
                _ => CreateTableOptions::With(vec![option]),
            };
            skip(parser, tokens.len());
            return Ok(Some(ParsedStatement::Sql(statement)));
        }
    }
    if peek_words(parser, &["FLUSH"]) {
        skip(parser, 1);
        return Ok(Some(ParsedStatement::Flush));
    }
    for (words, kind) in [
        (&["SHOW", "SOURCES"][..], ObjectKind::Sources),
        (&["SHOW", "SINKS"][..], ObjectKind::Sinks),
        (&["SHOW", "MATERIALIZED", "VIEWS"][..], ObjectKind::MaterializedViews),
    ] {
        if peek_words(parser, words) {
            skip(parser, words.len());
            return Ok(Some(ParsedStatement::ShowObjects(kind)));
        }
    }
    if peek_words(parser, &["SHOW", "HISTORY", "FOR"]) {
        skip(parser, 3);
        return Ok(Some(ParsedStatement::ShowHistory(parser.parse_object_name(false)?)));
    }
    if peek_words(parser, &["DROP", "SINK"]) {
        skip(parser, 2);
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let names = parser.parse_comma_separated(|p| p.parse_object_name(false))?;
        return Ok(Some(ParsedStatement::DropSink { names, if_exists }));
    }
    if peek_words(parser, &["CREATE", "SINK"]) {
        skip(parser, 2);
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = parser.parse_object_name(false)?;
        if parser.parse_keyword(Keyword::AS) {
            return Err(ParserError::ParserError(
                "CREATE SINK ... AS SELECT is not supported yet: create a materialized view and CREATE SINK ... FROM it".into(),
            ));
        }
        parser.expect_keyword(Keyword::FROM)?;
        let from = parser.parse_object_name(false)?;
        let options = if parser.parse_keyword(Keyword::WITH) { parse_options(parser)? } else { BTreeMap::new() };
        let format = parse_format(parser)?;
        return Ok(Some(ParsedStatement::CreateSink(CreateSink { name, if_not_exists, from, options, format })));
    }
    if peek_words(parser, &["DROP", "SOURCE"]) {
        skip(parser, 2);
        let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
        let names = parser.parse_comma_separated(|p| p.parse_object_name(false))?;
        let cascade = parser.parse_keyword(Keyword::CASCADE);
        if !cascade {
            let _ = parser.parse_keyword(Keyword::RESTRICT);
        }
        return Ok(Some(ParsedStatement::DropSource { names, if_exists, cascade }));
    }
    if peek_words(parser, &["CREATE", "SOURCE"]) {
        skip(parser, 2);
        let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
        let name = parser.parse_object_name(false)?;
        let (columns, constraints, watermark) = parse_columns_with_watermark(parser)?;
        let options = if parser.parse_keyword(Keyword::WITH) { parse_options(parser)? } else { BTreeMap::new() };
        let format = parse_format(parser)?;
        return Ok(Some(ParsedStatement::CreateSource(CreateSource {
            name,
            if_not_exists,
            columns,
            constraints,
            options,
            watermark,
            format,
        })));
    }
    Ok(None)
}

/// `FORMAT <format> ENCODE <encode> [( options )]`, if next.
fn parse_format(parser: &mut Parser) -> Result<Option<crate::catalog::FormatClause>, ParserError> {
    if !peek_words(parser, &["FORMAT"]) {
        return Ok(None);
    }
    skip(parser, 1);
    let format = parser.parse_identifier()?.value.to_ascii_uppercase();
    if !peek_words(parser, &["ENCODE"]) {
        return parser.expected("ENCODE after FORMAT ...", parser.peek_token());
    }
    skip(parser, 1);
    let encode = parser.parse_identifier()?.value.to_ascii_uppercase();
    let options = if parser.peek_token().token == Token::LParen { parse_options(parser)? } else { BTreeMap::new() };
    Ok(Some(crate::catalog::FormatClause { format, encode, options }))
}

/// `( key = value, ... )`: keys are dotted names, lower-cased; values are literals, as text.
fn parse_options(parser: &mut Parser) -> Result<BTreeMap<String, String>, ParserError> {
    let mut options = BTreeMap::new();
    parser.expect_token(&Token::LParen)?;
    loop {
        let key = parser.parse_object_name(false)?;
        let key = key.0.iter().map(|p| p.to_string().trim_matches('"').to_ascii_lowercase()).collect::<Vec<_>>().join(".");
        parser.expect_token(&Token::Eq)?;
        let value = match parser.parse_value()?.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s,
            Value::Number(n, _) => n.to_string(),
            Value::Boolean(b) => b.to_string(),
            other => other.to_string(),
        };
        options.insert(key, value);
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    parser.expect_token(&Token::RParen)?;
    Ok(options)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use crate::parse_statements;

    use super::*;

    #[test]
    fn streaming_statements_parse_between_standard_ones() {
        let parsed = parse_statements(
            "SELECT 1; flush; SHOW materialized views; CREATE SOURCE s (a BIGINT, b VARCHAR) \
             WITH (connector = 'datagen', datagen.rows.per.second = 10); DROP SOURCE IF EXISTS s CASCADE",
        )
        .unwrap();
        assert_eq!(parsed.len(), 5);
        assert!(matches!(parsed[0], ParsedStatement::Sql(_)));
        assert_eq!(parsed[1], ParsedStatement::Flush);
        assert_eq!(parsed[2], ParsedStatement::ShowObjects(ObjectKind::MaterializedViews));
        let ParsedStatement::CreateSource(source) = &parsed[3] else { panic!("{:?}", parsed[3]) };
        assert_eq!(source.columns.len(), 2);
        assert_eq!(source.options.get("datagen.rows.per.second").map(String::as_str), Some("10"));
        assert!(matches!(&parsed[4], ParsedStatement::DropSource { if_exists: true, cascade: true, .. }));
    }

    #[test]
    fn event_time_clauses_parse() {
        let parsed = parse_statements(
            "CREATE TABLE e (id BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5 seconds') APPEND ONLY; \
             CREATE TABLE plain (a INT); \
             CREATE MATERIALIZED VIEW v AS SELECT window_start, count(*) FROM TUMBLE(e, ts, INTERVAL '1 minute') \
             GROUP BY window_start EMIT ON WINDOW CLOSE; \
             CREATE SOURCE s (ts TIMESTAMPTZ, WATERMARK FOR ts AS ts) WITH (connector = 'datagen')",
        )
        .unwrap();
        let ParsedStatement::CreateTable(table) = &parsed[0] else { panic!("{:?}", parsed[0]) };
        assert!(table.append_only);
        assert_eq!(table.create.columns.len(), 2);
        assert_eq!(table.watermark.as_ref().map(|w| w.column.value.as_str()), Some("ts"));
        assert!(matches!(parsed[1], ParsedStatement::Sql(Statement::CreateTable(_))));
        let ParsedStatement::Sql(view) = &parsed[2] else { panic!("{:?}", parsed[2]) };
        let text = view.to_string();
        assert!(text.contains("WITH (emit = 'on_window_close')"), "{text}");
        // The stored text parses back to the same statement.
        assert_eq!(parse_statements(&text).unwrap()[0], parsed[2]);
        let ParsedStatement::CreateSource(source) = &parsed[3] else { panic!("{:?}", parsed[3]) };
        assert!(source.watermark.is_some());
        assert!(parse_statements("CREATE MATERIALIZED VIEW v AS SELECT 1 EMIT ON WINDOW CLOSE x").is_err());
    }

    #[test]
    fn source_formats_parse() {
        let parsed = parse_statements(
            "CREATE SOURCE l (status INT) WITH (connector = 'file', path = '/x') FORMAT PLAIN ENCODE LOG (format = 'combined'); \
             CREATE SOURCE j (a INT) WITH (connector = 'file', path = '/y') FORMAT plain ENCODE json",
        )
        .unwrap();
        let ParsedStatement::CreateSource(log) = &parsed[0] else { panic!("{:?}", parsed[0]) };
        let format = log.format.as_ref().unwrap();
        assert_eq!((format.format.as_str(), format.encode.as_str()), ("PLAIN", "LOG"));
        assert_eq!(format.options.get("format").map(String::as_str), Some("combined"));
        let ParsedStatement::CreateSource(json) = &parsed[1] else { panic!("{:?}", parsed[1]) };
        assert_eq!(json.format.as_ref().unwrap().encode, "JSON");
        assert!(parse_statements("CREATE SOURCE j (a INT) WITH (connector = 'file') FORMAT PLAIN JSON").is_err());
    }

    #[test]
    fn a_missing_delimiter_is_a_syntax_error() {
        assert!(parse_statements("FLUSH FLUSH").is_err());
    }
}
