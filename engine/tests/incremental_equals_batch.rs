//! Incremental equals batch for the stateless operators: a random changelog (inserts, and
//! deletes of rows inserted earlier) pushed through Filter → Project, summed up, equals the
//! same filter and projection evaluated once over the rows that remain.
#![allow(clippy::unwrap_used, missing_docs)]

use std::collections::BTreeMap;

use datafusion::logical_expr::Operator as BinaryOp;
use datafusion::physical_expr::expressions::{binary, col, lit};
use sluice_engine::operator::{FilterOperator, ProjectOperator};
use sluice_engine::{ChangeBatch, Op, Operator};

fn consolidate(batches: &[ChangeBatch]) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for batch in batches {
        for line in batch.to_pretty().lines() {
            let (op, row) = line.split_at(1);
            *counts.entry(row.trim().to_string()).or_insert(0) += if op == "+" { 1 } else { -1 };
        }
    }
    counts.retain(|_, n| *n != 0);
    counts
}

#[test]
fn filter_project_incremental_equals_batch() {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    for _round in 0..20 {
        let mut live: Vec<(u64, u64)> = Vec::new();
        let mut text = String::from(" I I\n");
        for _ in 0..200 {
            if !live.is_empty() && next(3) == 0 {
                let (a, b) = live.remove(next(live.len() as u64) as usize);
                text.push_str(&format!("- {a} {b}\n"));
            } else {
                let row = (next(20), next(100));
                live.push(row);
                text.push_str(&format!("+ {} {}\n", row.0, row.1));
            }
        }
        let changes = ChangeBatch::from_pretty(&text).unwrap();
        let schema = changes.schema();
        let predicate = binary(col("c0", &schema).unwrap(), BinaryOp::Lt, lit(10i64), &schema).unwrap();
        let sum = binary(col("c0", &schema).unwrap(), BinaryOp::Plus, col("c1", &schema).unwrap(), &schema).unwrap();
        let exprs = vec![(sum, "s".to_string()), (col("c0", &schema).unwrap(), "a".to_string())];

        // Incremental: the whole changelog, in slices, through the operators.
        let mut filter = FilterOperator::try_new(predicate.clone(), &schema).unwrap();
        let mut project = ProjectOperator::try_new(exprs.clone(), &schema).unwrap();
        let mut output = Vec::new();
        for start in (0..changes.num_rows()).step_by(37) {
            let len = 37.min(changes.num_rows() - start);
            let slice = ChangeBatch::try_new(changes.data().slice(start, len), changes.ops().slice(start, len)).unwrap();
            for filtered in filter.process(slice).unwrap() {
                output.extend(project.process(filtered).unwrap());
            }
        }

        // Batch: the rows that remain, evaluated once.
        let mut remaining = String::from(" I I\n");
        for (a, b) in &live {
            remaining.push_str(&format!("+ {a} {b}\n"));
        }
        let batch_input = ChangeBatch::from_pretty(&remaining).unwrap();
        let mut batch_filter = FilterOperator::try_new(predicate, &schema).unwrap();
        let mut batch_project = ProjectOperator::try_new(exprs, &schema).unwrap();
        let mut expected = Vec::new();
        for filtered in batch_filter.process(batch_input).unwrap() {
            expected.extend(batch_project.process(filtered).unwrap());
        }
        assert!(expected.iter().all(|b| (0..b.num_rows()).all(|i| b.op(i) == Op::Insert)));
        assert_eq!(consolidate(&output), consolidate(&expected));
    }
}
