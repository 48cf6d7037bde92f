//! `--object-store`: where sources' history is kept.

use std::path::Path;

use sluice_history::{HistoryError, HistoryStore};

use crate::ServerError;

/// The history store `url` names (a directory, `file:///dir`), or `<data_dir>/history`.
pub fn open(url: Option<&str>, data_dir: &Path) -> Result<HistoryStore, ServerError> {
    let Some(url) = url else {
        return Ok(HistoryStore::local(&data_dir.join("history"))?);
    };
    if let Some(path) = url.strip_prefix("file://") {
        return Ok(HistoryStore::local(Path::new(path))?);
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return Err(ServerError::History(HistoryError::Unusable(format!(
            "--object-store {url}: '{scheme}' object stores are not supported yet (use a directory or file:///path)"
        ))));
    }
    Ok(HistoryStore::local(Path::new(url))?)
}
