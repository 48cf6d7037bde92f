//! The persisted catalog: every table, source and view as a record in the store's catalog
//! table, written in the same epoch as the DDL's effect, so that a restart rebuilds exactly
//! the objects that were acknowledged.
//!
//! Records are JSON (serde): the catalog is small, read once at start-up, and a readable
//! encoding makes a data directory inspectable. Keys are the object's id, big-endian, so a
//! scan returns objects in creation order — the order to rebuild them in, since an object
//! only refers to older ones.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sluice_engine::recovery::system_tables;
#[cfg(test)]
use sluice_engine::recovery::read_counter;
use sluice_storage::{KeyRange, StateSnapshot, TableId, WriteBatch};

use crate::catalog::{ColumnDef, TableDef};
use crate::error::{SqlError, SqlResult};

/// Counter of the next object id to allocate.
pub const NEXT_OBJECT_ID: &str = "next_object_id";
/// Counter of the next hidden row id of tables without a primary key.
pub const NEXT_ROW_ID: &str = "next_row_id";

/// One object of the catalog, as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CatalogRecord {
    /// `CREATE TABLE`: the definition itself (its rows are in its own state table).
    Table(TableDef),
    /// `CREATE SOURCE`: what rebuilds its reader so that it replays the same rows.
    Source {
        /// Object id (creation order).
        id: TableId,
        /// Name.
        name: String,
        /// Columns.
        columns: Vec<ColumnDef>,
        /// `WITH` options.
        options: BTreeMap<String, String>,
        /// When it was created: datagen timestamps start there.
        created_at_micros: i64,
        /// `WATERMARK FOR ...`, if declared.
        #[serde(default)]
        watermark: Option<crate::catalog::WatermarkDef>,
        /// `FORMAT ... ENCODE ...`, if given.
        #[serde(default)]
        format: Option<crate::catalog::FormatClause>,
    },
    /// `CREATE SINK`: what rebuilds it; its undelivered changes are in the sink outbox.
    Sink {
        /// Object id (creation order: after its view).
        id: TableId,
        /// Name.
        name: String,
        /// The view it sends.
        view: String,
        /// `WITH` options.
        options: BTreeMap<String, String>,
        /// `FORMAT ... ENCODE ...`.
        format: Option<crate::catalog::FormatClause>,
    },
    /// `CREATE MATERIALIZED VIEW`: its statement, re-planned at start-up, and the state-table
    /// ids its plan was given, handed out again so that the new plan finds its state.
    View {
        /// Object id, also the state table of its rows.
        id: TableId,
        /// Name.
        name: String,
        /// The `CREATE MATERIALIZED VIEW` statement.
        definition: String,
        /// State-table ids allocated while planning, in allocation order.
        plan_ids: Vec<TableId>,
        /// `EXPLAIN` of the plan: re-planning must give the same operator graph, or the
        /// stored state would be read by operators it was not written for.
        explain: String,
        /// Whether its rows are stored by arrival (`ViewLayout::AppendOnly`), as chosen when
        /// it was created; absent in records written before that layout existed.
        #[serde(default)]
        append_only: bool,
    },
}

impl CatalogRecord {
    /// The object's id.
    pub fn id(&self) -> TableId {
        match self {
            CatalogRecord::Table(def) => def.id,
            CatalogRecord::Source { id, .. } | CatalogRecord::View { id, .. } | CatalogRecord::Sink { id, .. } => *id,
        }
    }

    /// Queues writing this record.
    pub fn put(&self, batch: &mut WriteBatch) -> SqlResult<()> {
        let value = serde_json::to_vec(self).map_err(|e| SqlError::Internal(format!("cannot encode the catalog: {e}")))?;
        batch.put(system_tables::CATALOG, self.id().to_be_bytes().to_vec(), value);
        Ok(())
    }
}

/// Queues the removal of object `id`'s record.
pub fn delete(batch: &mut WriteBatch, id: TableId) {
    batch.delete(system_tables::CATALOG, id.to_be_bytes().to_vec());
}

/// Queues a counter's new value.
pub fn put_counter(batch: &mut WriteBatch, name: &str, value: u64) {
    batch.put(system_tables::COUNTERS, name.as_bytes().to_vec(), value.to_be_bytes().to_vec());
}

/// Every record of the catalog, in creation order.
pub fn load(snapshot: &dyn StateSnapshot) -> SqlResult<Vec<CatalogRecord>> {
    let mut records = Vec::new();
    for kv in snapshot.scan(system_tables::CATALOG, KeyRange::all())? {
        let (key, value) = kv?;
        let record: CatalogRecord = serde_json::from_slice(&value).map_err(|e| {
            SqlError::Internal(format!("catalog entry {key:?} cannot be read by this version of Sluice: {e}"))
        })?;
        records.push(record);
    }
    Ok(records)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::types::SqlType;
    use sluice_storage::{MemoryStateStore, StateStore};

    /// A view recorded before append-only views existed keeps the counted layout it was
    /// stored in.
    #[test]
    fn a_view_record_without_a_layout_is_counted() {
        let old = r#"{"View":{"id":9,"name":"v","definition":"CREATE MATERIALIZED VIEW v AS SELECT 1","plan_ids":[],"explain":"Materialize v\n"}}"#;
        let record: CatalogRecord = serde_json::from_str(old).unwrap();
        assert!(matches!(record, CatalogRecord::View { append_only: false, .. }), "{record:?}");
    }

    #[test]
    fn records_round_trip_in_creation_order() {
        let store = MemoryStateStore::new();
        let view = CatalogRecord::View {
            id: 9,
            name: "v".into(),
            definition: "CREATE MATERIALIZED VIEW v AS SELECT 1 FROM t".into(),
            plan_ids: vec![7, 8],
            explain: "Materialize v".into(),
            append_only: false,
        };
        let table = CatalogRecord::Table(TableDef {
            id: 2,
            name: "t".into(),
            columns: vec![ColumnDef { name: "a".into(), sql_type: SqlType::BigInt, not_null: false }],
            primary_key: vec![],
            append_only: false,
            watermark: None,
        });
        let mut batch = WriteBatch::new();
        view.put(&mut batch).unwrap();
        table.put(&mut batch).unwrap();
        put_counter(&mut batch, NEXT_OBJECT_ID, 10);
        store.commit(1, batch).unwrap();
        let snapshot = store.snapshot();
        assert_eq!(load(snapshot.as_ref()).unwrap(), vec![table, view]);
        assert_eq!(read_counter(snapshot.as_ref(), NEXT_OBJECT_ID).unwrap(), Some(10));
        let mut batch = WriteBatch::new();
        delete(&mut batch, 9);
        store.commit(2, batch).unwrap();
        assert_eq!(load(store.snapshot().as_ref()).unwrap().len(), 1);
    }
}
