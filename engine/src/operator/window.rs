//! [`WindowOperator`]: the TUMBLE and HOP window table functions over a changelog.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampMicrosecondArray, UInt32Array};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};

use super::Operator;
use crate::{ChangeBatch, EngineError, EngineResult};

/// Which windows a row falls in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    /// `TUMBLE(rel, ts, size [, offset])`: consecutive windows of `size`, shifted by `offset`.
    Tumble {
        /// Window length in microseconds.
        size: i64,
        /// Shift of the window grid in microseconds.
        offset: i64,
    },
    /// `HOP(rel, ts, slide, size)`: windows of `size` starting every `slide`; a row is in
    /// `size / slide` of them.
    Hop {
        /// Distance between window starts in microseconds.
        slide: i64,
        /// Window length in microseconds.
        size: i64,
    },
}

/// Adds `window_start` and `window_end` to each change, once per window its time falls in.
///
/// Semantics with retractions: the windows of a row depend only on its time column, so the
/// delete of a row yields deletes of exactly the window rows its insert yielded. Rows whose
/// time is NULL are in no window (as in RisingWave and Flink). Windows are half open:
/// `window_start <= ts < window_end`. Stateless.
#[derive(Debug)]
pub struct WindowOperator {
    kind: WindowKind,
    time_column: usize,
    output: SchemaRef,
}

impl WindowOperator {
    /// Windows over column `time_column` of `input` (a TIMESTAMP or TIMESTAMPTZ column).
    pub fn try_new(input: &Schema, time_column: usize, kind: WindowKind) -> EngineResult<Self> {
        let field = input.fields().get(time_column).ok_or_else(|| EngineError::Invalid("no such time column".into()))?;
        let DataType::Timestamp(_, zone) = field.data_type() else {
            return Err(EngineError::Invalid(format!("window time column {} is {}, not a timestamp", field.name(), field.data_type())));
        };
        match kind {
            WindowKind::Tumble { size, .. } if size <= 0 => return Err(EngineError::Invalid("TUMBLE size must be positive".into())),
            WindowKind::Hop { slide, size } if slide <= 0 || size <= 0 || size % slide != 0 => {
                return Err(EngineError::Invalid("HOP needs a positive slide that divides the size".into()));
            }
            _ => {}
        }
        let bound = DataType::Timestamp(TimeUnit::Microsecond, zone.clone());
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new("window_start", bound.clone(), false));
        fields.push(Field::new("window_end", bound, false));
        Ok(Self { kind, time_column, output: Arc::new(Schema::new(fields)) })
    }

    /// The output schema: the input's columns, then `window_start` and `window_end`.
    pub fn schema(&self) -> &SchemaRef {
        &self.output
    }

    /// The starts of the windows containing time `ts`, in ascending order.
    fn window_starts(&self, ts: i64) -> Vec<i64> {
        match self.kind {
            WindowKind::Tumble { size, offset } => vec![(ts - offset).div_euclid(size) * size + offset],
            WindowKind::Hop { slide, size } => {
                let last = ts.div_euclid(slide) * slide;
                let count = size / slide;
                (0..count).rev().map(|k| last - k * slide).filter(|start| ts < start + size).collect()
            }
        }
    }

    fn size(&self) -> i64 {
        match self.kind {
            WindowKind::Tumble { size, .. } | WindowKind::Hop { size, .. } => size,
        }
    }
}

impl Operator for WindowOperator {
    fn name(&self) -> &str {
        match self.kind {
            WindowKind::Tumble { .. } => "Tumble",
            WindowKind::Hop { .. } => "Hop",
        }
    }

    fn process(&mut self, changes: ChangeBatch) -> EngineResult<Vec<ChangeBatch>> {
        let zone = match self.output.field(self.output.fields().len() - 1).data_type() {
            DataType::Timestamp(_, zone) => zone.clone(),
            _ => None,
        };
        let time = cast(changes.data().column(self.time_column), &DataType::Timestamp(TimeUnit::Microsecond, zone))?;
        let time = time.as_primitive::<TimestampMicrosecondType>();
        let mut source_rows = Vec::new();
        let mut starts = Vec::new();
        for row in 0..time.len() {
            if time.is_null(row) {
                continue;
            }
            for start in self.window_starts(time.value(row)) {
                source_rows.push(row as u32);
                starts.push(start);
            }
        }
        if source_rows.is_empty() {
            return Ok(Vec::new());
        }
        let indices = UInt32Array::from(source_rows);
        let mut columns: Vec<ArrayRef> =
            changes.data().columns().iter().map(|c| take(c.as_ref(), &indices, None)).collect::<Result<_, _>>()?;
        let size = self.size();
        let bound_type = self.output.field(self.output.fields().len() - 1).data_type().clone();
        let ends: Vec<i64> = starts.iter().map(|s| s + size).collect();
        columns.push(cast(&TimestampMicrosecondArray::from(starts), &bound_type)?);
        columns.push(cast(&TimestampMicrosecondArray::from(ends), &bound_type)?);
        let ops = take(changes.ops(), &indices, None)?;
        let data = RecordBatch::try_new(Arc::clone(&self.output), columns)?;
        Ok(vec![ChangeBatch::try_new(data, ops.as_primitive::<Int8Type>().clone())?])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tumble_assigns_one_window_and_keeps_ops() {
        let input = ChangeBatch::from_pretty(" T S\n + a 0\n + b 59\n + c 60\n - a 0\n + d .\n + e -1").unwrap();
        let mut tumble = WindowOperator::try_new(&input.schema(), 1, WindowKind::Tumble { size: 60, offset: 0 }).unwrap();
        let out = tumble.process(input).unwrap();
        assert_eq!(out[0].to_pretty(), "+ a 0 0 60\n+ b 59 0 60\n+ c 60 60 120\n- a 0 0 60\n+ e -1 -60 0\n");
    }

    #[test]
    fn tumble_with_offset() {
        let input = ChangeBatch::from_pretty(" S\n + 5\n + 15").unwrap();
        let mut tumble = WindowOperator::try_new(&input.schema(), 0, WindowKind::Tumble { size: 10, offset: 5 }).unwrap();
        assert_eq!(tumble.process(input).unwrap()[0].to_pretty(), "+ 5 5 15\n+ 15 15 25\n");
    }

    #[test]
    fn hop_puts_a_row_in_size_over_slide_windows() {
        let input = ChangeBatch::from_pretty(" S\n + 25\n - 30").unwrap();
        let mut hop = WindowOperator::try_new(&input.schema(), 0, WindowKind::Hop { slide: 10, size: 30 }).unwrap();
        assert_eq!(
            hop.process(input).unwrap()[0].to_pretty(),
            "+ 25 0 30\n+ 25 10 40\n+ 25 20 50\n- 30 10 40\n- 30 20 50\n- 30 30 60\n"
        );
    }

    #[test]
    fn bad_windows_are_refused() {
        let schema = ChangeBatch::from_pretty(" S I").unwrap().schema();
        assert!(WindowOperator::try_new(&schema, 1, WindowKind::Tumble { size: 10, offset: 0 }).is_err());
        assert!(WindowOperator::try_new(&schema, 0, WindowKind::Tumble { size: 0, offset: 0 }).is_err());
        assert!(WindowOperator::try_new(&schema, 0, WindowKind::Hop { slide: 7, size: 30 }).is_err());
        assert!(WindowOperator::try_new(&schema, 5, WindowKind::Tumble { size: 10, offset: 0 }).is_err());
    }
}
