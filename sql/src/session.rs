//! [`Session`]: one client connection's view of the database — its settings, its transaction
//! state — and the statement dispatcher.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
use datafusion::dataframe::DataFrame;
use datafusion::execution::context::SessionContext;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{self, Expr, ObjectType, Set, Statement, Value, Visit};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::Token;
use futures::{StreamExt, TryStreamExt};

use crate::database::{normalize_ident, table_name, Database, RelationKind};
use crate::error::{SqlError, SqlResult};
use crate::functions::session_functions;
use crate::naming::{dedupe_output_names, expand_exponent_literals, postgres_output_names};
use crate::params::{bind_parameters, declared_parameter_types, parameter_count, BoundParam};
use crate::provider::ReadSnapshot;
use crate::statement::{parse_sluice_statement, ObjectKind, ParsedStatement};

/// What a statement produced.
pub enum StatementOutput {
    /// Rows, streamed.
    Rows {
        /// Column names and types.
        schema: SchemaRef,
        /// The rows.
        stream: SendableRecordBatchStream,
    },
    /// A command completed; `tag` is its PostgreSQL command tag (`INSERT`, `CREATE TABLE`, ...).
    Command {
        /// The command word(s).
        tag: String,
        /// Rows affected, for commands that report a count.
        rows: Option<u64>,
    },
}

/// How a statement changed the transaction state, so the wire layer can report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionChange {
    /// No change.
    None,
    /// A transaction block started.
    Began,
    /// The transaction block ended.
    Ended,
}

/// The outcome of one statement: its output, warnings for the client, transaction change.
pub struct StatementOutcome {
    /// Rows or a command tag.
    pub output: StatementOutput,
    /// Warnings to send as NOTICE messages before the result.
    pub notices: Vec<String>,
    /// Transaction block transitions.
    pub transaction: TransactionChange,
}

impl StatementOutcome {
    /// Computes all rows now (instead of when the client reads them), so that an error while
    /// computing them is reported by this call.
    pub async fn materialize(self) -> SqlResult<Self> {
        let output = match self.output {
            StatementOutput::Rows { schema, stream } => {
                let batches: Vec<RecordBatch> = stream.try_collect().await?;
                let replay = futures::stream::iter(batches.into_iter().map(Ok));
                StatementOutput::Rows {
                    schema: Arc::clone(&schema),
                    stream: Box::pin(RecordBatchStreamAdapter::new(schema, replay)),
                }
            }
            command => command,
        };
        Ok(Self { output, ..self })
    }

    fn command(tag: impl Into<String>, rows: Option<u64>) -> Self {
        Self { output: StatementOutput::Command { tag: tag.into(), rows }, notices: vec![], transaction: TransactionChange::None }
    }
}

/// What a statement would return, learned without running it (extended protocol Describe).
#[derive(Debug, Clone)]
pub struct StatementDescription {
    /// The type the planner infers for each `$n` (as a field, so a JSONB target shows), if any.
    pub parameter_types: Vec<Option<FieldRef>>,
    /// The result columns, or `None` for a statement that returns no rows.
    pub columns: Option<SchemaRef>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxnState {
    Idle,
    InBlock { writes: u32 },
    Failed,
}

/// One client's session.
///
/// Transactions: Sluice commits every statement when it runs (autocommit). `BEGIN`/`COMMIT`
/// are accepted so that drivers work, and a failed statement inside a block aborts the block
/// as in PostgreSQL (25P02 until `ROLLBACK`); a `ROLLBACK` cannot undo earlier statements of
/// the block and says so in a WARNING.
pub struct Session {
    db: Arc<Database>,
    ctx: SessionContext,
    settings: BTreeMap<String, String>,
    txn: TxnState,
    /// Set by a result stream that failed after its statement returned, so that the failure
    /// still aborts the transaction block.
    stream_failed: Arc<AtomicBool>,
}

fn default_settings() -> BTreeMap<String, String> {
    [
        ("application_name", ""),
        ("client_encoding", "UTF8"),
        ("datestyle", "ISO, MDY"),
        ("default_transaction_isolation", "read committed"),
        ("default_transaction_read_only", "off"),
        ("extra_float_digits", "1"),
        ("integer_datetimes", "on"),
        ("intervalstyle", "postgres"),
        ("is_superuser", "on"),
        ("lc_collate", "C.UTF-8"),
        ("max_identifier_length", "63"),
        ("search_path", "\"$user\", public"),
        ("server_encoding", "UTF8"),
        ("server_version", "15.0"),
        ("server_version_num", "150000"),
        ("standard_conforming_strings", "on"),
        ("statement_timeout", "0"),
        ("timezone", "UTC"),
        ("transaction_isolation", "read committed"),
        ("transaction_read_only", "off"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Settings drivers and tools set that Sluice accepts and keeps without acting on them (beyond
/// the ones it reports in `default_settings`). Anything else is an error, as in PostgreSQL;
/// names with a dot are custom settings, which PostgreSQL accepts too.
const ACCEPTED_SETTINGS: &[&str] = &[
    "bytea_output", "client_min_messages", "geqo", "idle_in_transaction_session_timeout", "jit",
    "lock_timeout", "log_statement", "row_security", "search_path", "synchronous_commit",
    "work_mem", "enable_seqscan", "maintenance_work_mem", "xmloption", "names",
];

/// Time zone names that mean UTC: the only zone Sluice shows timestamps in so far.
fn is_utc(zone: &str) -> bool {
    matches!(
        zone.trim().to_ascii_lowercase().as_str(),
        "utc" | "gmt" | "z" | "zulu" | "etc/utc" | "etc/gmt" | "universal" | "+00:00" | "00:00" | "0" | "+0" | "default" | "local"
    )
}

fn single_column(name: &str, values: Vec<String>) -> SqlResult<StatementOutput> {
    let schema = Arc::new(Schema::new(vec![Field::new(name, DataType::Utf8, true)]));
    let column: ArrayRef = Arc::new(StringArray::from(values));
    rows_output(schema, vec![column])
}

fn rows_output(schema: SchemaRef, columns: Vec<ArrayRef>) -> SqlResult<StatementOutput> {
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
    let stream = futures::stream::iter(vec![Ok(batch)]);
    Ok(StatementOutput::Rows { schema: Arc::clone(&schema), stream: Box::pin(RecordBatchStreamAdapter::new(schema, stream)) })
}

fn show_columns_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("Name", DataType::Utf8, false),
        Field::new("Type", DataType::Utf8, false),
        Field::new("Nullable", DataType::Boolean, false),
        Field::new("Primary Key", DataType::Boolean, false),
    ]))
}

fn setting_value(values: &[Expr]) -> String {
    values
        .iter()
        .map(|v| match v {
            Expr::Value(v) => match &v.value {
                Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                other => other.to_string(),
            },
            Expr::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parses a string of one or more SQL statements.
pub fn parse_statements(sql: &str) -> SqlResult<Vec<ParsedStatement>> {
    let syntax_error = |e: ParserError| {
        if let Some(construct) = planned_streaming_statement(sql) {
            return SqlError::unsupported(construct);
        }
        let msg = e.to_string();
        let msg = msg.trim_start_matches("sql parser error: ");
        if msg.contains("is not supported yet") {
            return SqlError::Unsupported(msg.to_string());
        }
        SqlError::Syntax(format!("syntax error: {msg}"))
    };
    let dialect = PostgreSqlDialect {};
    let mut parser =
        Parser::new(&dialect).with_recursion_limit(MAX_PARSER_RECURSION).try_with_sql(sql).map_err(syntax_error)?;
    let mut statements = Vec::new();
    let mut expecting_delimiter = false;
    loop {
        while parser.consume_token(&Token::SemiColon) {
            expecting_delimiter = false;
        }
        let next = parser.peek_token();
        if next.token == Token::EOF {
            break;
        }
        if expecting_delimiter {
            return Err(syntax_error(ParserError::ParserError(format!("expected end of statement, found: {next}"))));
        }
        let stmt = match parse_sluice_statement(&mut parser).map_err(syntax_error)? {
            Some(stmt) => stmt,
            None => ParsedStatement::Sql(parser.parse_statement().map_err(syntax_error)?),
        };
        statements.push(stmt);
        expecting_delimiter = true;
    }
    for stmt in &statements {
        if let ParsedStatement::Sql(stmt) = stmt {
            if let ControlFlow::Break(e) = stmt.visit(&mut StatementGuard::default()) {
                return Err(e);
            }
        }
    }
    Ok(statements)
}

/// The streaming statements of Sluice's SQL surface (DESIGN.md) that later issues implement: a
/// user who types them gets 0A000 naming the statement, not a syntax error.
fn planned_streaming_statement(sql: &str) -> Option<&'static str> {
    const PLANNED: &[(&[&str], &str)] = &[
        (&["SUBSCRIBE"], "SUBSCRIBE"),
    ];
    let words: Vec<String> = sql.split_whitespace().take(4).map(|w| w.trim_end_matches(';').to_ascii_uppercase()).collect();
    PLANNED
        .iter()
        .find(|(prefix, _)| prefix.len() <= words.len() && prefix.iter().zip(&words).all(|(p, w)| *p == w.as_str()))
        .map(|(_, name)| *name)
}

/// How deeply expressions (and subqueries) may nest. Planning recurses over the tree, so an
/// unbounded depth could exhaust a thread's stack and take the whole server down; PostgreSQL
/// has the same kind of limit (`max_stack_depth`).
pub const MAX_EXPRESSION_DEPTH: usize = 1000;

/// The parser's own recursion limit (nested parentheses and subqueries); sqlparser's default
/// of 50 rejects queries PostgreSQL accepts.
const MAX_PARSER_RECURSION: usize = 400;

/// Checks a parsed statement before anything recurses over it: nesting depth, and constructs
/// whose DataFusion meaning differs from PostgreSQL's.
#[derive(Default)]
struct StatementGuard {
    depth: usize,
}

impl ast::Visitor for StatementGuard {
    type Break = SqlError;

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<SqlError> {
        self.depth += 1;
        if self.depth > MAX_EXPRESSION_DEPTH {
            return ControlFlow::Break(SqlError::TooComplex(format!(
                "statement too complex: expressions nest more than {MAX_EXPRESSION_DEPTH} levels deep"
            )));
        }
        match expr {
            // DataFusion's SIMILAR TO is a plain regex match, not SQL's anchored pattern.
            Expr::SimilarTo { .. } => ControlFlow::Break(SqlError::unsupported("SIMILAR TO")),
            // In PostgreSQL a set-returning function in an expression yields rows; DataFusion's
            // generate_series there yields one array.
            Expr::Function(f) if f.name.to_string().eq_ignore_ascii_case("generate_series") => ControlFlow::Break(
                SqlError::unsupported("generate_series in an expression (use it in FROM)"),
            ),
            _ => ControlFlow::Continue(()),
        }
    }

    fn post_visit_expr(&mut self, _expr: &Expr) -> ControlFlow<SqlError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &ast::Query) -> ControlFlow<SqlError> {
        if let ControlFlow::Break(e) = check_set_operations(&query.body) {
            return ControlFlow::Break(e);
        }
        self.pre_visit_expr(&Expr::Value(Value::Null.into()))
    }

    fn post_visit_query(&mut self, _query: &ast::Query) -> ControlFlow<SqlError> {
        self.depth -= 1;
        ControlFlow::Continue(())
    }
}

impl Session {
    pub(crate) fn new(db: Arc<Database>, database: &str, user: &str, backend_pid: i32) -> Self {
        let ctx = SessionContext::new_with_state(db.context().state());
        for f in session_functions(database, user, backend_pid) {
            ctx.register_udf(f);
        }
        Self { db, ctx, settings: default_settings(), txn: TxnState::Idle, stream_failed: Arc::default() }
    }

    /// The database this session belongs to.
    pub fn database(&self) -> &Arc<Database> {
        &self.db
    }

    /// Executes one statement.
    pub async fn execute(&mut self, stmt: &ParsedStatement) -> SqlResult<StatementOutcome> {
        if self.stream_failed.swap(false, Ordering::Relaxed) && matches!(self.txn, TxnState::InBlock { .. }) {
            self.txn = TxnState::Failed;
        }
        let is_txn_end = matches!(stmt, ParsedStatement::Sql(Statement::Commit { .. } | Statement::Rollback { .. }));
        if self.txn == TxnState::Failed && !is_txn_end {
            return Err(SqlError::InvalidTransactionState(
                "current transaction is aborted, commands ignored until end of transaction block".into(),
            ));
        }
        let result = match stmt {
            ParsedStatement::Sql(sql) => self.dispatch(sql).await,
            other => self.dispatch_streaming(other).await,
        };
        let writes_something = matches!(
            stmt,
            ParsedStatement::Sql(
                Statement::Insert(_)
                    | Statement::Update(_)
                    | Statement::Delete(_)
                    | Statement::CreateTable(_)
                    | Statement::CreateView(_)
                    | Statement::Drop { .. }
            ) | ParsedStatement::CreateSource(_)
                | ParsedStatement::CreateTable(_)
                | ParsedStatement::DropSource { .. }
                | ParsedStatement::CreateSink(_)
                | ParsedStatement::DropSink { .. }
        );
        match (&result, self.txn) {
            (Err(_), TxnState::InBlock { .. }) => self.txn = TxnState::Failed,
            (Ok(outcome), TxnState::InBlock { writes }) if outcome.transaction == TransactionChange::None && writes_something => {
                self.txn = TxnState::InBlock { writes: writes + 1 };
            }
            _ => {}
        }
        result
    }

    async fn dispatch_streaming(&mut self, stmt: &ParsedStatement) -> SqlResult<StatementOutcome> {
        match stmt {
            ParsedStatement::Sql(stmt) => self.dispatch(stmt).await,
            ParsedStatement::Flush => {
                self.db.flush().await?;
                Ok(StatementOutcome::command("FLUSH", None))
            }
            ParsedStatement::CreateTable(table) => {
                let mut outcome = StatementOutcome::command("CREATE TABLE", None);
                if !self.db.create_table(&table.create, table.watermark.as_ref(), table.append_only)? {
                    outcome.notices.push(format!("relation \"{}\" already exists, skipping", table_name(&table.create.name)?));
                }
                Ok(outcome)
            }
            ParsedStatement::CreateSource(create) => {
                let mut outcome = StatementOutcome::command("CREATE SOURCE", None);
                if !self.db.create_source(create).await? {
                    outcome.notices.push(format!("relation \"{}\" already exists, skipping", table_name(&create.name)?));
                }
                Ok(outcome)
            }
            ParsedStatement::ShowObjects(kind) => {
                let names = match kind {
                    ObjectKind::Sources => self.db.source_names(),
                    ObjectKind::MaterializedViews => self.db.view_names(),
                    ObjectKind::Sinks => self.db.sink_names(),
                };
                Ok(StatementOutcome { output: single_column("Name", names)?, notices: vec![], transaction: TransactionChange::None })
            }
            ParsedStatement::ShowHistory(name) => {
                let name = table_name(name)?;
                if !self.db.has_source(&name) {
                    return Err(SqlError::UndefinedTable(format!("source \"{name}\"")));
                }
                let query = crate::history_status::show_history_query(&name);
                let statements = crate::parse_statements(&query)?;
                let [statement] = statements.as_slice() else {
                    return Err(SqlError::Internal(format!("SHOW HISTORY made {} statements", statements.len())));
                };
                Box::pin(self.execute(statement)).await
            }
            ParsedStatement::CreateSink(create) => {
                let mut outcome = StatementOutcome::command("CREATE SINK", None);
                if !self.db.create_sink(create).await? {
                    outcome.notices.push(format!("sink \"{}\" already exists, skipping", table_name(&create.name)?));
                }
                Ok(outcome)
            }
            ParsedStatement::DropSink { names, if_exists } => {
                let mut outcome = StatementOutcome::command("DROP SINK", None);
                for name in names {
                    outcome.notices.extend(self.db.drop_sink(name, *if_exists).await?);
                }
                Ok(outcome)
            }
            ParsedStatement::DropSource { names, if_exists, cascade } => {
                let mut outcome = StatementOutcome::command("DROP SOURCE", None);
                for name in names {
                    outcome.notices.extend(self.db.drop_relation(RelationKind::Source, name, *if_exists, *cascade).await?);
                }
                Ok(outcome)
            }
        }
    }

    /// The query of a materialized view planned by DataFusion (optimized) and its column
    /// names: the view's column list, else PostgreSQL's output names.
    /// Also returns whether the view emits on window close (`EMIT ON WINDOW CLOSE`, stored as
    /// the option `emit = 'on_window_close'`).
    pub(crate) async fn plan_view_query(&self, create: &ast::CreateView) -> SqlResult<(String, LogicalPlan, Vec<String>, bool)> {
        if create.or_replace || create.or_alter {
            return Err(SqlError::unsupported("CREATE OR REPLACE MATERIALIZED VIEW"));
        }
        let emit_on_close = view_emit_option(&create.options)?;
        let name = table_name(&create.name)?;
        let query = Statement::Query(create.query.clone());
        let state = self.statement_state();
        let unoptimized = self.plan(&state, &rewrite_for_planning(&query)).await?;
        crate::stream_planner::check_deterministic(&unoptimized)?;
        let plan = state.optimize(&unoptimized)?;
        let width = plan.schema().fields().len();
        let mut names: Vec<String> = plan.schema().fields().iter().map(|f| f.name().clone()).collect();
        if let Some(pg_names) = postgres_output_names(&create.query) {
            if pg_names.len() == width {
                for (slot, name) in names.iter_mut().zip(pg_names) {
                    if let Some(name) = name {
                        *slot = name;
                    }
                }
            }
        }
        if !create.columns.is_empty() {
            if create.columns.len() > width {
                return Err(SqlError::Syntax(format!(
                    "CREATE MATERIALIZED VIEW specifies {} column names, but the query has {width} columns",
                    create.columns.len()
                )));
            }
            for (slot, column) in names.iter_mut().zip(&create.columns) {
                *slot = normalize_ident(&column.name);
            }
        }
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(SqlError::DuplicateColumn(name.clone()));
            }
        }
        Ok((name, plan, names, emit_on_close))
    }

    /// Executes `stmt` with its `$n` parameters bound to `params`.
    pub async fn execute_with_params(&mut self, stmt: &ParsedStatement, params: &[BoundParam]) -> SqlResult<StatementOutcome> {
        let ParsedStatement::Sql(sql) = stmt else { return self.execute(stmt).await };
        if parameter_count(sql) == 0 && params.is_empty() {
            return self.execute(stmt).await;
        }
        let bound = bind_parameters(sql, params)?;
        self.execute(&ParsedStatement::Sql(bound)).await
    }

    async fn dispatch(&mut self, stmt: &Statement) -> SqlResult<StatementOutcome> {
        match stmt {
            Statement::Query(_) => self.run_datafusion(stmt).await,
            Statement::Insert(insert) => {
                if insert.on.is_some() || insert.returning.is_some() {
                    return Err(SqlError::unsupported("INSERT ... ON CONFLICT / RETURNING"));
                }
                match self.fill_insert_columns(insert)? {
                    Some(completed) => self.run_datafusion(&Statement::Insert(completed)).await,
                    None => self.run_datafusion(stmt).await,
                }
            }
            Statement::Update(_) | Statement::Delete(_) => {
                check_dml_shape(stmt)?;
                self.run_datafusion(stmt).await
            }
            Statement::Explain { statement, .. } if matches!(statement.as_ref(), Statement::CreateView(c) if c.materialized) => {
                let Statement::CreateView(create) = statement.as_ref() else { return Err(SqlError::Internal("explain".into())) };
                let (name, plan, names, emit_on_close) = self.plan_view_query(create).await?;
                let text = self.db.explain_view(&name, &plan, &names, emit_on_close)?;
                let lines: Vec<String> = text.lines().map(str::to_string).collect();
                Ok(StatementOutcome { output: single_column("QUERY PLAN", lines)?, notices: vec![], transaction: TransactionChange::None })
            }
            Statement::CreateView(create) if create.materialized => {
                let (name, plan, names, emit_on_close) = self.plan_view_query(create).await?;
                let mut outcome = StatementOutcome::command("CREATE MATERIALIZED VIEW", None);
                if !self.db.create_view(&name, &stmt.to_string(), &plan, &names, create.if_not_exists, emit_on_close).await? {
                    outcome.notices.push(format!("relation \"{name}\" already exists, skipping"));
                }
                Ok(outcome)
            }
            // Drivers (psycopg) release their prepared statements this way; Sluice keeps none
            // beyond the connection's portals, so there is nothing to free.
            Statement::Deallocate { .. } => Ok(StatementOutcome::command("DEALLOCATE", None)),
            Statement::CreateView(_) => {
                Err(SqlError::unsupported("CREATE VIEW (Sluice keeps views up to date: use CREATE MATERIALIZED VIEW)"))
            }
            Statement::Explain { statement, .. } => {
                if !matches!(statement.as_ref(), Statement::Query(_)) {
                    return Err(SqlError::unsupported("EXPLAIN of a statement other than a query"));
                }
                self.run_datafusion(stmt).await
            }
            Statement::CreateTable(create) => {
                let mut outcome = StatementOutcome::command("CREATE TABLE", None);
                if !self.db.create_table(create, None, false)? {
                    outcome.notices.push(format!("relation \"{}\" already exists, skipping", table_name(&create.name)?));
                }
                Ok(outcome)
            }
            Statement::Drop { object_type, if_exists, names, cascade, .. } => {
                let (kind, tag) = match object_type {
                    ObjectType::Table => (RelationKind::Table, "DROP TABLE"),
                    ObjectType::MaterializedView => (RelationKind::MaterializedView, "DROP MATERIALIZED VIEW"),
                    other => return Err(SqlError::unsupported(format_args!("DROP {other}"))),
                };
                let mut outcome = StatementOutcome::command(tag, None);
                for name in names {
                    outcome.notices.extend(self.db.drop_relation(kind, name, *if_exists, *cascade).await?);
                }
                Ok(outcome)
            }
            Statement::ShowTables { .. } => {
                Ok(StatementOutcome { output: single_column("Name", self.db.table_names())?, notices: vec![], transaction: TransactionChange::None })
            }
            Statement::ShowColumns { show_options, .. } => {
                let name = show_options
                    .show_in
                    .as_ref()
                    .and_then(|s| s.parent_name.as_ref())
                    .ok_or_else(|| SqlError::Syntax("SHOW COLUMNS needs FROM <table>".into()))?;
                self.describe_table(name)
            }
            Statement::ExplainTable { table_name, .. } => self.describe_table(table_name),
            Statement::ShowVariable { variable } => self.show_variable(variable),
            Statement::Set(set) => self.set(set),
            Statement::StartTransaction { .. } => {
                let mut outcome = StatementOutcome::command("BEGIN", None);
                if self.txn == TxnState::Idle {
                    self.txn = TxnState::InBlock { writes: 0 };
                    outcome.transaction = TransactionChange::Began;
                } else {
                    outcome.notices.push("there is already a transaction in progress".into());
                }
                Ok(outcome)
            }
            Statement::Commit { .. } | Statement::Rollback { .. } => {
                let rollback = matches!(stmt, Statement::Rollback { .. }) || self.txn == TxnState::Failed;
                let mut outcome = StatementOutcome::command(if rollback { "ROLLBACK" } else { "COMMIT" }, None);
                match self.txn {
                    TxnState::Idle => outcome.notices.push("there is no transaction in progress".into()),
                    TxnState::InBlock { writes } if rollback && writes > 0 => outcome.notices.push(format!(
                        "{writes} statement(s) of this transaction were already committed and are not rolled back: Sluice commits each statement when it runs"
                    )),
                    _ => {}
                }
                self.txn = TxnState::Idle;
                outcome.transaction = TransactionChange::Ended;
                Ok(outcome)
            }
            other => Err(SqlError::unsupported(statement_kind(other))),
        }
    }

    /// PostgreSQL lets `INSERT INTO t VALUES (...)` give fewer values than `t` has columns:
    /// they fill the leading columns and the rest are NULL. DataFusion wants all of them, so the
    /// leading columns are named explicitly.
    fn fill_insert_columns(&self, insert: &ast::Insert) -> SqlResult<Option<ast::Insert>> {
        let (ast::TableObject::TableName(name), true, Some(source)) =
            (&insert.table, insert.columns.is_empty(), &insert.source)
        else {
            return Ok(None);
        };
        let ast::SetExpr::Values(values) = source.body.as_ref() else { return Ok(None) };
        let width = values.rows.iter().map(|row| row.content.len()).max().unwrap_or(0);
        let Some(def) = self.db.table(&table_name(name)?) else { return Ok(None) };
        if width == 0 || width >= def.columns.len() {
            return Ok(None);
        }
        let mut completed = insert.clone();
        completed.columns = def.columns[..width]
            .iter()
            .map(|c| ast::ObjectName::from(vec![ast::Ident::with_quote('"', c.name.clone())]))
            .collect();
        Ok(Some(completed))
    }

    fn describe_table(&self, name: &ast::ObjectName) -> SqlResult<StatementOutcome> {
        let name = table_name(name)?;
        let computed = self.db.view(&name).map(|v| Arc::clone(&v.schema)).or_else(|| self.db.source_schema(&name));
        if let Some(schema) = computed {
            let fields = schema.fields();
            let output = rows_output(
                show_columns_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(fields.iter().map(|f| f.name().clone()))),
                    Arc::new(StringArray::from_iter_values(fields.iter().map(|f| crate::types::field_type_name(f)))),
                    Arc::new(BooleanArray::from(vec![true; fields.len()])),
                    Arc::new(BooleanArray::from(vec![false; fields.len()])),
                ],
            )?;
            return Ok(StatementOutcome { output, notices: vec![], transaction: TransactionChange::None });
        }
        let def = self.db.table(&name).ok_or(SqlError::UndefinedTable(name))?;
        let names: Vec<String> = def.columns.iter().map(|c| c.name.clone()).collect();
        let types: Vec<String> = def.columns.iter().map(|c| c.sql_type.display_name()).collect();
        let nullable: Vec<bool> = def.columns.iter().map(|c| !c.not_null).collect();
        let pk: Vec<bool> = (0..def.columns.len()).map(|i| def.primary_key.contains(&i)).collect();
        let output = rows_output(
            show_columns_schema(),
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(types)),
                Arc::new(BooleanArray::from(nullable)),
                Arc::new(BooleanArray::from(pk)),
            ],
        )?;
        Ok(StatementOutcome { output, notices: vec![], transaction: TransactionChange::None })
    }

    fn show_variable(&self, variable: &[ast::Ident]) -> SqlResult<StatementOutcome> {
        let name = variable.iter().map(normalize_ident).collect::<Vec<_>>().join(" ");
        let output = match name.as_str() {
            "all" => {
                let schema = Arc::new(Schema::new(vec![
                    Field::new("name", DataType::Utf8, false),
                    Field::new("setting", DataType::Utf8, false),
                ]));
                let names: Vec<String> = self.settings.keys().cloned().collect();
                let values: Vec<String> = self.settings.values().cloned().collect();
                rows_output(schema, vec![Arc::new(StringArray::from(names)), Arc::new(StringArray::from(values))])?
            }
            _ => {
                let key = match name.as_str() {
                    "transaction isolation level" => "transaction_isolation".to_string(),
                    "time zone" => "timezone".to_string(),
                    other => other.to_string(),
                };
                let value = self
                    .settings
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| SqlError::UndefinedParameter(format!("unrecognized configuration parameter \"{name}\"")))?;
                single_column(&key, vec![value])?
            }
        };
        Ok(StatementOutcome { output, notices: vec![], transaction: TransactionChange::None })
    }

    fn set(&mut self, set: &Set) -> SqlResult<StatementOutcome> {
        match set {
            Set::SingleAssignment { variable, values, .. } => {
                let name = variable
                    .0
                    .iter()
                    .filter_map(|p| p.as_ident())
                    .map(normalize_ident)
                    .collect::<Vec<_>>()
                    .join(".");
                let value = setting_value(values);
                if !self.settings.contains_key(&name) && !ACCEPTED_SETTINGS.contains(&name.as_str()) && !name.contains('.') {
                    return Err(SqlError::UndefinedParameter(format!("unrecognized configuration parameter \"{name}\"")));
                }
                if name == "timezone" && !is_utc(&value) {
                    return Err(SqlError::unsupported(format_args!("time zone '{value}' (Sluice shows timestamps in UTC)")));
                }
                self.settings.insert(name, value);
            }
            Set::SetTimeZone { value, .. } => {
                let value = setting_value(std::slice::from_ref(value));
                if !is_utc(&value) {
                    return Err(SqlError::unsupported(format_args!("time zone '{value}' (Sluice shows timestamps in UTC)")));
                }
                self.settings.insert("timezone".into(), "UTC".into());
            }
            Set::SetNames { charset_name, .. } => {
                let charset = charset_name.value.to_ascii_uppercase().replace('-', "");
                if charset != "UTF8" {
                    return Err(SqlError::unsupported(format_args!("client encoding {}", charset_name.value)));
                }
            }
            Set::SetTransaction { .. } | Set::SetSessionParam(_) => {}
            other => return Err(SqlError::unsupported(format_args!("{other}"))),
        }
        Ok(StatementOutcome::command("SET", None))
    }

    /// A copy of the session's DataFusion state that reads every table at one snapshot.
    fn statement_state(&self) -> datafusion::execution::SessionState {
        let mut state = self.ctx.state();
        let snapshot = self.db.store().snapshot();
        state.config_mut().set_extension(Arc::new(ReadSnapshot(snapshot)));
        state
    }

    /// [`Session::statement_state`] for a batch statement (not a view's query): sources read
    /// their history with string columns as `Utf8View` (see `batch_catalog`).
    fn batch_state(&self) -> datafusion::execution::SessionState {
        let state = self.statement_state();
        let catalogs = Arc::new(crate::batch_catalog::BatchCatalogList::new(Arc::clone(state.catalog_list())));
        SessionStateBuilder::new_from_existing(state).with_catalog_list(catalogs).build()
    }

    async fn plan(&self, state: &datafusion::execution::SessionState, stmt: &Statement) -> SqlResult<LogicalPlan> {
        let plan = state.statement_to_plan(DFStatement::Statement(Box::new(stmt.clone()))).await?;
        match &plan {
            LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) | LogicalPlan::Copy(_) => {
                Err(SqlError::unsupported(statement_kind(stmt)))
            }
            _ => Ok(plan),
        }
    }

    async fn run_datafusion(&self, original: &Statement) -> SqlResult<StatementOutcome> {
        let rewritten = rewrite_for_planning(original);
        let stmt = &rewritten;
        let mut state = self.batch_state();
        if matches!(stmt, Statement::Update(_)) {
            // DataFusion hands UPDATE's assignments to the table provider as expressions over the
            // table's columns; common-subexpression elimination would rewrite them to refer to
            // columns of an intermediate projection the provider never sees.
            let rules = state
                .optimizers()
                .iter()
                .filter(|r| r.name() != "common_sub_expression_eliminate")
                .cloned()
                .collect();
            state = SessionStateBuilder::new_from_existing(state).with_optimizer_rules(rules).build();
        }
        let plan = self.plan(&state, stmt).await?;
        let dml_tag = match stmt {
            Statement::Insert(_) => Some("INSERT"),
            Statement::Update(_) => Some("UPDATE"),
            Statement::Delete(_) => Some("DELETE"),
            _ => None,
        };
        let df = DataFrame::new(state, plan);
        if let Some(tag) = dml_tag {
            let batches = df.collect().await?;
            let mut rows = 0u64;
            for batch in &batches {
                if let Some(counts) = batch.column(0).as_any().downcast_ref::<UInt64Array>() {
                    rows += counts.iter().flatten().sum::<u64>();
                }
            }
            return Ok(StatementOutcome::command(tag, Some(rows)));
        }
        let stream = df.execute_stream().await?;
        // The executed plan's schema, not the DataFrame's: analyzer rules (see `pg_semantics`)
        // may change output types.
        let schema = stream.schema();
        let schema = match original {
            Statement::Query(q) => rename_output(&schema, postgres_output_names(q)),
            _ => schema,
        };
        let out_schema = Arc::clone(&schema);
        let failed = Arc::clone(&self.stream_failed);
        let renamed = stream.map(move |batch| {
            let batch = batch.inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
            Ok(RecordBatch::try_new(Arc::clone(&out_schema), batch.columns().to_vec())?)
        });
        Ok(StatementOutcome {
            output: StatementOutput::Rows {
                schema: Arc::clone(&schema),
                stream: Box::pin(RecordBatchStreamAdapter::new(schema, renamed.map_err(|e: datafusion::error::DataFusionError| e))),
            },
            notices: vec![],
            transaction: TransactionChange::None,
        })
    }

    /// Describes `stmt` without running it: parameter types and result columns.
    pub async fn describe(&self, stmt: &ParsedStatement) -> SqlResult<StatementDescription> {
        match stmt {
            ParsedStatement::Sql(Statement::Explain { statement, .. }) if matches!(statement.as_ref(), Statement::CreateView(_)) => {
                Ok(StatementDescription {
                    parameter_types: vec![],
                    columns: Some(Arc::new(Schema::new(vec![Field::new("QUERY PLAN", DataType::Utf8, true)]))),
                })
            }
            ParsedStatement::Sql(stmt) => self.describe_sql(stmt).await,
            ParsedStatement::ShowHistory(name) => {
                let statements = crate::parse_statements(&crate::history_status::show_history_query(&table_name(name)?))?;
                match statements.as_slice() {
                    [ParsedStatement::Sql(stmt)] => self.describe_sql(stmt).await,
                    _ => Err(SqlError::Internal("SHOW HISTORY is not one query".into())),
                }
            }
            ParsedStatement::ShowObjects(_) => Ok(StatementDescription {
                parameter_types: vec![],
                columns: Some(Arc::new(Schema::new(vec![Field::new("Name", DataType::Utf8, true)]))),
            }),
            _ => Ok(StatementDescription { parameter_types: vec![], columns: None }),
        }
    }

    async fn describe_sql(&self, stmt: &Statement) -> SqlResult<StatementDescription> {
        let completed = match stmt {
            Statement::Insert(insert) => self.fill_insert_columns(insert)?.map(Statement::Insert),
            _ => None,
        };
        let stmt = completed.as_ref().unwrap_or(stmt);
        let count = parameter_count(stmt);
        let mut parameter_types = vec![None; count];
        let columns = match stmt {
            Statement::Query(_) | Statement::Insert(_) | Statement::Update(_) | Statement::Delete(_) | Statement::Explain { .. } => {
                check_dml_shape(stmt)?;
                let state = self.batch_state();
                let unanalyzed = self.plan(&state, &rewrite_for_planning(stmt)).await?;
                let parameters = unanalyzed.get_parameter_fields()?;
                // Output types as they will be executed: after the analyzer's rewrites.
                let plan = if matches!(stmt, Statement::Query(_)) { state.optimize(&unanalyzed)? } else { unanalyzed };
                for (name, ty) in parameters {
                    if let Some(i) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) {
                        if i >= 1 && i <= count {
                            parameter_types[i - 1] = ty;
                        }
                    }
                }
                match stmt {
                    Statement::Query(q) => {
                        let schema = Arc::new(plan.schema().as_arrow().clone());
                        Some(rename_output(&schema, postgres_output_names(q)))
                    }
                    Statement::Explain { .. } => Some(Arc::new(plan.schema().as_arrow().clone())),
                    _ => None,
                }
            }
            Statement::ShowTables { .. } => Some(Arc::new(Schema::new(vec![Field::new("Name", DataType::Utf8, true)]))),
            Statement::ShowColumns { .. } | Statement::ExplainTable { .. } => Some(show_columns_schema()),
            Statement::ShowVariable { .. } => {
                // The column name depends on the variable; SHOW is small, so run it.
                let mut probe = Session {
                    db: Arc::clone(&self.db),
                    ctx: self.ctx.clone(),
                    settings: self.settings.clone(),
                    txn: TxnState::Idle,
                    stream_failed: Arc::default(),
                };
                match probe.dispatch(stmt).await?.output {
                    StatementOutput::Rows { schema, .. } => Some(schema),
                    StatementOutput::Command { .. } => None,
                }
            }
            _ => None,
        };
        for (n, sql_type) in declared_parameter_types(stmt) {
            if let Some(slot @ None) = parameter_types.get_mut(n - 1) {
                *slot = Some(Arc::new(sql_type.field("")));
            }
        }
        Ok(StatementDescription { parameter_types, columns })
    }
}

/// DataFusion answers `EXCEPT ALL` and `INTERSECT ALL` as if without `ALL` (wrong duplicate
/// counts); refuse them.
fn check_set_operations(body: &ast::SetExpr) -> ControlFlow<SqlError> {
    if let ast::SetExpr::SetOperation { left, op, set_quantifier, right } = body {
        let all = matches!(set_quantifier, ast::SetQuantifier::All | ast::SetQuantifier::AllByName);
        if all && matches!(op, ast::SetOperator::Except | ast::SetOperator::Intersect | ast::SetOperator::Minus) {
            return ControlFlow::Break(SqlError::unsupported(format_args!("{op} ALL")));
        }
        check_set_operations(left)?;
        check_set_operations(right)?;
    }
    ControlFlow::Continue(())
}

/// The statement DataFusion plans: PostgreSQL constructs it would reject spelled its way.
fn rewrite_for_planning(stmt: &Statement) -> Statement {
    let mut stmt = stmt.clone();
    expand_exponent_literals(&mut stmt);
    key_session_windows(&mut stmt);
    match &mut stmt {
        Statement::Query(q) => dedupe_output_names(q),
        Statement::Insert(insert) => {
            if let Some(source) = insert.source.as_mut() {
                dedupe_output_names(source);
            }
        }
        _ => {}
    }
    stmt
}

/// Rejects UPDATE and DELETE forms whose WHERE the table provider would not see whole:
/// DataFusion turns subqueries into joins and passes the provider only the predicates on the
/// target table, so running them would change the wrong rows.
fn check_dml_shape(stmt: &Statement) -> SqlResult<()> {
    let (selection, joins, returning) = match stmt {
        Statement::Update(u) => (&u.selection, u.from.is_some() || !u.table.joins.is_empty(), u.returning.is_some()),
        Statement::Delete(d) => (&d.selection, d.using.is_some() || d.tables.len() > 1, d.returning.is_some()),
        _ => return Ok(()),
    };
    if joins {
        return Err(SqlError::unsupported("UPDATE ... FROM and DELETE ... USING"));
    }
    if returning {
        return Err(SqlError::unsupported("RETURNING"));
    }
    if let Some(selection) = selection {
        let has_subquery = ast::Visit::visit(selection, &mut SubqueryFinder).is_break();
        if has_subquery {
            return Err(SqlError::unsupported("subqueries in the WHERE of UPDATE or DELETE"));
        }
    }
    Ok(())
}

struct SubqueryFinder;

impl ast::Visitor for SubqueryFinder {
    type Break = ();
    fn pre_visit_query(&mut self, _query: &ast::Query) -> std::ops::ControlFlow<()> {
        std::ops::ControlFlow::Break(())
    }
}

fn rename_output(schema: &SchemaRef, names: Option<Vec<Option<String>>>) -> SchemaRef {
    let Some(names) = names else { return Arc::clone(schema) };
    if names.len() != schema.fields().len() {
        return Arc::clone(schema);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(names)
        .map(|(f, name)| match name {
            Some(name) => f.as_ref().clone().with_name(name),
            None => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// The leading keywords of a statement, to name it in errors (`CREATE VIEW`, `COPY`).
fn statement_kind(stmt: &Statement) -> String {
    let text = stmt.to_string();
    // sqlparser prints keywords in upper case; the first word that is not one ends the kind.
    let keywords: Vec<&str> = text
        .split_whitespace()
        .take(3)
        .take_while(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .collect();
    if keywords.is_empty() {
        "this statement".into()
    } else {
        keywords.join(" ")
    }
}

/// The emit mode a materialized view's `WITH` options ask for: true for
/// `emit = 'on_window_close'` (what `EMIT ON WINDOW CLOSE` becomes), false for none or
/// `'on_update'`. Any other option is refused rather than ignored.
fn view_emit_option(options: &ast::CreateTableOptions) -> SqlResult<bool> {
    let list: &[ast::SqlOption] = match options {
        ast::CreateTableOptions::None => return Ok(false),
        ast::CreateTableOptions::With(list) => list,
        other => return Err(SqlError::unsupported(format_args!("materialized view options {other}"))),
    };
    let mut emit_on_close = false;
    for option in list {
        let ast::SqlOption::KeyValue { key, value } = option else {
            return Err(SqlError::unsupported(format_args!("materialized view option {option}")));
        };
        let value_text = match value {
            ast::Expr::Value(v) => match &v.value {
                ast::Value::SingleQuotedString(s) => s.to_ascii_lowercase(),
                other => other.to_string(),
            },
            other => other.to_string(),
        };
        match (normalize_ident(key).as_str(), value_text.as_str()) {
            (crate::statement::EMIT_OPTION, crate::statement::EMIT_ON_WINDOW_CLOSE) => emit_on_close = true,
            (crate::statement::EMIT_OPTION, "on_update") => emit_on_close = false,
            (crate::statement::EMIT_OPTION, other) => {
                return Err(SqlError::InvalidParameterValue(format!(
                    "materialized view option emit = '{other}' (known: 'on_window_close', 'on_update')"
                )))
            }
            (other, _) => return Err(SqlError::unsupported(format_args!("materialized view option {other}"))),
        }
    }
    Ok(emit_on_close)
}

/// `SESSION(rel, time, gap)` makes sessions per value of the query's other GROUP BY columns
/// (the ones that are not `window_start`/`window_end`): this passes them to the window planner
/// as extra arguments, which only sees the FROM clause.
fn key_session_windows(stmt: &mut Statement) {
    struct Keys;
    impl ast::VisitorMut for Keys {
        type Break = ();
        fn pre_visit_query(&mut self, query: &mut ast::Query) -> ControlFlow<()> {
            if let ast::SetExpr::Select(select) = query.body.as_mut() {
                add_session_keys(select);
            }
            ControlFlow::Continue(())
        }
    }
    let _ = ast::VisitMut::visit(stmt, &mut Keys);
}

fn add_session_keys(select: &mut ast::Select) {
    let ast::GroupByExpr::Expressions(exprs, _) = &select.group_by else { return };
    let is_window = |ident: &ast::Ident| {
        let name = normalize_ident(ident);
        name == crate::window::WINDOW_START || name == crate::window::WINDOW_END
    };
    let keys: Vec<ast::Expr> = exprs
        .iter()
        .filter(|e| match e {
            ast::Expr::Identifier(ident) => !is_window(ident),
            ast::Expr::CompoundIdentifier(parts) => parts.last().is_some_and(|p| !is_window(p)),
            _ => true,
        })
        .cloned()
        .collect();
    for from in &mut select.from {
        if let ast::TableFactor::Table { name, args: Some(args), .. } = &mut from.relation {
            if name.to_string().eq_ignore_ascii_case("session") && args.args.len() == 3 {
                args.args.extend(keys.iter().map(|k| ast::FunctionArg::Unnamed(ast::FunctionArgExpr::Expr(k.clone()))));
            }
        }
    }
}
