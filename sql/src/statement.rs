//! [`ParsedStatement`]: a statement of Sluice's SQL — PostgreSQL's, as sqlparser reads it, plus
//! the streaming statements sqlparser does not know (`FLUSH`, `CREATE SOURCE`, ...).
//!
//! Why parse them here instead of extending sqlparser: they are few and their grammar is
//! small; the parser's public token-level API reads them and hands everything else (column
//! definitions, names, values) to sqlparser's own routines.

use std::collections::BTreeMap;
use std::fmt;

use datafusion::sql::sqlparser::ast::{ColumnDef, ObjectName, Statement, TableConstraint, Value};
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;

/// One parsed statement.
#[derive(Debug, Clone, PartialEq)]
pub enum ParsedStatement {
    /// A statement sqlparser reads (queries, DML, DDL, CREATE MATERIALIZED VIEW, ...).
    Sql(Statement),
    /// `FLUSH`: wait until every change so far is visible in every view.
    Flush,
    /// `CREATE SOURCE`.
    CreateSource(CreateSource),
    /// `SHOW SOURCES`, `SHOW MATERIALIZED VIEWS`, `SHOW SINKS`.
    ShowObjects(ObjectKind),
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
}

impl fmt::Display for ParsedStatement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParsedStatement::Sql(stmt) => write!(f, "{stmt}"),
            ParsedStatement::Flush => write!(f, "FLUSH"),
            ParsedStatement::CreateSource(source) => write!(f, "CREATE SOURCE {}", source.name),
            ParsedStatement::ShowObjects(kind) => write!(f, "SHOW {}", kind.plural()),
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

/// Parses a Sluice-only statement at the parser's position, or returns `None` (consuming
/// nothing) if the statement is standard SQL.
pub(crate) fn parse_sluice_statement(parser: &mut Parser<'_>) -> Result<Option<ParsedStatement>, ParserError> {
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
        let (columns, constraints) = parser.parse_columns()?;
        let mut options = BTreeMap::new();
        if parser.parse_keyword(Keyword::WITH) {
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
        }
        if peek_words(parser, &["FORMAT"]) {
            return Err(ParserError::ParserError(
                "FORMAT ... ENCODE ... is not supported yet: the datagen connector needs no format".into(),
            ));
        }
        return Ok(Some(ParsedStatement::CreateSource(CreateSource { name, if_not_exists, columns, constraints, options })));
    }
    Ok(None)
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
    fn a_missing_delimiter_is_a_syntax_error() {
        assert!(parse_statements("FLUSH FLUSH").is_err());
    }
}
