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
        None | Some(SqlType::Text | SqlType::Varchar { .. } | SqlType::Jsonb | SqlType::Decimal { .. }) => quote(text),
        Some(SqlType::Bytea) => format!("decode({}, 'hex')", quote(text)),
        Some(t) => format!("CAST({} AS {})", quote(text), cast_name(t)),
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
    fn missing_parameters_are_an_error() {
        let stmt = parse("SELECT $2");
        assert!(matches!(
            bind_parameters(&stmt, &[BoundParam { value: None, sql_type: None }]),
            Err(SqlError::InvalidParameter(_))
        ));
    }
}
