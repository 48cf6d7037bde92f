//! Event time: watermarks, the late-row filter, and which columns of a plan carry watermarks.
//!
//! A [`Watermark`] is a promise about a stream's future: no change that arrives after it has a
//! value below `value` in column `column`. Tables and sources declare one on a timestamp column
//! (`WATERMARK FOR ts AS ts - INTERVAL '5 seconds'`); the rows behind it when they arrive are
//! *late*: they never enter the views (they go to `sluice_late_rows` instead), which is what
//! makes the promise true. Operators translate the promise to their output columns (a
//! projection computing `window_start` from `ts` promises `window_start ≥ f(watermark)`), and
//! a windowed aggregate uses it to know which windows can no longer change: it emits them
//! (EMIT ON WINDOW CLOSE) and forgets them (state cleanup).
//!
//! Why per column and not per stream (as Flink does): a view can carry several time columns
//! (`window_start`, `window_end`), and the aggregate must know which of its group keys the
//! promise is about. RisingWave's derivation works the same way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::{filter_record_batch, take_record_batch};
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator as BinaryOperator};

use crate::{EngineError, EngineResult};

/// No change arriving after this has `column` below `value` (microseconds since the Unix epoch;
/// watermarks are on TIMESTAMP and TIMESTAMPTZ columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Watermark {
    /// The column, by position in the relation or operator output it is about.
    pub column: usize,
    /// The bound, in microseconds since the Unix epoch.
    pub value: i64,
}

/// Whether a column type can carry a watermark.
pub fn is_event_time_type(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(TimeUnit::Microsecond, _))
}

/// A batch split by a watermark: the rows at or after it, and the late ones (before it).
#[derive(Debug)]
pub struct SplitRows {
    /// Rows whose event time was not behind the watermark when they arrived.
    pub accepted: RecordBatch,
    /// Rows whose event time was behind it (or NULL).
    pub late: RecordBatch,
    /// For each late row: its event time (None for NULL) and the watermark it was behind.
    pub late_times: Vec<(Option<i64>, Option<i64>)>,
}

impl SplitRows {
    /// The late rows as `sluice_late_rows` records, arrived at `arrived_at` (microseconds
    /// since the Unix epoch).
    pub fn late_rows(&self, arrived_at: i64) -> Vec<crate::recovery::LateRow> {
        self.late_times
            .iter()
            .enumerate()
            .map(|(i, (event_time, watermark))| crate::recovery::LateRow {
                event_time: *event_time,
                watermark: *watermark,
                arrived_at,
                row: crate::recovery::render_row(&self.late, i),
            })
            .collect()
    }
}

/// Splits `batch` (rows in arrival order, all from `partition`) by the watermark of
/// `generator`, advancing it row by row: a row is late when its event time (column
/// `time_column`) is below the watermark of the rows before it, or NULL (a row with no time
/// cannot be placed in any window). Accepted rows advance the watermark by their value of the
/// watermark expression (`watermark_values`, one per row).
///
/// Why row by row: the result must not depend on how rows were cut into batches, so that a
/// replay after a crash (whose batches may differ) finds exactly the same late rows.
pub fn split_late(
    batch: &RecordBatch,
    time_column: usize,
    watermark_values: &dyn Array,
    generator: &mut WatermarkGenerator,
    partition: u32,
    now: Instant,
) -> EngineResult<SplitRows> {
    let times = batch
        .columns()
        .get(time_column)
        .ok_or_else(|| EngineError::Invalid(format!("no event-time column {time_column}")))?;
    if !is_event_time_type(times.data_type()) || !is_event_time_type(watermark_values.data_type()) {
        return Err(EngineError::Invalid(format!("event-time column is {}, not a timestamp", times.data_type())));
    }
    if watermark_values.len() != batch.num_rows() {
        return Err(EngineError::Invalid("one watermark value per row".into()));
    }
    let times = times.as_primitive::<TimestampMicrosecondType>();
    let values = watermark_values.as_primitive::<TimestampMicrosecondType>();
    let mut late_positions = Vec::new();
    let mut late_times = Vec::new();
    for row in 0..times.len() {
        let current = generator.current();
        let time = times.is_valid(row).then(|| times.value(row));
        let late = match time {
            None => true,
            Some(t) => current.is_some_and(|w| t < w),
        };
        if late {
            late_positions.push(row);
            late_times.push((time, current));
        } else {
            generator.observe(partition, values.is_valid(row).then(|| values.value(row)), now);
        }
    }
    if late_positions.is_empty() {
        let late = batch.slice(0, 0);
        return Ok(SplitRows { accepted: batch.clone(), late, late_times });
    }
    let keep = BooleanArray::from_iter((0..batch.num_rows()).map(|r| Some(late_positions.binary_search(&r).is_err())));
    let accepted = filter_record_batch(batch, &keep)?;
    let indices = UInt32Array::from_iter_values(late_positions.iter().map(|r| *r as u32));
    let late = take_record_batch(batch, &indices)?;
    Ok(SplitRows { accepted, late, late_times })
}

/// Tracks a source's watermark over its partitions.
///
/// Each partition's watermark is the largest watermark-expression value of its rows so far;
/// the source's is the minimum over the partitions that are active, because a slow partition
/// may still deliver rows the others have passed. A partition that delivered nothing for
/// `idle_timeout` stops holding the others back (Flink's `withIdleness`) until it delivers
/// again. The result never goes backwards.
#[derive(Debug, Clone)]
pub struct WatermarkGenerator {
    partitions: HashMap<u32, PartitionWatermark>,
    idle_timeout: Duration,
    current: Option<i64>,
}

#[derive(Debug, Clone, Copy)]
struct PartitionWatermark {
    value: Option<i64>,
    last_active: Instant,
}

impl WatermarkGenerator {
    /// A generator starting at `current` (the checkpointed watermark, if any).
    pub fn new(current: Option<i64>, idle_timeout: Duration) -> Self {
        Self { partitions: HashMap::new(), idle_timeout, current }
    }

    /// The source's watermark.
    pub fn current(&self) -> Option<i64> {
        self.current
    }

    /// Partition `partition` delivered rows whose largest watermark-expression value is
    /// `candidate` (None: rows without one) at `now`. Returns the source's watermark after it.
    pub fn observe(&mut self, partition: u32, candidate: Option<i64>, now: Instant) -> Option<i64> {
        let entry = self.partitions.entry(partition).or_insert(PartitionWatermark { value: None, last_active: now });
        entry.last_active = now;
        if let Some(c) = candidate {
            entry.value = Some(entry.value.map_or(c, |v| v.max(c)));
        }
        self.advance(now)
    }

    /// Re-evaluates idleness at `now` (call it periodically while no rows come).
    pub fn advance(&mut self, now: Instant) -> Option<i64> {
        let active = self.partitions.values().filter(|p| now.saturating_duration_since(p.last_active) < self.idle_timeout);
        let mut min: Option<Option<i64>> = None;
        for p in active {
            min = Some(match min {
                None => p.value,
                Some(m) => match (m, p.value) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    _ => None,
                },
            });
        }
        // With every partition idle, the largest partition watermark holds.
        let candidate = match min {
            Some(m) => m,
            None => self.partitions.values().filter_map(|p| p.value).max(),
        };
        if let Some(c) = candidate {
            self.current = Some(self.current.map_or(c, |w| w.max(c)));
        }
        self.current
    }
}

/// The one input column `expr` is a non-decreasing function of, if it is one of the forms
/// Sluice knows to be monotone: the column itself, a cast between timestamp types, the column
/// plus or minus a constant interval, `date_trunc(constant, e)`, and the window functions
/// `sluice_tumble_start(e, ..)` and `sluice_hop_starts(e, ..)` (whose smallest element is
/// monotone). Anything else carries no watermark.
pub fn monotone_column(expr: &Expr, schema: &DFSchema) -> Option<usize> {
    match expr {
        Expr::Column(c) => schema.index_of_column(c).ok(),
        Expr::Alias(alias) => monotone_column(&alias.expr, schema),
        Expr::Cast(cast) if is_event_time_type(cast.field.data_type()) => monotone_column(&cast.expr, schema),
        Expr::BinaryExpr(BinaryExpr { left, op: BinaryOperator::Plus | BinaryOperator::Minus, right }) => {
            constant_interval(right).then(|| monotone_column(left, schema)).flatten()
        }
        Expr::ScalarFunction(f) => match f.name() {
            "sluice_tumble_start" | "sluice_hop_starts" => {
                let (first, rest) = f.args.split_first()?;
                rest.iter().all(|a| matches!(a, Expr::Literal(..))).then(|| monotone_column(first, schema)).flatten()
            }
            "date_trunc" => match f.args.as_slice() {
                [Expr::Literal(..), e] => monotone_column(e, schema),
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

fn constant_interval(expr: &Expr) -> bool {
    match expr {
        Expr::Literal(v, _) => matches!(
            v,
            ScalarValue::IntervalMonthDayNano(Some(_))
                | ScalarValue::IntervalDayTime(Some(_))
                | ScalarValue::IntervalYearMonth(Some(_))
        ),
        Expr::Cast(cast) => constant_interval(&cast.expr),
        _ => false,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn batch(times: &[Option<i64>]) -> RecordBatch {
        let schema = Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from_iter_values(0..times.len() as i64)),
                Arc::new(TimestampMicrosecondArray::from(times.to_vec())),
            ],
        )
        .unwrap()
    }

    fn split(times: &[Option<i64>], generator: &mut WatermarkGenerator) -> SplitRows {
        let rows = batch(times);
        // The watermark expression: ts - 2.
        let values = TimestampMicrosecondArray::from(times.iter().map(|t| t.map(|t| t - 2)).collect::<Vec<_>>());
        split_late(&rows, 1, &values, generator, 0, Instant::now()).unwrap()
    }

    #[test]
    fn rows_behind_the_watermark_of_the_rows_before_them_or_without_time_are_late() {
        let mut generator = WatermarkGenerator::new(None, Duration::MAX);
        let out = split(&[Some(10), Some(9), Some(7), None, Some(8), Some(12)], &mut generator);
        // Watermark 8 after the first row: 7 is late (and NULL); 9 and 8 are not.
        assert_eq!(out.accepted.num_rows(), 4);
        assert_eq!(out.late.column(0).as_primitive::<datafusion::arrow::datatypes::Int64Type>().values().to_vec(), vec![2, 3]);
        assert_eq!(out.late_times, vec![(Some(7), Some(8)), (None, Some(8))]);
        assert_eq!(generator.current(), Some(10));
        // The same rows cut into other batches give the same late rows.
        let mut again = WatermarkGenerator::new(None, Duration::MAX);
        let a = split(&[Some(10), Some(9)], &mut again);
        let b = split(&[Some(7), None, Some(8), Some(12)], &mut again);
        assert_eq!(a.late.num_rows() + b.late.num_rows(), 2);
        assert_eq!(again.current(), Some(10));
    }

    #[test]
    fn the_source_watermark_is_the_minimum_over_active_partitions() {
        let start = Instant::now();
        let mut generator = WatermarkGenerator::new(None, Duration::from_secs(10));
        assert_eq!(generator.observe(0, Some(100), start), Some(100));
        // Partition 1 has delivered rows without a time yet: it holds nothing back...
        assert_eq!(generator.observe(1, Some(40), start), Some(100), "never goes backwards");
        assert_eq!(generator.observe(0, Some(200), start), Some(100));
        assert_eq!(generator.observe(1, Some(150), start), Some(150));
        // ...until it falls idle: then the active partitions alone decide.
        let later = start + Duration::from_secs(11);
        assert_eq!(generator.observe(0, Some(300), later), Some(300));
        // Back from idleness, it holds the watermark again (which never goes backwards).
        assert_eq!(generator.observe(1, Some(160), later), Some(300));
        assert_eq!(generator.observe(0, Some(400), later), Some(300));
        assert_eq!(generator.observe(1, Some(500), later), Some(400));
    }

    #[test]
    fn monotone_forms_are_recognized() {
        use datafusion::logical_expr::{col, lit};
        let schema = DFSchema::try_from(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Microsecond, None), true),
        ]))
        .unwrap();
        let interval = lit(ScalarValue::new_interval_mdn(0, 0, 5_000_000_000));
        assert_eq!(monotone_column(&col("ts"), &schema), Some(1));
        assert_eq!(monotone_column(&(col("ts") - interval.clone()).alias("w"), &schema), Some(1));
        assert_eq!(monotone_column(&(col("ts") * lit(2)), &schema), None);
        assert_eq!(monotone_column(&(interval - col("ts")), &schema), None);
    }
}
