//! `--object-store`: where sources' history is kept.

use std::path::Path;

use sluice_history::{HistoryError, HistoryStore};

use crate::ServerError;

/// The history store `url` names (a directory, `file:///dir`, `s3://bucket/prefix`), or `<data_dir>/history`.
pub fn open(url: Option<&str>, data_dir: &Path) -> Result<HistoryStore, ServerError> {
    let Some(url) = url else {
        return Ok(HistoryStore::local(&data_dir.join("history"))?);
    };
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(HistoryStore::local(Path::new(path))?);
    }
    if url.starts_with("s3://") {
        return Ok(HistoryStore::s3(url)?);
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(ServerError::History(HistoryError::Unusable(format!(
            "--object-store {url}: '{scheme}' object stores are not supported (use a directory, file:///path or s3://bucket/prefix)"
        ))));
    }
    Ok(HistoryStore::local(Path::new(url))?)
}
