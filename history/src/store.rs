//! Where the history files live: an `object_store` (a local directory by default).

use std::sync::Arc;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::HistoryError;

/// The object store holding every source's history, and the URL DataFusion knows it by.
///
/// Why one store for all sources: a source's files sit under its own prefix
/// (`<source>/date=YYYY-MM-DD/hour=HH/`), so one store, registered once with DataFusion, serves
/// every batch query, and one listing at start-up finds the files no checkpoint committed.
#[derive(Debug, Clone)]
pub struct HistoryStore {
    store: Arc<dyn ObjectStore>,
    url: ObjectStoreUrl,
    location: String,
}

/// The URL batch scans name the history store by (registered in the query context).
const STORE_URL: &str = "sluice-history://archive";

impl HistoryStore {
    /// A store in directory `dir` of the local file system (created if missing).
    pub fn local(dir: &std::path::Path) -> Result<Self, HistoryError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| HistoryError::Unusable(format!("cannot create the history directory {}: {e}", dir.display())))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| HistoryError::Unusable(format!("cannot use {} as the history store: {e}", dir.display())))?;
        Ok(Self::new(Arc::new(store), format!("file://{}", dir.display())))
    }

    /// A store over `store`, shown to users as `location`.
    pub fn new(store: Arc<dyn ObjectStore>, location: String) -> Self {
        // Cannot fail: a constant, valid URL.
        let url = ObjectStoreUrl::parse(STORE_URL).unwrap_or_else(|_| ObjectStoreUrl::local_filesystem());
        Self { store, url, location }
    }

    /// The object store.
    pub fn object_store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The URL DataFusion finds the store by (see [`HistoryStore::register`]).
    pub fn url(&self) -> &ObjectStoreUrl {
        &self.url
    }

    /// Where the store is, for users (`file:///...`, `s3://bucket/prefix`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Makes the store readable by DataFusion scans run in `ctx`.
    pub fn register(&self, ctx: &datafusion::execution::context::SessionContext) {
        ctx.register_object_store(self.url.as_ref(), Arc::clone(&self.store));
    }

    /// Writes, reads back and deletes a small object: a store that is unreachable, refuses
    /// writes or is misconfigured is reported at start-up, not at the first archive.
    pub async fn probe(&self) -> Result<(), HistoryError> {
        let path = Path::from("_sluice_probe");
        let unusable = |what: &str, e: &dyn std::fmt::Display| {
            HistoryError::Unusable(format!("the history store {} cannot {what}: {e}", self.location))
        };
        self.store.put(&path, PutPayload::from_static(b"sluice")).await.map_err(|e| unusable("be written", &e))?;
        let read = self.store.get(&path).await.map_err(|e| unusable("be read", &e))?;
        read.bytes().await.map_err(|e| unusable("be read", &e))?;
        self.store.delete(&path).await.map_err(|e| unusable("delete", &e))?;
        Ok(())
    }
}
