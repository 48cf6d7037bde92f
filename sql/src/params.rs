//! Binding `$n` parameters of the extended query protocol into a parsed statement.
//!
//! Parameters are substituted as typed literals into the AST before planning, so every
//! statement kind (queries, DML, SHOW, ...) accepts parameters the same way.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{visit_expressions_mut, Expr, Statement, Value, Visit, Visitor};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

use crate::error::{SqlError, SqlResult};
use crate::types::SqlType;

/// A parameter value from the client, already decoded to PostgreSQL text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundParam {
    /// The value's text form (`None` is SQL NULL). For `BYTEA`, lower-case hex digits.
    pub value: Option<String>,
    /// The type the client declared, if any: untyped values behave like string literals,
    /// which the planner coerces to whatever the context needs.
    pub sql_type: Option<SqlType>,
}

fn placeholder_index(expr: &Expr) -> Option<Result<usize, String>> {
    if let Expr::Value(v) = expr {
        if let Value::Placeholder(p) = &v.value {
            return Some(
                p.strip_prefix('$')
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| p.clone()),
            );
        }
    }
    None
}

/// Parameter types the statement's text states: `$n::type` / `CAST($n AS type)`, and the
/// integers of LIMIT and OFFSET. Fills in what DataFusion's planner cannot infer.
pub fn declared_parameter_types(stmt: &Statement) -> Vec<(usize, SqlType)> {
    struct Declared(Vec<(usize, SqlType)>);
    impl Declared {
        fn integer(&mut self, expr: &Expr) {
            if let Some(Ok(n)) = placeholder_index(expr) {
                self.0.push((n, SqlType::BigInt));
            }
        }
    }
    impl Visitor for Declared {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Expr::Cast { expr: inner, data_type, .. } = expr {
                if let (Some(Ok(n)), Ok(t)) = (placeholder_index(inner), SqlType::from_ast(data_type)) {
                    self.0.push((n, t));
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, query: &datafusion::sql::sqlparser::ast::Query) -> ControlFlow<()> {
            use datafusion::sql::sqlparser::ast::LimitClause;
            match &query.limit_clause {
                Some(LimitClause::LimitOffset { limit, offset, .. }) => {
                    if let Some(limit) = limit {
                        self.integer(limit);
                    }
                    if let Some(offset) = offset {
                        self.integer(&offset.value);
                    }
                }
                Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                    self.integer(offset);
                    self.integer(limit);
                }
                None => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut declared = Declared(Vec::new());
    let _ = stmt.visit(&mut declared);
    declared.0
}

/// The number of parameters a statement takes (the highest `$n`).
pub fn parameter_count(stmt: &Statement) -> usize {
    struct MaxPlaceholder(usize);
    impl Visitor for MaxPlaceholder {
        type Break = ();
        fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<()> {
            if let Some(Ok(n)) = placeholder_index(expr) {
                self.0 = self.0.max(n);
            }
            ControlFlow::Continue(())
        }
    }
    let mut v = MaxPlaceholder(0);
    let _ = stmt.visit(&mut v);
    v.0
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn literal_sql(param: &BoundParam) -> String {
    let Some(text) = &param.value else {
        return match &param.sql_type {
            Some(t) => format!("CAST(NULL AS {})", cast_name(t)),
            None => "NULL".into(),
        };
    };
    match &param.sql_type {
        None | Some(SqlType::Text | SqlType::Varchar { .. } | SqlType::Jsonb) => quote(text),
        Some(SqlType::Decimal { .. }) => match decimal_type_of(text) {
            Some((precision, scale)) => format!("CAST({} AS DECIMAL({precision},{scale}))", quote(text)),
            None => quote(text),
        },
        Some(SqlType::Bytea) => format!("decode({}, 'hex')", quote(text)),
        // JDBC sends dates as '2024-01-03 +00' with no type: a date (zone ignored, as PostgreSQL
        // does), or midnight in that zone when the parameter stands for a timestamp.
        Some(SqlType::Date) => format!("CAST({} AS DATE)", quote(without_zone(text))),
        Some(SqlType::Timestamp) if is_date_with_zone(text) => format!("CAST({} AS TIMESTAMP)", quote(without_zone(text))),
        Some(SqlType::Timestamptz) if is_date_with_zone(text) => {
            let (date, zone) = text.trim().split_once(' ').unwrap_or((text, "+00"));
            format!("CAST({} AS TIMESTAMPTZ)", quote(&format!("{date}T00:00:00{}", full_offset(zone.trim()))))
        }
        Some(t) => format!("CAST({} AS {})", quote(text), cast_name(t)),
    }
}

/// The smallest DECIMAL(precision, scale) that holds `text` exactly (`-12.50` → (4, 2)), so a
/// numeric parameter keeps every digit it was sent with.
fn decimal_type_of(text: &str) -> Option<(usize, usize)> {
    let unsigned = text.trim().trim_start_matches(['-', '+']);
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let int_digits = int_part.trim_start_matches('0').len();
    let scale = frac_part.len();
    let precision = (int_digits + scale).max(1);
    (precision <= 38).then_some((precision, scale))
}

/// Whether `text` is a bare date followed by a zone offset (`2024-01-03 +00`).
fn is_date_with_zone(text: &str) -> bool {
    let stripped = without_zone(text);
    stripped.len() == 10 && stripped != text.trim() && stripped.as_bytes().get(4) == Some(&b'-')
}

/// `+00` → `+00:00`, `+0530` → `+05:30`; anything else unchanged.
fn full_offset(zone: &str) -> String {
    let (sign, digits) = zone.split_at(1.min(zone.len()));
    match digits.len() {
        2 => format!("{sign}{digits}:00"),
        4 if !digits.contains(':') => format!("{sign}{}:{}", &digits[..2], &digits[2..]),
        _ => zone.to_string(),
    }
}

/// A date's text without a trailing time zone (`2024-01-03 +00` → `2024-01-03`).
fn without_zone(text: &str) -> &str {
    match text.trim().split_once(' ') {
        Some((date, zone)) if zone.trim_start().starts_with(['+', '-']) => date,
        _ => text,
    }
}

fn cast_name(t: &SqlType) -> String {
    match t {
        SqlType::Boolean => "BOOLEAN".into(),
        SqlType::SmallInt => "SMALLINT".into(),
        SqlType::Int => "INT".into(),
        SqlType::BigInt => "BIGINT".into(),
        SqlType::Real => "REAL".into(),
        SqlType::Double => "DOUBLE PRECISION".into(),
        SqlType::Decimal { precision, scale } => format!("DECIMAL({precision},{scale})"),
        SqlType::Varchar { .. } | SqlType::Text | SqlType::Jsonb => "TEXT".into(),
        SqlType::Date => "DATE".into(),
        SqlType::Timestamp => "TIMESTAMP".into(),
        SqlType::Timestamptz => "TIMESTAMPTZ".into(),
        SqlType::Interval => "INTERVAL".into(),
        SqlType::Bytea => "BYTEA".into(),
    }
}

/// Replaces every `$n` in `stmt` with the literal of `params[n-1]`.
pub fn bind_parameters(stmt: &Statement, params: &[BoundParam]) -> SqlResult<Statement> {
    let needed = parameter_count(stmt);
    if params.len() < needed {
        return Err(SqlError::InvalidParameter(format!(
            "bind message supplies {} parameters, but prepared statement requires {needed}",
            params.len()
        )));
    }
    let mut literals = Vec::with_capacity(params.len());
    for p in params {
        let sql = literal_sql(p);
        let expr = Parser::new(&PostgreSqlDialect {})
            .try_with_sql(&sql)
            .and_then(|mut parser| parser.parse_expr())
            .map_err(|e| SqlError::InvalidParameter(format!("parameter value {sql} is invalid: {e}")))?;
        literals.push(expr);
    }
    let mut stmt = stmt.clone();
    let flow = visit_expressions_mut(&mut stmt, |expr| {
        match placeholder_index(expr) {
            Some(Ok(n)) => match literals.get(n - 1) {
                Some(lit) => *expr = lit.clone(),
                None => return ControlFlow::Break(SqlError::InvalidParameter(format!("there is no parameter ${n}"))),
            },
            Some(Err(p)) => {
                return ControlFlow::Break(SqlError::Syntax(format!("syntax error at or near \"{p}\"")))
            }
            None => {}
        }
        ControlFlow::Continue(())
    });
    match flow {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(stmt),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Statement {
        Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0)
    }

    #[test]
    fn substitutes_typed_and_untyped_literals() {
        let stmt = parse("SELECT * FROM t WHERE a = $1 AND b = $2 AND c = $3 AND d = $1");
        assert_eq!(parameter_count(&stmt), 3);
        let bound = bind_parameters(
            &stmt,
            &[
                BoundParam { value: Some("42".into()), sql_type: Some(SqlType::BigInt) },
                BoundParam { value: Some("it's".into()), sql_type: None },
                BoundParam { value: None, sql_type: None },
            ],
        )
        .unwrap();
        assert_eq!(
            bound.to_string(),
            "SELECT * FROM t WHERE a = CAST('42' AS BIGINT) AND b = 'it''s' AND c = NULL AND d = CAST('42' AS BIGINT)"
        );
    }

    #[test]
    fn numeric_and_date_parameters_keep_their_meaning() {
        assert_eq!(decimal_type_of("-12.50"), Some((4, 2)));
        assert_eq!(decimal_type_of("0.5"), Some((1, 1)));
        assert_eq!(decimal_type_of("1234"), Some((4, 0)));
        assert_eq!(decimal_type_of("NaN"), None);
        assert_eq!(without_zone("2024-01-03 +00"), "2024-01-03");
        assert_eq!(without_zone("2024-01-03"), "2024-01-03");
        assert!(is_date_with_zone("2024-01-03 +00") && !is_date_with_zone("2024-01-03 10:00:00"));
        assert_eq!(full_offset("+00"), "+00:00");
        assert_eq!(full_offset("-0530"), "-05:30");
        let stmt = parse("SELECT $1, $2");
        let bound = bind_parameters(
            &stmt,
            &[
                BoundParam { value: Some("1.10".into()), sql_type: Some(SqlType::Decimal { precision: 38, scale: 10 }) },
                BoundParam { value: Some("2024-01-03 +00".into()), sql_type: Some(SqlType::Date) },
            ],
        )
        .unwrap();
        assert_eq!(bound.to_string(), "SELECT CAST('1.10' AS DECIMAL(3,2)), CAST('2024-01-03' AS DATE)");
    }

    #[test]
    fn missing_parameters_are_an_error() {
        let stmt = parse("SELECT $2");
        assert!(matches!(
            bind_parameters(&stmt, &[BoundParam { value: None, sql_type: None }]),
            Err(SqlError::InvalidParameter(_))
        ));
    }
}
