//! PostgreSQL's names for unaliased output columns.
//!
//! DataFusion names `count(*)` "count(*)" and `1 + 1` "Int64(1) + Int64(1)"; PostgreSQL says
//! "count" and "?column?". Clients and BI tools key on these names, so the top-level output of
//! a query is renamed the way PostgreSQL would name it. Only the result schema changes; the plan
//! keeps DataFusion's (unique) names.

use datafusion::sql::sqlparser::ast::{Expr, Ident, Query, SelectItem, SetExpr, Value};

use crate::database::normalize_ident;

/// For each output column of `query`, the name PostgreSQL gives it, or `None` to keep the
/// planner's. Returns `None` when the select list has a wildcard (its width is known only
/// after planning).
pub fn postgres_output_names(query: &Query) -> Option<Vec<Option<String>>> {
    let mut body = query.body.as_ref();
    loop {
        match body {
            SetExpr::SetOperation { left, .. } => body = left.as_ref(),
            SetExpr::Query(q) => body = q.body.as_ref(),
            _ => break,
        }
    }
    let SetExpr::Select(select) = body else {
        return None;
    };
    let mut names = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(expr) => names.push(Some(expr_name(expr))),
            SelectItem::ExprWithAlias { alias, .. } => names.push(Some(normalize_ident(alias))),
            SelectItem::ExprWithAliases { .. } => names.push(None),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => return None,
        }
    }
    Some(names)
}

/// PostgreSQL allows two output columns with one name (`SELECT 1, 1`, `SELECT id, id`);
/// DataFusion's projections do not. Gives every repeated item of every SELECT in `query`'s body
/// a unique alias. Call [`postgres_output_names`] on the original query: the client still
/// sees PostgreSQL's names.
pub fn dedupe_output_names(query: &mut Query) {
    dedupe_set_expr(&mut query.body);
}

fn dedupe_set_expr(body: &mut SetExpr) {
    match body {
        SetExpr::SetOperation { left, right, .. } => {
            dedupe_set_expr(left);
            dedupe_set_expr(right);
        }
        SetExpr::Query(q) => dedupe_set_expr(&mut q.body),
        SetExpr::Select(select) => {
            let several = select.projection.len() > 1;
            let mut seen = std::collections::HashSet::new();
            for (index, item) in select.projection.iter_mut().enumerate() {
                // Two different expressions can get one planner name too (`ts::date` and
                // `ts::timestamp` may both be "ts"), so in a list of several every computed
                // item gets its own alias; plain columns keep their names.
                let (key, computed) = match item {
                    SelectItem::UnnamedExpr(Expr::Identifier(i)) => (normalize_ident(i), false),
                    SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                        (parts.last().map(normalize_ident).unwrap_or_default(), false)
                    }
                    SelectItem::UnnamedExpr(e) => (expr_name(e), true),
                    SelectItem::ExprWithAlias { alias, .. } => (normalize_ident(alias), false),
                    _ => continue,
                };
                if !seen.insert(key.clone()) || (several && computed) {
                    let alias = Ident::with_quote('"', format!("{key} #{}", index + 1));
                    let expr = match std::mem::replace(item, SelectItem::UnnamedExpr(Expr::value(Value::Null))) {
                        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
                        other => {
                            *item = other;
                            continue;
                        }
                    };
                    *item = SelectItem::ExprWithAlias { expr, alias };
                }
            }
        }
        _ => {}
    }
}

/// Rewrites number literals written with an exponent (`1.5e3`), which DataFusion cannot read
/// as decimals: to plain decimal digits when they fit a NUMERIC (PostgreSQL reads them as
/// numeric too), else to a `DOUBLE PRECISION` cast.
pub fn expand_exponent_literals(stmt: &mut datafusion::sql::sqlparser::ast::Statement) {
    let _ = datafusion::sql::sqlparser::ast::visit_expressions_mut(stmt, |expr| {
        if let Expr::Value(v) = expr {
            if let Value::Number(text, _) = &v.value {
                if text.contains(['e', 'E']) {
                    *expr = match plain_decimal(text) {
                        Some(plain) => Expr::value(Value::Number(plain, false)),
                        None => Expr::Cast {
                            kind: datafusion::sql::sqlparser::ast::CastKind::Cast,
                            expr: Box::new(Expr::value(Value::SingleQuotedString(text.clone()))),
                            data_type: datafusion::sql::sqlparser::ast::DataType::DoublePrecision,
                            array: false,
                            format: None,
                        },
                    };
                }
            }
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

/// Decimal digits with the point placed after the first `point` of them: `("15", 4)` is
/// `1500`, `("25", -1)` is `0.025`, `("125", 1)` is `1.25`. Shared by every place that turns
/// scientific notation into plain text.
pub fn digits_with_point(digits: &str, point: i64) -> String {
    if point <= 0 {
        format!("0.{}{}", "0".repeat(point.unsigned_abs() as usize), digits)
    } else if point as usize >= digits.len() {
        format!("{}{}", digits, "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    }
}

/// `1.5e3` → `1500`, `25e-3` → `0.025`; `None` past 38 significant positions.
fn plain_decimal(text: &str) -> Option<String> {
    let (mantissa, exponent) = text.split_once(['e', 'E'])?;
    let exponent: i64 = exponent.parse().ok()?;
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{int_part}{frac_part}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let plain = digits_with_point(&digits, int_part.len() as i64 + exponent);
    let significant = plain.trim_start_matches(['0', '.']).len();
    (plain.len() <= 40 && significant <= 38).then_some(plain)
}

fn expr_name(expr: &Expr) -> String {
    match expr {
        Expr::Identifier(ident) => normalize_ident(ident),
        Expr::CompoundIdentifier(parts) => parts.last().map(normalize_ident).unwrap_or_else(unnamed),
        Expr::Function(f) => f
            .name
            .0
            .last()
            .and_then(|p| p.as_ident())
            .map(normalize_ident)
            .unwrap_or_else(unnamed),
        Expr::Nested(inner) => expr_name(inner),
        Expr::Cast { expr: inner, data_type, .. } => match inner.as_ref() {
            Expr::Value(_) => cast_type_name(&data_type.to_string()),
            other => {
                let name = expr_name(other);
                if name == unnamed() {
                    cast_type_name(&data_type.to_string())
                } else {
                    name
                }
            }
        },
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Extract { .. } => "extract".into(),
        Expr::Substring { .. } => "substring".into(),
        Expr::Trim { .. } => "btrim".into(),
        Expr::Position { .. } => "position".into(),
        Expr::Overlay { .. } => "overlay".into(),
        Expr::Ceil { .. } => "ceil".into(),
        Expr::Floor { .. } => "floor".into(),
        Expr::Array(_) => "array".into(),
        Expr::Subquery(q) => match postgres_output_names(q).as_deref() {
            Some([Some(name)]) => name.clone(),
            _ => unnamed(),
        },
        _ => unnamed(),
    }
}

fn unnamed() -> String {
    "?column?".into()
}

/// PostgreSQL names a cast literal by its type's internal name (`'1'::int` is "int4").
fn cast_type_name(sql_type: &str) -> String {
    let lower = sql_type.to_ascii_lowercase();
    let base = lower.split('(').next().unwrap_or(&lower).trim();
    match base {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "real" | "float4" => "float4",
        "double precision" | "float8" | "double" | "float" => "float8",
        "boolean" | "bool" => "bool",
        "decimal" | "numeric" => "numeric",
        "varchar" | "character varying" => "varchar",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        other => return other.to_string(),
    }
    .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::ast::Statement;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn names(sql: &str) -> Option<Vec<Option<String>>> {
        let Statement::Query(q) = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0) else {
            panic!("not a query")
        };
        postgres_output_names(&q)
    }

    #[test]
    fn exponent_literals_become_plain_decimals() {
        assert_eq!(plain_decimal("1.5e3").as_deref(), Some("1500"));
        assert_eq!(plain_decimal("2E2").as_deref(), Some("200"));
        assert_eq!(plain_decimal("25e-3").as_deref(), Some("0.025"));
        assert_eq!(plain_decimal("1e-300"), None);
        assert_eq!(plain_decimal("1.7e308"), None);
    }

    #[test]
    fn repeated_output_names_get_unique_aliases() {
        let Statement::Query(mut q) =
            Parser::parse_sql(&PostgreSqlDialect {}, "SELECT 1, 1, t.id, id, x AS a, y AS a FROM t").unwrap().remove(0)
        else {
            panic!("not a query")
        };
        dedupe_output_names(&mut q);
        assert_eq!(
            q.to_string(),
            r#"SELECT 1 AS "?column? #1", 1 AS "?column? #2", t.id, id AS "id #4", x AS a, y AS "a #6" FROM t"#
        );
    }

    #[test]
    fn names_like_postgres() {
        let n = names("SELECT count(*), t.a, 1 + 1, x AS y, '1'::int, b::text, CASE WHEN a THEN 1 END FROM t").unwrap();
        let expected = ["count", "a", "?column?", "y", "int4", "b", "case"];
        for (got, want) in n.iter().zip(expected) {
            match got {
                Some(g) => assert_eq!(g, want),
                None => assert_eq!(want, ""),
            }
        }
        assert!(names("SELECT * FROM t").is_none());
    }
}
