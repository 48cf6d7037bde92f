//! [`Database`]: the shared state of one Sluice process — catalog, state store, DataFusion
//! context — and the DDL that changes it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::common::config::Dialect;
use datafusion::execution::context::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    self, ColumnOption, CreateTable, Ident, ObjectName, TableConstraint,
};
use datafusion::common::TableReference;
use sluice_storage::{StateStore, WriteBatch};

use crate::catalog::{ColumnDef, TableDef};
use datafusion::execution::FunctionRegistry;

use crate::error::{SqlError, SqlResult};
use crate::pg_semantics::{CheckedBigintSums, PostgresSemantics};
use crate::provider::{StoredTable, TableWriter};
use crate::session::Session;
use crate::types::{SqlType, UTC};

/// The catalog name DataFusion resolves tables in.
pub const CATALOG_NAME: &str = "sluice";
/// The only schema, as in a fresh PostgreSQL database.
pub const SCHEMA_NAME: &str = "public";

/// One Sluice database: every session of the process shares it.
///
/// Why a single shared DataFusion [`SessionContext`]: its catalog holds one provider per table,
/// so a table created by one client is immediately visible to all; sessions clone the context's
/// state to add their own functions and settings without copying the catalog.
pub struct Database {
    ctx: SessionContext,
    writer: Arc<TableWriter>,
    tables: RwLock<BTreeMap<String, Arc<StoredTable>>>,
    next_table_id: AtomicU32,
}

impl Database {
    /// A database over `store`.
    pub fn new(store: Arc<dyn StateStore>) -> Arc<Self> {
        let mut config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG_NAME, SCHEMA_NAME)
            .with_target_partitions(2);
        {
            let options = config.options_mut();
            options.sql_parser.dialect = Dialect::PostgreSQL;
            options.sql_parser.map_string_types_to_utf8view = false;
            options.sql_parser.parse_float_as_decimal = true;
            options.execution.time_zone = Some(UTC.to_string());
        }
        let mut state = SessionContext::new_with_config(config).state();
        // Cannot fail: the rewrite only needs registering.
        let _ = state.register_function_rewrite(Arc::new(PostgresSemantics::new()));
        state.add_analyzer_rule(Arc::new(CheckedBigintSums));
        let ctx = SessionContext::new_with_state(state);
        Arc::new(Self {
            ctx,
            writer: Arc::new(TableWriter::new(store)),
            tables: RwLock::new(BTreeMap::new()),
            next_table_id: AtomicU32::new(1),
        })
    }

    /// A new client session.
    pub fn session(self: &Arc<Self>, database: &str, user: &str, backend_pid: i32) -> Session {
        Session::new(Arc::clone(self), database, user, backend_pid)
    }

    pub(crate) fn context(&self) -> &SessionContext {
        &self.ctx
    }

    pub(crate) fn store(&self) -> &Arc<dyn StateStore> {
        self.writer.store()
    }

    fn tables_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<StoredTable>>> {
        self.tables.read().unwrap_or_else(|p| p.into_inner())
    }

    fn tables_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<StoredTable>>> {
        self.tables.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Names of every table, sorted.
    pub fn table_names(&self) -> Vec<String> {
        self.tables_read().keys().cloned().collect()
    }

    /// The definition of table `name`.
    pub fn table(&self, name: &str) -> Option<Arc<TableDef>> {
        self.tables_read().get(name).map(|t| Arc::clone(t.def()))
    }

    /// Executes `CREATE TABLE`. Returns false if the table existed and `IF NOT EXISTS` was given.
    pub(crate) fn create_table(&self, create: &CreateTable) -> SqlResult<bool> {
        reject_create_options(create)?;
        let name = table_name(&create.name)?;
        let mut tables = self.tables_write();
        if tables.contains_key(&name) {
            if create.if_not_exists {
                return Ok(false);
            }
            return Err(SqlError::DuplicateTable(name));
        }
        let def = table_def(create, name.clone(), self.next_table_id.fetch_add(1, Ordering::Relaxed))?;
        let provider = Arc::new(StoredTable::try_new(Arc::new(def), Arc::clone(&self.writer))?);
        self.ctx.register_table(TableReference::bare(name.clone()), provider.clone())?;
        tables.insert(name, provider);
        Ok(true)
    }

    /// Executes `DROP TABLE` of one table. Returns false if it did not exist and `IF EXISTS`
    /// was given.
    pub(crate) async fn drop_table(&self, name: &ObjectName, if_exists: bool) -> SqlResult<bool> {
        let name = table_name(name)?;
        let removed = {
            let mut tables = self.tables_write();
            let Some(table) = tables.remove(&name) else {
                if if_exists {
                    return Ok(false);
                }
                return Err(SqlError::UndefinedTable(name));
            };
            self.ctx.deregister_table(TableReference::bare(name.clone()))?;
            table
        };
        let state = Arc::clone(removed.state());
        self.writer
            .write(|_| {
                let mut batch = WriteBatch::new();
                state.clear(&mut batch);
                Ok((batch, ()))
            })
            .await?;
        Ok(true)
    }
}

/// Normalizes an identifier as PostgreSQL does: unquoted names fold to lower case.
pub fn normalize_ident(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The normalized table name of `public.t`, `t` or `sluice.public.t`.
pub fn table_name(name: &ObjectName) -> SqlResult<String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| p.as_ident().map(normalize_ident).ok_or_else(|| SqlError::Syntax(format!("invalid name {name}"))))
        .collect::<SqlResult<_>>()?;
    match parts.as_slice() {
        [table] => Ok(table.clone()),
        [schema, table] if schema == SCHEMA_NAME => Ok(table.clone()),
        [catalog, schema, table] if schema == SCHEMA_NAME && catalog == CATALOG_NAME => Ok(table.clone()),
        _ => Err(SqlError::unsupported(format_args!("schemas other than \"{SCHEMA_NAME}\" (in {name})"))),
    }
}

fn reject_create_options(create: &CreateTable) -> SqlResult<()> {
    let unsupported = |what: &str| Err(SqlError::unsupported(what));
    if create.or_replace {
        return unsupported("CREATE OR REPLACE TABLE");
    }
    if create.temporary {
        return unsupported("CREATE TEMPORARY TABLE");
    }
    if create.external {
        return unsupported("CREATE EXTERNAL TABLE");
    }
    if create.query.is_some() {
        return unsupported("CREATE TABLE AS");
    }
    if create.like.is_some() || create.clone.is_some() {
        return unsupported("CREATE TABLE LIKE/CLONE");
    }
    Ok(())
}

fn table_def(create: &CreateTable, name: String, id: u32) -> SqlResult<TableDef> {
    if create.columns.is_empty() {
        return Err(SqlError::InvalidDefinition(format!("table \"{name}\" must have at least one column")));
    }
    let mut columns: Vec<ColumnDef> = Vec::with_capacity(create.columns.len());
    let mut primary_key: Option<Vec<usize>> = None;
    let mut set_primary_key = |key: Vec<usize>| -> SqlResult<()> {
        if primary_key.replace(key).is_some() {
            return Err(SqlError::InvalidDefinition(format!(
                "multiple primary keys for table \"{name}\" are not allowed"
            )));
        }
        Ok(())
    };
    for (index, col) in create.columns.iter().enumerate() {
        let col_name = normalize_ident(&col.name);
        if columns.iter().any(|c| c.name == col_name) {
            return Err(SqlError::DuplicateColumn(col_name));
        }
        let sql_type = SqlType::from_ast(&col.data_type)?;
        let mut not_null = false;
        for option in &col.options {
            match &option.option {
                ColumnOption::Null => not_null = false,
                ColumnOption::NotNull => not_null = true,
                ColumnOption::PrimaryKey(_) => {
                    not_null = true;
                    set_primary_key(vec![index])?;
                }
                other => {
                    return Err(SqlError::unsupported(format_args!("column option {other}")));
                }
            }
        }
        columns.push(ColumnDef { name: col_name, sql_type, not_null });
    }
    for constraint in &create.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                let mut key = Vec::with_capacity(pk.columns.len());
                for c in &pk.columns {
                    let ast::Expr::Identifier(ident) = &c.column.expr else {
                        return Err(SqlError::unsupported(format_args!("primary key on expression {}", c.column.expr)));
                    };
                    let col_name = normalize_ident(ident);
                    let position = columns.iter().position(|c| c.name == col_name).ok_or_else(|| {
                        SqlError::UndefinedColumn(format!("\"{col_name}\" named in key"))
                    })?;
                    if key.contains(&position) {
                        return Err(SqlError::DuplicateColumn(col_name));
                    }
                    key.push(position);
                }
                for i in &key {
                    columns[*i].not_null = true;
                }
                set_primary_key(key)?;
            }
            other => return Err(SqlError::unsupported(format_args!("table constraint {other}"))),
        }
    }
    if let Some(key) = &primary_key {
        if let Some(bad) = key.iter().find(|i| matches!(columns[**i].sql_type, SqlType::Jsonb)) {
            return Err(SqlError::InvalidDefinition(format!(
                "column \"{}\" of type jsonb cannot be part of a primary key",
                columns[*bad].name
            )));
        }
    }
    Ok(TableDef { id, name, columns, primary_key: primary_key.unwrap_or_default() })
}
