//! The PostgreSQL wire protocol front end (pgwire): one [`Connection`] per client socket,
//! holding that client's [`Session`].

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use datafusion::arrow::datatypes::FieldRef;
use std::panic::AssertUnwindSafe;

use futures::sink::{Sink, SinkExt};
use futures::FutureExt;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{send_describe_response, ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{
    DescribePortalResponse, DescribeStatementResponse, FieldInfo, QueryResponse, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, Type, DEFAULT_NAME, METADATA_DATABASE, METADATA_USER,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::{NoData, ParameterDescription};
use pgwire::messages::extendedquery::{Describe, TARGET_TYPE_BYTE_STATEMENT};
use pgwire::messages::response::NoticeResponse;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use sluice_sql::{
    parse_statements, BoundParam, ParsedStatement, Database, Session, SqlError, SqlType, StatementOutcome,
    StatementOutput, TransactionChange,
};
use tokio::sync::Mutex;

use crate::encode::{encode_stream, field_infos, parameter_pg_type};
use crate::metrics::Metrics;
use crate::sqlstate::{error_info, to_pg_error};

/// A statement prepared through the extended protocol (`None` for an empty query).
#[derive(Debug, Clone)]
pub struct PreparedStatement {
    ast: ParsedStatement,
}

/// Parses statements for the extended protocol: exactly one statement per Parse.
#[derive(Debug, Default)]
pub struct SluiceQueryParser;

#[async_trait]
impl QueryParser for SluiceQueryParser {
    type Statement = PreparedStatement;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<PreparedStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let mut statements = parse_statements(sql).map_err(|e| to_pg_error(&e))?;
        match statements.len() {
            0 => Ok(None),
            1 => Ok(Some(PreparedStatement { ast: statements.remove(0) })),
            _ => Err(to_pg_error(&SqlError::Syntax("cannot insert multiple commands into a prepared statement".into()))),
        }
    }

    fn get_parameter_types(&self, _stmt: &PreparedStatement) -> PgWireResult<Vec<Type>> {
        // Describe is answered by `Connection::do_describe_*`, which can plan asynchronously.
        Ok(vec![])
    }

    fn get_result_schema(&self, _stmt: &PreparedStatement, _format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        Ok(vec![])
    }
}

/// The state of one client connection.
pub struct Connection {
    db: Arc<Database>,
    session: Mutex<Option<Session>>,
    parser: Arc<SluiceQueryParser>,
    metrics: Arc<Metrics>,
}

/// The pgwire handler factory for one connection.
pub struct ConnectionHandlers(Arc<Connection>);

impl ConnectionHandlers {
    /// Handlers for a new client of `db`.
    pub fn new(db: Arc<Database>, metrics: Arc<Metrics>) -> Self {
        Self(Arc::new(Connection { db, session: Mutex::new(None), parser: Arc::new(SluiceQueryParser), metrics }))
    }
}

impl PgWireServerHandlers for ConnectionHandlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        Arc::clone(&self.0)
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        Arc::clone(&self.0)
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::clone(&self.0)
    }
}

fn server_parameters() -> DefaultServerParameterProvider {
    let mut params = DefaultServerParameterProvider::default();
    params.server_version = format!("15.0 (Sluice {})", env!("CARGO_PKG_VERSION"));
    params.time_zone = "UTC".into();
    params.search_path = "\"$user\", public".into();
    params
}

#[async_trait]
impl StartupHandler for Connection {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // Any user and database are accepted: the server listens on loopback only.
        if let PgWireFrontendMessage::Startup(ref startup) = message {
            protocol_negotiation(client, startup).await?;
            save_startup_parameters_to_metadata(client, startup);
            let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
            client.set_pid_and_secret_key(pid, secret);
            finish_authentication(client, &server_parameters()).await?;
            self.metrics.connection_opened();
        }
        Ok(())
    }
}

impl Connection {
    /// Runs `f` with this connection's session, creating it on first use from the start-up
    /// parameters (user, database).
    ///
    /// A panic inside `f` (a bug, in Sluice or a library) becomes an internal error for this
    /// statement instead of ending the connection.
    async fn with_session<C: ClientInfo, T>(
        &self,
        client: &C,
        f: impl AsyncFnOnce(&mut Session) -> Result<T, SqlError>,
    ) -> Result<T, SqlError> {
        let mut guard = self.session.lock().await;
        let session = guard.get_or_insert_with(|| {
            let meta = client.metadata();
            let user = meta.get(METADATA_USER).cloned().unwrap_or_else(|| "sluice".into());
            let database = meta.get(METADATA_DATABASE).cloned().unwrap_or_else(|| user.clone());
            let (pid, _) = client.pid_and_secret_key();
            self.db.session(&database, &user, pid)
        });
        match AssertUnwindSafe(f(session)).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => Err(SqlError::Internal(format!("the statement panicked: {}", panic_message(&*panic)))),
        }
    }

    fn outcome_response(&self, outcome: StatementOutcome, format: &Format) -> PgWireResult<Response> {
        Ok(match outcome.transaction {
            TransactionChange::Began => Response::TransactionStart(Tag::new("BEGIN")),
            TransactionChange::Ended => match outcome.output {
                StatementOutput::Command { tag, .. } => Response::TransactionEnd(Tag::new(&tag)),
                StatementOutput::Rows { .. } => Response::TransactionEnd(Tag::new("COMMIT")),
            },
            TransactionChange::None => match outcome.output {
                StatementOutput::Command { tag, rows } => {
                    let mut t = Tag::new(&tag);
                    if tag == "INSERT" {
                        t = t.with_oid(0);
                    }
                    if let Some(rows) = rows {
                        t = t.with_rows(rows as usize);
                    }
                    Response::Execution(t)
                }
                StatementOutput::Rows { schema, stream } => {
                    let fields = Arc::new(field_infos(&schema, format)?);
                    Response::Query(QueryResponse::new(Arc::clone(&fields), encode_stream(stream, fields)))
                }
            },
        })
    }
}

/// The message of a caught panic.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

async fn send_notices<C>(client: &mut C, notices: &[String]) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for notice in notices {
        let info = ErrorInfo::new("NOTICE".to_owned(), "00000".to_owned(), notice.clone());
        client.feed(PgWireBackendMessage::NoticeResponse(NoticeResponse::from(info))).await?;
    }
    Ok(())
}

#[async_trait]
impl SimpleQueryHandler for Connection {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = match parse_statements(query) {
            Ok(s) => s,
            Err(e) => {
                self.metrics.statement_failed();
                return Ok(vec![Response::Error(Box::new(error_info(&e)))]);
            }
        };
        let mut responses = Vec::with_capacity(statements.len());
        let count = statements.len();
        for (index, stmt) in statements.into_iter().enumerate() {
            self.metrics.statement_started();
            let outcome = self.with_session(&*client, async |s: &mut Session| s.execute(&stmt).await).await;
            // Rows are streamed after all statements ran; for every statement but the last,
            // collect them now so that an error while computing them stops the ones after it.
            let outcome = match outcome {
                Ok(outcome) if index + 1 < count => outcome.materialize().await,
                other => other,
            };
            match outcome {
                Ok(outcome) => {
                    send_notices(client, &outcome.notices).await?;
                    responses.push(self.outcome_response(outcome, &Format::UnifiedText)?);
                }
                Err(e) => {
                    // As PostgreSQL does, the statements after a failed one are not run.
                    self.metrics.statement_failed();
                    responses.push(Response::Error(Box::new(error_info(&e))));
                    break;
                }
            }
        }
        Ok(responses)
    }
}

/// The declared or inferred PostgreSQL type of each parameter maps to the SQL type its value
/// is cast to.
fn sql_type_of(t: &Type) -> Option<SqlType> {
    Some(match *t {
        Type::BOOL => SqlType::Boolean,
        Type::INT2 => SqlType::SmallInt,
        Type::INT4 | Type::OID => SqlType::Int,
        Type::INT8 => SqlType::BigInt,
        Type::FLOAT4 => SqlType::Real,
        Type::FLOAT8 => SqlType::Double,
        Type::NUMERIC => SqlType::Decimal { precision: 38, scale: 10 },
        Type::DATE => SqlType::Date,
        Type::TIMESTAMP => SqlType::Timestamp,
        Type::TIMESTAMPTZ => SqlType::Timestamptz,
        Type::INTERVAL => SqlType::Interval,
        Type::BYTEA => SqlType::Bytea,
        Type::JSON | Type::JSONB => SqlType::Jsonb,
        _ => return None,
    })
}

fn bad_param(i: usize, detail: impl std::fmt::Display) -> SqlError {
    SqlError::InvalidParameter(format!("parameter ${}: {detail}", i + 1))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Decodes parameter `i` of `portal` to its text form.
fn decode_param(portal: &Portal<PreparedStatement>, i: usize, ty: Option<&Type>) -> Result<Option<String>, SqlError> {
    let Some(Some(raw)) = portal.parameters.get(i) else {
        return Ok(None);
    };
    if !portal.parameter_format.is_binary(i) {
        let text = std::str::from_utf8(raw).map_err(|e| bad_param(i, e))?;
        if ty == Some(&Type::BYTEA) {
            return Ok(Some(match text.strip_prefix("\\x") {
                Some(h) => h.to_ascii_lowercase(),
                None => hex(text.as_bytes()),
            }));
        }
        return Ok(Some(text.to_string()));
    }
    let Some(ty) = ty else {
        return Err(bad_param(i, "a binary parameter needs a declared type"));
    };
    let get = |e: PgWireError| bad_param(i, e);
    let text = match *ty {
        Type::BOOL => portal.parameter::<bool>(i, ty).map_err(get)?.map(|v| v.to_string()),
        Type::INT2 => portal.parameter::<i16>(i, ty).map_err(get)?.map(|v| v.to_string()),
        Type::INT4 => portal.parameter::<i32>(i, ty).map_err(get)?.map(|v| v.to_string()),
        Type::INT8 => portal.parameter::<i64>(i, ty).map_err(get)?.map(|v| v.to_string()),
        Type::FLOAT4 => portal.parameter::<f32>(i, ty).map_err(get)?.map(|v| v.to_string()),
        Type::FLOAT8 => portal.parameter::<f64>(i, ty).map_err(get)?.map(|v| v.to_string()),
        Type::NUMERIC => portal.parameter::<rust_decimal::Decimal>(i, ty).map_err(get)?.map(|v| v.to_string()),
        Type::DATE => portal.parameter::<NaiveDate>(i, ty).map_err(get)?.map(|v| v.format("%Y-%m-%d").to_string()),
        Type::TIMESTAMP => portal
            .parameter::<NaiveDateTime>(i, ty)
            .map_err(get)?
            .map(|v| v.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
        Type::TIMESTAMPTZ => portal
            .parameter::<DateTime<FixedOffset>>(i, ty)
            .map_err(get)?
            .map(|v| v.format("%Y-%m-%d %H:%M:%S%.f%:z").to_string()),
        Type::BYTEA => Some(hex(raw)),
        Type::JSONB => {
            let body = raw.strip_prefix(&[1u8][..]).ok_or_else(|| bad_param(i, "unknown jsonb version"))?;
            Some(String::from_utf8(body.to_vec()).map_err(|e| bad_param(i, e))?)
        }
        Type::JSON | Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UNKNOWN => {
            Some(String::from_utf8(raw.to_vec()).map_err(|e| bad_param(i, e))?)
        }
        Type::INTERVAL => {
            let bytes: [u8; 16] = raw.as_ref().try_into().map_err(|_| bad_param(i, "an interval is 16 bytes"))?;
            let micros = i64::from_be_bytes(bytes[0..8].try_into().map_err(|_| bad_param(i, "interval"))?);
            let days = i32::from_be_bytes(bytes[8..12].try_into().map_err(|_| bad_param(i, "interval"))?);
            let months = i32::from_be_bytes(bytes[12..16].try_into().map_err(|_| bad_param(i, "interval"))?);
            Some(format!("{months} months {days} days {micros} microseconds"))
        }
        ref other => return Err(bad_param(i, format!("binary values of type {} are not supported yet", other.name()))),
    };
    Ok(text)
}

impl Connection {
    async fn bind(&self, session: &Session, portal: &Portal<PreparedStatement>) -> Result<Vec<BoundParam>, SqlError> {
        let stored = &portal.statement;
        let mut inferred: Option<Vec<Option<FieldRef>>> = None;
        let mut params = Vec::with_capacity(portal.parameter_len());
        for i in 0..portal.parameter_len() {
            let mut ty = stored.parameter_types.get(i).cloned().flatten().filter(|t| *t != Type::UNKNOWN);
            if ty.is_none() {
                // Undeclared: use the type the statement implies (as PostgreSQL infers it), so
                // that `LIMIT $1` or `price + $1` get a number, not text.
                if inferred.is_none() {
                    inferred = Some(session.describe(&stored.statement.ast).await?.parameter_types);
                }
                let implied = inferred.as_ref().and_then(|t| t.get(i)).and_then(|t| t.as_ref());
                ty = match implied {
                    Some(field) => Some(parameter_pg_type(Some(field))),
                    None if portal.parameter_format.is_binary(i) => Some(Type::TEXT),
                    None => None,
                };
            }
            let value = decode_param(portal, i, ty.as_ref())?;
            params.push(BoundParam { value, sql_type: ty.as_ref().and_then(sql_type_of) });
        }
        Ok(params)
    }
}

#[async_trait]
impl ExtendedQueryHandler for Connection {
    type Statement = PreparedStatement;
    type QueryParser = SluiceQueryParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::clone(&self.parser)
    }

    /// Describes as PostgreSQL does: a statement that returns no rows answers
    /// ParameterDescription + NoData. (pgwire's default sends an empty RowDescription when the
    /// statement has parameters, which JDBC reads as "this statement returns a result".)
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type == TARGET_TYPE_BYTE_STATEMENT {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            if let Some(Entry::Value(stmt)) = client.portal_store().get_statement(name) {
                let described = self.do_describe_statement(client, &stmt).await?;
                if described.fields.is_empty() {
                    let oids = described.parameters.iter().map(|t| t.oid()).collect();
                    client.send(PgWireBackendMessage::ParameterDescription(ParameterDescription::new(oids))).await?;
                    client.send(PgWireBackendMessage::NoData(NoData::new())).await?;
                } else {
                    send_describe_response(client, &described).await?;
                }
                return Ok(());
            }
        }
        self._on_describe(client, message).await
    }

    async fn do_describe_statement<C>(&self, client: &mut C, target: &StoredStatement<PreparedStatement>) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let described = self.with_session(&*client, async |s: &mut Session| s.describe(&target.statement.ast).await).await;
        let described = described.map_err(|e| to_pg_error(&e))?;
        let params = described
            .parameter_types
            .iter()
            .enumerate()
            .map(|(i, inferred)| match target.parameter_types.get(i).cloned().flatten() {
                Some(declared) if declared != Type::UNKNOWN => declared,
                _ => parameter_pg_type(inferred.as_ref()),
            })
            .collect();
        let fields = match described.columns {
            Some(schema) => field_infos(&schema, &Format::UnifiedText)?,
            None => vec![],
        };
        Ok(DescribeStatementResponse::new(params, fields))
    }

    async fn do_describe_portal<C>(&self, client: &mut C, portal: &Portal<PreparedStatement>) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let described = self
            .with_session(&*client, async |s: &mut Session| {
                let params = self.bind(s, portal).await?;
                let stmt = match &portal.statement.statement.ast {
                    ParsedStatement::Sql(sql) if !params.is_empty() => ParsedStatement::Sql(sluice_sql::bind_parameters(sql, &params)?),
                    other => other.clone(),
                };
                s.describe(&stmt).await
            })
            .await
            .map_err(|e| to_pg_error(&e))?;
        let fields = match described.columns {
            Some(schema) => field_infos(&schema, &portal.result_column_format)?,
            None => vec![],
        };
        Ok(DescribePortalResponse::new(fields))
    }

    async fn do_query<C>(&self, client: &mut C, portal: &Portal<PreparedStatement>, _max_rows: usize) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.metrics.statement_started();
        let outcome = self
            .with_session(&*client, async |s: &mut Session| {
                let params = self.bind(s, portal).await?;
                s.execute_with_params(&portal.statement.statement.ast, &params).await
            })
            .await;
        match outcome {
            Ok(outcome) => {
                send_notices(client, &outcome.notices).await?;
                self.outcome_response(outcome, &portal.result_column_format)
            }
            Err(e) => {
                self.metrics.statement_failed();
                Err(to_pg_error(&e))
            }
        }
    }
}
