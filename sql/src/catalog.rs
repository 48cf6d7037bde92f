//! Table definitions: what `CREATE TABLE` declared, and the storage layout derived from it.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use sluice_storage::TableId;

use crate::types::SqlType;

/// Name of the hidden key column of tables declared without a primary key.
pub const ROW_ID_COLUMN: &str = "_row_id";

/// One column of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name, already normalized (unquoted identifiers lower-cased).
    pub name: String,
    /// Declared type.
    pub sql_type: SqlType,
    /// Whether NULL is refused (NOT NULL, or part of the primary key).
    pub not_null: bool,
}

/// A table as declared: its columns and its key.
///
/// Why the key matters: rows are stored by key, so an INSERT of an existing primary key
/// overwrites the old row (upsert, as RisingWave does). A table without a primary key gets a
/// hidden, ever-increasing `_row_id` key, so duplicate rows stay distinct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    /// The storage table holding the rows.
    pub id: TableId,
    /// Table name, normalized.
    pub name: String,
    /// Columns in declaration order.
    pub columns: Vec<ColumnDef>,
    /// Positions of the primary-key columns; empty means a hidden row id.
    pub primary_key: Vec<usize>,
    /// `APPEND ONLY`: rows are only inserted (UPDATE and DELETE are refused), which is what
    /// lets a watermark promise that old windows never change.
    #[serde(default)]
    pub append_only: bool,
    /// `WATERMARK FOR column AS expr`, if declared.
    #[serde(default)]
    pub watermark: Option<WatermarkDef>,
}

/// `FORMAT <format> ENCODE <encode> (<options>)` of a source or sink, as written (names
/// upper-cased, option keys lower-cased).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatClause {
    /// `PLAIN`, `UPSERT` or `DEBEZIUM`.
    pub format: String,
    /// `JSON`, `CSV` or `LOG`.
    pub encode: String,
    /// The encoding's options.
    pub options: std::collections::BTreeMap<String, String>,
}

/// A declared watermark: the event-time column and the expression, as SQL text (parsed again
/// against the columns when the table or source is loaded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatermarkDef {
    /// The event-time column's position.
    pub column: usize,
    /// The watermark expression.
    pub expr: String,
}

impl TableDef {
    /// Whether rows are keyed by a hidden row id.
    pub fn has_row_id(&self) -> bool {
        self.primary_key.is_empty()
    }

    /// The columns users see.
    pub fn user_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns.iter().map(|c| c.sql_type.field(&c.name)).collect::<Vec<_>>(),
        ))
    }

    /// The columns as stored: the user columns, then the hidden row id if there is one.
    pub fn stored_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self.columns.iter().map(|c| c.sql_type.field(&c.name)).collect();
        if self.has_row_id() {
            fields.push(Field::new(ROW_ID_COLUMN, DataType::Int64, false));
        }
        Arc::new(Schema::new(fields))
    }

    /// Positions of the key columns in the stored schema.
    pub fn key_indices(&self) -> Vec<usize> {
        if self.has_row_id() {
            vec![self.columns.len()]
        } else {
            self.primary_key.clone()
        }
    }

    /// The column named `name`, if any.
    pub fn column(&self, name: &str) -> Option<(usize, &ColumnDef)> {
        self.columns.iter().enumerate().find(|(_, c)| c.name == name)
    }
}
