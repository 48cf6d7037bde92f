//! Where the history files live: an `object_store` (a local directory by default, or S3).

use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::object_store::local::LocalFileSystem;
use datafusion::object_store::path::Path;
use datafusion::object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use object_store::aws::AmazonS3Builder;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

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
    /// The S3-compatible endpoint, when not AWS's: named in start-up errors.
    endpoint: Option<String>,
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

    /// A store in S3 (or any S3-compatible store) at `url` = `s3://bucket[/prefix]`.
    ///
    /// Credentials, region and endpoint come from the usual `AWS_*` variables
    /// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL` for an
    /// S3-compatible server, ...). An `http://` endpoint is allowed without `AWS_ALLOW_HTTP`:
    /// naming one is the user's say-so. Requests are retried a few times only: the archiver
    /// runs a failed round again anyway, and an unreachable store should be reported at
    /// start-up within seconds, not after object_store's default three minutes.
    pub fn s3(url: &str) -> Result<Self, HistoryError> {
        let unusable = |why: String| HistoryError::Unusable(format!("--object-store {url}: {why}"));
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| unusable("an S3 location is s3://bucket/prefix".to_string()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(unusable("the bucket name is missing (s3://bucket/prefix)".to_string()));
        }
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .with_retry(RetryConfig {
                backoff: BackoffConfig { init_backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(2), base: 2.0 },
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
            })
            .with_client_options(ClientOptions::new().with_connect_timeout(Duration::from_secs(5)));
        let endpoint = ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"].into_iter().find_map(|k| std::env::var(k).ok());
        if endpoint.as_deref().is_some_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        let s3 = builder.build().map_err(|e| unusable(e.to_string()))?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> =
            if prefix.is_empty() { Arc::new(s3) } else { Arc::new(PrefixStore::new(s3, prefix)) };
        let location = if prefix.is_empty() { format!("s3://{bucket}") } else { format!("s3://{bucket}/{prefix}") };
        Ok(Self { endpoint, ..Self::new(store, location) })
    }

    /// A store over `store`, shown to users as `location`.
    pub fn new(store: Arc<dyn ObjectStore>, location: String) -> Self {
        // Cannot fail: a constant, valid URL.
        let url = ObjectStoreUrl::parse(STORE_URL).unwrap_or_else(|_| ObjectStoreUrl::local_filesystem());
        Self { store, url, location, endpoint: None }
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
            let endpoint = self.endpoint.as_ref().map(|e| format!(" (endpoint {e})")).unwrap_or_default();
            HistoryError::Unusable(format!("the history store {}{endpoint} cannot {what}: {e}", self.location))
        };
        self.store.put(&path, PutPayload::from_static(b"sluice")).await.map_err(|e| unusable("be written", &e))?;
        let read = self.store.get(&path).await.map_err(|e| unusable("be read", &e))?;
        read.bytes().await.map_err(|e| unusable("be read", &e))?;
        self.store.delete(&path).await.map_err(|e| unusable("delete", &e))?;
        Ok(())
    }
}
