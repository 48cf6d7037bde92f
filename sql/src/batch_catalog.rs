//! The catalog as a batch statement (SELECT, DML, describe) sees it: the same tables, views
//! and sources, except that a source presents its string columns as `Utf8View`
//! ([`SourceTable::for_batch_queries`]).
//!
//! Why a wrapper rather than two providers per source: DataFusion's planner types a plan from
//! the provider it finds by name, and a materialized view must be typed as its operators and
//! state run (`Utf8`), while a scan of Parquet history is a third faster with view strings.
//! Views are planned with the database's catalog; batch statements with this one, which
//! wraps it lookup by lookup, so a table created or dropped is seen by both at once.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider, TableProvider};
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;

use crate::relations::SourceTable;

/// Wraps a catalog list so that sources are looked up as batch queries read them.
#[derive(Debug)]
pub struct BatchCatalogList(Arc<dyn CatalogProviderList>);

impl BatchCatalogList {
    /// The batch view of `inner`.
    pub fn new(inner: Arc<dyn CatalogProviderList>) -> Self {
        Self(inner)
    }
}

impl CatalogProviderList for BatchCatalogList {
    fn register_catalog(&self, name: String, catalog: Arc<dyn CatalogProvider>) -> Option<Arc<dyn CatalogProvider>> {
        self.0.register_catalog(name, catalog)
    }

    fn catalog_names(&self) -> Vec<String> {
        self.0.catalog_names()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        self.0.catalog(name).map(|inner| Arc::new(BatchCatalog(inner)) as Arc<dyn CatalogProvider>)
    }
}

#[derive(Debug)]
struct BatchCatalog(Arc<dyn CatalogProvider>);

impl CatalogProvider for BatchCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.0.schema_names()
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        self.0.schema(name).map(|inner| Arc::new(BatchSchema(inner)) as Arc<dyn SchemaProvider>)
    }

    fn register_schema(&self, name: &str, schema: Arc<dyn SchemaProvider>) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        self.0.register_schema(name, schema)
    }

    fn deregister_schema(&self, name: &str, cascade: bool) -> DfResult<Option<Arc<dyn SchemaProvider>>> {
        self.0.deregister_schema(name, cascade)
    }
}

struct BatchSchema(Arc<dyn SchemaProvider>);

impl fmt::Debug for BatchSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BatchSchema").field(&self.0).finish()
    }
}

#[async_trait]
impl SchemaProvider for BatchSchema {
    fn owner_name(&self) -> Option<&str> {
        self.0.owner_name()
    }

    fn table_names(&self) -> Vec<String> {
        self.0.table_names()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        Ok(self.0.table(name).await?.map(|table| match table.downcast_ref::<SourceTable>() {
            Some(source) => Arc::new(source.for_batch_queries()) as Arc<dyn TableProvider>,
            None => table,
        }))
    }

    async fn table_type(&self, name: &str) -> DfResult<Option<TableType>> {
        self.0.table_type(name).await
    }

    fn register_table(&self, name: String, table: Arc<dyn TableProvider>) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.0.register_table(name, table)
    }

    fn deregister_table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        self.0.deregister_table(name)
    }

    fn table_exist(&self, name: &str) -> bool {
        self.0.table_exist(name)
    }
}
