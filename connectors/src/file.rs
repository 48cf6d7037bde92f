//! `connector = 'file'`: the lines of the files a path or glob matches, then (with
//! `follow = 'true'`) what is appended to them, through rotation.
//!
//! ```text
//! WITH (connector = 'file', path = '/var/log/nginx/access.log*', follow = 'true',
//!       poll.interval = '200ms')
//! ```
//!
//! Files are told apart by identity (device and inode), not by name, so that
//! - rename-and-create rotation (`access.log` → `access.log.1`, a new `access.log`) keeps
//!   reading the renamed file to its end, then reads the new one from its start;
//! - copy-truncate rotation (the file shrinks below the position read) reads it again from
//!   its start;
//! - a new file matching the glob is read from its start.
//!
//! Files are read oldest first (by modification time, then name), one at a time, through
//! their last complete line; a line still being written is read once its newline arrives
//! (or, without `follow`, at the end of the file). The position — each file's identity and
//! byte offset — rides with every batch into the checkpoint, so a restart neither re-reads
//! nor skips a line.
//!
//! Limits: a line written to a copy-truncated file after the last poll and before the
//! truncation is lost (as for every tailer); a file renamed out of the glob while Sluice is
//! stopped is not finished.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use serde::{Deserialize, Serialize};
use sluice_engine::source::{SourceBatch, SourceConnector, SourceOutput, SourcePosition};
use sluice_engine::{EngineError, EngineResult};

use crate::format::{Encode, RecordParser};
use crate::{bool_option, ConnectorError, ConnectorResult};

/// Bytes read from a file per batch at most.
const CHUNK_BYTES: usize = 1 << 20;

/// A file source's settings.
#[derive(Debug, Clone)]
pub struct FileSource {
    /// The path or glob pattern.
    pub pattern: String,
    /// Whether to keep reading appended lines and new files after the existing ones.
    pub follow: bool,
    /// How often to look for new lines and files when following.
    pub poll_interval: Duration,
    /// How records are encoded.
    pub encode: Encode,
    /// The source's columns.
    pub schema: SchemaRef,
}

impl FileSource {
    /// The source `WITH (connector = 'file', ...)` describes; `used` are the options the
    /// caller understood (every other one must be the file connector's).
    pub fn from_options(
        options: &BTreeMap<String, String>,
        used: &[&str],
        encode: Option<Encode>,
        schema: SchemaRef,
        parse_duration: impl Fn(&str, &str) -> Result<Duration, String>,
    ) -> ConnectorResult<Self> {
        crate::check_options(options, &["connector", "path", "follow", "poll.interval"], used, false, "a file source")?;
        let pattern = options
            .get("path")
            .cloned()
            .ok_or_else(|| ConnectorError::InvalidOption("a file source needs WITH (path = '...')".into()))?;
        glob::Pattern::new(&pattern)
            .map_err(|e| ConnectorError::InvalidOption(format!("path = '{pattern}' is not a valid glob: {e}")))?;
        let encode = encode.ok_or_else(|| {
            ConnectorError::InvalidOption("a file source needs FORMAT PLAIN ENCODE JSON | CSV | LOG".into())
        })?;
        let poll_interval = match options.get("poll.interval") {
            Some(text) => parse_duration("poll.interval", text).map_err(ConnectorError::InvalidOption)?,
            None => Duration::from_millis(200),
        };
        Ok(Self { pattern, follow: bool_option(options, "follow", false)?, poll_interval, encode, schema })
    }
}

/// Where reading one file stands; the checkpointed position is a list of these.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct FileCursor {
    device: u64,
    inode: u64,
    /// The name it last had (for messages and `sluice_errors`).
    path: String,
    /// Bytes read: the start of the next line.
    offset: u64,
}

/// The position as stored: the cursor of every file known.
#[derive(Debug, Default, Serialize, Deserialize)]
struct FilePosition {
    files: Vec<FileCursor>,
}

struct TrackedFile {
    cursor: FileCursor,
    parser: Box<dyn RecordParser>,
    /// Whether the glob still matches it (else it is dropped once read to its end).
    matched: bool,
    /// Its modification time when last seen, for the reading order.
    modified: std::time::SystemTime,
    /// The open file: kept so that a file renamed out of the glob is still read to its end.
    handle: Option<std::fs::File>,
}

/// A file's identity and metadata.
fn identify(path: &std::path::Path) -> Option<(u64, u64, u64, std::time::SystemTime)> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some((meta.dev(), meta.ino(), meta.len(), meta.modified().unwrap_or(std::time::UNIX_EPOCH)))
}

struct Reader<'a> {
    source: &'a FileSource,
    files: Vec<TrackedFile>,
    records: u64,
}

impl Reader<'_> {
    fn state(&self) -> Vec<u8> {
        let position = FilePosition { files: self.files.iter().map(|f| f.cursor.clone()).collect() };
        serde_json::to_vec(&position).unwrap_or_default()
    }

    /// Looks at what the glob matches now: new files, renamed ones, truncated ones.
    fn discover(&mut self) -> EngineResult<()> {
        let paths = glob::glob(&self.source.pattern)
            .map_err(|e| EngineError::Invalid(format!("path = '{}': {e}", self.source.pattern)))?;
        for file in &mut self.files {
            file.matched = false;
        }
        let mut new = Vec::new();
        for path in paths.flatten() {
            let Some((device, inode, len, modified)) = identify(&path) else { continue };
            let name = path.to_string_lossy().into_owned();
            match self.files.iter_mut().find(|f| f.cursor.device == device && f.cursor.inode == inode) {
                Some(known) => {
                    known.matched = true;
                    known.modified = modified;
                    if known.cursor.path != name {
                        tracing::info!(from = %known.cursor.path, to = %name, "followed a renamed file");
                        known.cursor.path = name;
                    }
                    if len < known.cursor.offset {
                        tracing::warn!(path = %known.cursor.path, "file truncated: reading it again from its start");
                        known.cursor.offset = 0;
                        known.parser = self.source.encode.parser(SchemaRef::clone(&self.source.schema)).map_err(invalid)?;
                    }
                }
                None => new.push(TrackedFile {
                    cursor: FileCursor { device, inode, path: name, offset: 0 },
                    parser: self.source.encode.parser(SchemaRef::clone(&self.source.schema)).map_err(invalid)?,
                    matched: true,
                    modified,
                    handle: None,
                }),
            }
        }
        new.sort_by(|a, b| (a.modified, &a.cursor.path).cmp(&(b.modified, &b.cursor.path)));
        self.files.extend(new);
        Ok(())
    }

    /// Reads the next chunk of whole lines of file `at`: (its start, the bytes), or None at
    /// its end.
    fn read_chunk(&mut self, at: usize) -> Option<(u64, Vec<u8>)> {
        let file = &mut self.files[at];
        if file.handle.is_none() {
            let handle = std::fs::File::open(PathBuf::from(&file.cursor.path)).ok()?;
            let meta = handle.metadata().ok()?;
            if meta.dev() != file.cursor.device || meta.ino() != file.cursor.inode {
                return None;
            }
            file.handle = Some(handle);
        }
        let handle = file.handle.as_mut()?;
        let meta = handle.metadata().ok()?;
        handle.seek(SeekFrom::Start(file.cursor.offset)).ok()?;
        let mut buffer = Vec::with_capacity(CHUNK_BYTES.min(meta.len().saturating_sub(file.cursor.offset) as usize));
        handle.by_ref().take(CHUNK_BYTES as u64).read_to_end(&mut buffer).ok()?;
        if buffer.is_empty() {
            return None;
        }
        let end = match buffer.iter().rposition(|b| *b == b'\n') {
            Some(last) => last + 1,
            // A whole chunk without a newline is one (over-long) record.
            None if buffer.len() == CHUNK_BYTES => buffer.len(),
            // A last line without its newline: complete only when nothing more is coming.
            None if !self.source.follow => buffer.len(),
            None => return None,
        };
        buffer.truncate(end);
        let start = file.cursor.offset;
        file.cursor.offset += end as u64;
        Some((start, buffer))
    }
}

fn invalid(e: ConnectorError) -> EngineError {
    EngineError::Invalid(e.to_string())
}

#[async_trait]
impl SourceConnector for FileSource {
    async fn run(&self, from: SourcePosition, out: &mut SourceOutput) -> EngineResult<()> {
        let stored: FilePosition = if from.state.is_empty() {
            FilePosition::default()
        } else {
            serde_json::from_slice(&from.state)
                .map_err(|e| EngineError::Invalid(format!("corrupt file source position: {e}")))?
        };
        let mut files = Vec::with_capacity(stored.files.len());
        for cursor in stored.files {
            // A file that no longer exists under its last name is found again by the glob,
            // by identity, if it was renamed within it.
            let modified = identify(std::path::Path::new(&cursor.path)).map_or(std::time::UNIX_EPOCH, |m| m.3);
            files.push(TrackedFile {
                cursor,
                parser: self.encode.parser(SchemaRef::clone(&self.schema)).map_err(invalid)?,
                matched: true,
                modified,
                handle: None,
            });
        }
        let mut reader = Reader { source: self, files, records: from.offset };
        loop {
            reader.discover()?;
            let mut progressed = false;
            for at in 0..reader.files.len() {
                while let Some((start, chunk)) = reader.read_chunk(at) {
                    progressed = true;
                    let mut rejected = Vec::new();
                    let file = &mut reader.files[at];
                    let rows = file.parser.parse(&chunk, start, &file.cursor.path, &mut rejected)?;
                    reader.records += (rows.num_rows() + rejected.len()) as u64;
                    let batch = SourceBatch { partition: 0, rows, rejected, offset: reader.records, state: reader.state() };
                    if !out.emit(batch).await {
                        return Ok(());
                    }
                }
            }
            // Files gone from the glob and read to their end are forgotten.
            let before = reader.files.len();
            reader.files.retain(|f| f.matched);
            if reader.files.len() != before {
                progressed = true;
            }
            if !progressed {
                if !self.follow {
                    return Ok(());
                }
                tokio::time::sleep(self.poll_interval).await;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use tokio::sync::mpsc;

    use super::*;

    fn source(dir: &std::path::Path, pattern: &str, follow: bool) -> FileSource {
        FileSource {
            pattern: dir.join(pattern).to_string_lossy().into_owned(),
            follow,
            poll_interval: Duration::from_millis(10),
            encode: Encode::Csv { header: false, delimiter: b',' },
            schema: Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)])),
        }
    }

    fn append(path: &std::path::Path, text: &str) {
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// Runs the source in the background; the receiver yields its batches.
    fn start(source: FileSource, from: SourcePosition) -> (mpsc::Receiver<SourceBatch>, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            let mut out = SourceOutput::to_channel("test", sender);
            source.run(from, &mut out).await.unwrap();
        });
        (receiver, task)
    }

    /// Collects numbers until `want` of them arrived; returns them and the last position.
    async fn numbers(receiver: &mut mpsc::Receiver<SourceBatch>, want: usize) -> (Vec<i64>, SourcePosition) {
        let mut got = Vec::new();
        let mut position = SourcePosition::default();
        while got.len() < want {
            let batch = tokio::time::timeout(Duration::from_secs(30), receiver.recv()).await.unwrap().unwrap();
            let column = batch.rows.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            got.extend(column.iter().flatten());
            position = SourcePosition { offset: batch.offset, watermark: None, state: batch.state };
        }
        (got, position)
    }

    #[tokio::test]
    async fn reads_existing_files_oldest_first_then_stops() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("a.log.1"), "1\n2\n");
        std::thread::sleep(Duration::from_millis(20));
        append(&dir.path().join("a.log"), "3\n4");
        let (mut receiver, task) = start(source(dir.path(), "a.log*", false), SourcePosition::default());
        let (got, _) = numbers(&mut receiver, 4).await;
        assert_eq!(got, vec![1, 2, 3, 4]);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn follows_appends_rotations_truncation_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("access.log");
        append(&log, "1\n2\n3");
        let (mut receiver, task) = start(source(dir.path(), "access.log*", true), SourcePosition::default());
        // The unfinished line waits for its newline.
        assert_eq!(numbers(&mut receiver, 2).await.0, vec![1, 2]);
        append(&log, "\n4\n");
        assert_eq!(numbers(&mut receiver, 2).await.0, vec![3, 4]);
        // Rename-and-create: the renamed file is finished, the new one read from its start.
        append(&log, "5\n");
        std::fs::rename(&log, dir.path().join("access.log.1")).unwrap();
        append(&dir.path().join("access.log.1"), "6\n");
        append(&log, "700\n");
        let (mut got, _) = numbers(&mut receiver, 3).await;
        got.sort();
        assert_eq!(got, vec![5, 6, 700]);
        // Copy-truncate: the file shrinks below the position read, and is read again from
        // its start.
        std::fs::remove_file(dir.path().join("access.log.1")).unwrap();
        std::fs::write(&log, "").unwrap();
        append(&log, "8\n");
        let (got, position) = numbers(&mut receiver, 1).await;
        assert_eq!(got, vec![8]);
        task.abort();
        // A restart from the last position reads only what came after it.
        append(&log, "9\n");
        append(&dir.path().join("access.log.2"), "10\n");
        let (mut receiver, task) = start(source(dir.path(), "access.log*", true), position);
        let (mut got, _) = numbers(&mut receiver, 2).await;
        got.sort();
        assert_eq!(got, vec![9, 10]);
        task.abort();
    }

    #[tokio::test]
    async fn bad_lines_are_rejected_with_their_file_and_offset() {
        let dir = tempfile::tempdir().unwrap();
        append(&dir.path().join("n.csv"), "1\nx\n3\n");
        let (mut receiver, task) = start(source(dir.path(), "n.csv", false), SourcePosition::default());
        let batch = receiver.recv().await.unwrap();
        assert_eq!(batch.rows.num_rows(), 2);
        assert_eq!(batch.offset, 3);
        assert_eq!(batch.rejected.len(), 1);
        assert_eq!(batch.rejected[0].offset, 2);
        assert!(batch.rejected[0].partition.ends_with("n.csv"));
        assert_eq!(batch.rows.column(0).null_count(), 0);
        task.await.unwrap();
    }

    #[test]
    fn options_are_checked() {
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, true)]));
        let options = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
        let duration = |_: &str, _: &str| Ok(Duration::from_secs(1));
        let json = || Some(Encode::Json);
        assert!(FileSource::from_options(&options(&[("connector", "file")]), &[], json(), Arc::clone(&schema), duration).is_err());
        assert!(FileSource::from_options(&options(&[("path", "/x"), ("colour", "red")]), &[], json(), Arc::clone(&schema), duration).is_err());
        assert!(FileSource::from_options(&options(&[("path", "/x")]), &[], None, Arc::clone(&schema), duration).is_err());
        assert!(FileSource::from_options(&options(&[("path", "/x"), ("follow", "yes")]), &[], json(), Arc::clone(&schema), duration).is_err());
        let ok = FileSource::from_options(&options(&[("path", "/x/*.log"), ("follow", "true")]), &[], json(), schema, duration).unwrap();
        assert!(ok.follow);
    }
}
