//! Source readers: where rows that no table holds come from.
//!
//! A connector ([`SourceConnector`]) reads its input from a [`SourcePosition`] and hands
//! batches of rows, with the records it rejected and its position after them, to a
//! [`SourceOutput`]; the dataflow stores that position in the same checkpoint as the state
//! those rows produced, so a restart resumes exactly there. The `datagen` generator lives
//! here; the connectors that read the outside world (files, Kafka) live in `sluice-connectors`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use datafusion::arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};

pub use crate::dataflow::SourceOutput;
pub use crate::recovery::{RejectedRecord, SourcePosition};
use crate::{EngineError, EngineResult};

/// What a source does with a record it cannot turn into a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Keep it in `sluice_errors`, count it, and go on (the default).
    #[default]
    Skip,
    /// Stop: the views reading the source fail with the record's error.
    Fail,
}

/// One delivery of a connector: rows, the records it rejected, and its position after them.
#[derive(Debug)]
pub struct SourceBatch {
    /// Which of the source's partitions (files, Kafka partitions) the rows come from; the
    /// watermark is the minimum over partitions.
    pub partition: u32,
    /// The rows, in the source's schema.
    pub rows: RecordBatch,
    /// Records that could not be read as rows.
    pub rejected: Vec<RejectedRecord>,
    /// Records consumed so far, these included (rows and rejected ones).
    pub offset: u64,
    /// The connector's position after these records.
    pub state: Vec<u8>,
}

/// A connector: reads a source's records from a position on, as batches of rows.
///
/// Why the position is the connector's: only it knows what a place in its input is (a file's
/// identity and byte offset, a Kafka partition's offset); the dataflow stores it opaquely in
/// the checkpoint that absorbs the rows before it, which is what makes replay exact.
#[async_trait]
pub trait SourceConnector: Send + Sync + std::fmt::Debug {
    /// Reads from `from` on, handing every batch to `out`, until the input ends (a bounded
    /// source) or `out` says to stop.
    async fn run(&self, from: SourcePosition, out: &mut SourceOutput) -> EngineResult<()>;
}

/// How one column of a generated row is computed from the row's offset.
///
/// Every generator is a pure function of (its parameters, the row offset): replaying a
/// source from an offset yields exactly the rows it yielded before, which is what makes
/// recovery by replay exact.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnGenerator {
    /// `start, start + 1, ...`, wrapping back to `start` after `end`.
    Sequence {
        /// First value.
        start: i64,
        /// Last value before wrapping, if any.
        end: Option<i64>,
    },
    /// Uniform integers in `[min, max]` (or doubles in `[min, max)` for floating columns).
    Random {
        /// Smallest value.
        min: i64,
        /// Largest value.
        max: i64,
        /// Seed: the same seed gives the same values.
        seed: u64,
    },
    /// One of the given values (as text, cast to the column's type), uniformly; repeat a
    /// value to make it more frequent.
    OneOf {
        /// The values.
        values: Vec<String>,
        /// Seed.
        seed: u64,
    },
    /// Random lowercase strings of a fixed length.
    RandomText {
        /// Characters per value.
        length: usize,
        /// Seed.
        seed: u64,
    },
    /// `start + offset × step` microseconds: timestamps advancing at the row rate, each moved
    /// back by up to `disorder_micros` (a pseudo-random amount per row), so that rows arrive
    /// out of event-time order as real events do.
    Timestamp {
        /// The first row's time, in microseconds since the Unix epoch.
        start_micros: i64,
        /// Microseconds between consecutive rows.
        step_micros: i64,
        /// How far back a row's time may be (0: in order).
        disorder_micros: i64,
        /// Seed of the disorder.
        seed: u64,
    },
}

/// A `datagen` source: generated rows at a fixed rate.
#[derive(Debug, Clone)]
pub struct DatagenSpec {
    /// The source's columns.
    pub schema: SchemaRef,
    /// One generator per column.
    pub columns: Vec<ColumnGenerator>,
    /// Rows per second; 0 generates as fast as the dataflow takes them.
    pub rows_per_second: u64,
    /// Stop after this many rows.
    pub max_rows: Option<u64>,
}

/// Rows generated per batch at most.
const BATCH_ROWS: u64 = 4096;

/// A stateless 64-bit mix (splitmix64's finalizer): uniform, and cheap enough per value.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn random(seed: u64, column: usize, offset: u64) -> u64 {
    mix(seed ^ mix(offset ^ mix(column as u64 + 1)))
}

impl DatagenSpec {
    /// Checks that every generator can produce its column's type.
    pub fn validate(&self) -> EngineResult<()> {
        if self.columns.len() != self.schema.fields().len() {
            return Err(EngineError::Invalid("datagen needs one generator per column".into()));
        }
        for (field, generator) in self.schema.fields().iter().zip(&self.columns) {
            let t = field.data_type();
            let ok = match generator {
                ColumnGenerator::Sequence { .. } | ColumnGenerator::Random { .. } => {
                    t.is_integer() || matches!(t, DataType::Float64 | DataType::Float32 | DataType::Decimal128(..) | DataType::Utf8 | DataType::Boolean)
                }
                ColumnGenerator::OneOf { values, .. } => {
                    !values.is_empty() && cast(&(Arc::new(StringArray::from(values.clone())) as ArrayRef), t).is_ok()
                }
                ColumnGenerator::RandomText { .. } => matches!(t, DataType::Utf8),
                ColumnGenerator::Timestamp { .. } => matches!(t, DataType::Timestamp(..)),
            };
            if !ok {
                return Err(EngineError::Invalid(format!(
                    "datagen cannot generate column \"{}\" of type {t} with {generator:?}",
                    field.name()
                )));
            }
            if let ColumnGenerator::OneOf { values, .. } = generator {
                let parsed = cast(&(Arc::new(StringArray::from(values.clone())) as ArrayRef), t)?;
                if parsed.null_count() > 0 {
                    return Err(EngineError::Invalid(format!("datagen values of column \"{}\" are not all {t}", field.name())));
                }
            }
        }
        Ok(())
    }

    /// The rows at offsets `first .. first + count`.
    pub fn rows(&self, first: u64, count: u64) -> EngineResult<RecordBatch> {
        let offsets = first..first + count;
        let mut columns = Vec::with_capacity(self.columns.len());
        for (i, (field, generator)) in self.schema.fields().iter().zip(&self.columns).enumerate() {
            let t = field.data_type();
            let raw: ArrayRef = match generator {
                ColumnGenerator::Sequence { start, end } => {
                    let span = end.map(|e| (e - start).max(0) as u64 + 1);
                    Arc::new(Int64Array::from_iter_values(offsets.clone().map(|o| {
                        let o = span.map_or(o, |s| o % s);
                        start.wrapping_add(o as i64)
                    })))
                }
                ColumnGenerator::Random { min, max, seed } if matches!(t, DataType::Float64 | DataType::Float32) => {
                    let width = (*max - *min) as f64;
                    Arc::new(Float64Array::from_iter_values(offsets.clone().map(|o| {
                        let unit = (random(*seed, i, o) >> 11) as f64 / (1u64 << 53) as f64;
                        *min as f64 + unit * width
                    })))
                }
                ColumnGenerator::Random { min, max, seed } => {
                    let span = (*max as i128 - *min as i128 + 1).max(1) as u128;
                    Arc::new(Int64Array::from_iter_values(
                        offsets.clone().map(|o| (*min as i128 + (random(*seed, i, o) as u128 % span) as i128) as i64),
                    ))
                }
                ColumnGenerator::OneOf { values, seed } => {
                    let picked = offsets.clone().map(|o| values[(random(*seed, i, o) % values.len() as u64) as usize].as_str());
                    Arc::new(StringArray::from_iter_values(picked))
                }
                ColumnGenerator::RandomText { length, seed } => {
                    Arc::new(StringArray::from_iter_values(offsets.clone().map(|o| {
                        (0..*length)
                            .map(|k| char::from(b'a' + (random(*seed, i, o.wrapping_mul(131) + k as u64) % 26) as u8))
                            .collect::<String>()
                    })))
                }
                ColumnGenerator::Timestamp { start_micros, step_micros, disorder_micros, seed } => {
                    Arc::new(Int64Array::from_iter_values(offsets.clone().map(|o| {
                        let on_time = start_micros.wrapping_add(step_micros.wrapping_mul(o as i64));
                        let back = if *disorder_micros > 0 { (random(*seed, i, o) % (*disorder_micros as u64 + 1)) as i64 } else { 0 };
                        on_time - back
                    })))
                }
            };
            let column = if raw.data_type() == t {
                raw
            } else if matches!(t, DataType::Boolean) {
                Arc::new(BooleanArray::from_iter(raw.as_any().downcast_ref::<Int64Array>().into_iter().flatten().map(|v| v.map(|v| v != 0))))
            } else {
                cast(&raw, t)?
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
    }

}

#[async_trait]
impl SourceConnector for DatagenSpec {
    /// Generates rows from the position's offset on, paced at the row rate, until `max_rows`.
    async fn run(&self, from: SourcePosition, out: &mut SourceOutput) -> EngineResult<()> {
        let started = Instant::now();
        let first = from.offset;
        let mut offset = first;
        loop {
            let limit = self.max_rows.unwrap_or(u64::MAX);
            if offset >= limit {
                return Ok(());
            }
            let due = if self.rows_per_second == 0 {
                offset + BATCH_ROWS
            } else {
                first + (started.elapsed().as_secs_f64() * self.rows_per_second as f64) as u64
            };
            let count = due.min(limit).saturating_sub(offset).min(BATCH_ROWS);
            if count == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            let rows = self.rows(offset, count)?;
            offset += count;
            let batch = SourceBatch { partition: 0, rows, rejected: Vec::new(), offset, state: Vec::new() };
            if !out.emit(batch).await {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use datafusion::arrow::datatypes::{Field, Schema, TimeUnit};

    use super::*;

    fn spec() -> DatagenSpec {
        DatagenSpec {
            schema: Arc::new(Schema::new(vec![
                Field::new("id", DataType::Int64, true),
                Field::new("user", DataType::Int32, true),
                Field::new("url", DataType::Utf8, true),
                Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
            ])),
            columns: vec![
                ColumnGenerator::Sequence { start: 1, end: None },
                ColumnGenerator::Random { min: 10, max: 12, seed: 7 },
                ColumnGenerator::OneOf { values: vec!["/a".into(), "/b".into()], seed: 1 },
                ColumnGenerator::Timestamp { start_micros: 0, step_micros: 1_000, disorder_micros: 0, seed: 1 },
            ],
            rows_per_second: 0,
            max_rows: Some(10),
        }
    }

    #[test]
    fn rows_depend_only_on_their_offset() {
        let spec = spec();
        spec.validate().unwrap();
        let all = spec.rows(0, 10).unwrap();
        let tail = spec.rows(6, 4).unwrap();
        assert_eq!(all.slice(6, 4), tail);
        let users = all.column(1).as_any().downcast_ref::<datafusion::arrow::array::Int32Array>().unwrap();
        assert!(users.values().iter().all(|u| (10..=12).contains(u)));
    }

    #[test]
    fn a_generator_that_cannot_make_the_type_is_refused() {
        let mut spec = spec();
        spec.columns[3] = ColumnGenerator::RandomText { length: 3, seed: 0 };
        assert!(spec.validate().is_err());
    }
}
