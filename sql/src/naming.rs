//! PostgreSQL's names for unaliased output columns.
//!
//! DataFusion names `count(*)` "count(*)" and `1 + 1` "Int64(1) + Int64(1)"; PostgreSQL says
//! "count" and "?column?". Clients and BI tools key on these names, so the top-level output of
//! a query is renamed the way PostgreSQL would name it. Only the result schema changes; the plan
//! keeps DataFusion's (unique) names.

use datafusion::sql::sqlparser::ast::{Expr, Query, SelectItem, SetExpr};

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
            SelectItem::ExprWithAlias { .. } | SelectItem::ExprWithAliases { .. } => names.push(None),
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => return None,
        }
    }
    Some(names)
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
    fn names_like_postgres() {
        let n = names("SELECT count(*), t.a, 1 + 1, x AS y, '1'::int, b::text, CASE WHEN a THEN 1 END FROM t").unwrap();
        let expected = ["count", "a", "?column?", "", "int4", "b", "case"];
        for (got, want) in n.iter().zip(expected) {
            match got {
                Some(g) => assert_eq!(g, want),
                None => assert_eq!(want, ""),
            }
        }
        assert!(names("SELECT * FROM t").is_none());
    }
}
