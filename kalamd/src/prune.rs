//! File pruning of scans (storage.md §9 step 1): the filters DataFusion pushes into a table
//! scan are read for bounds on the primary key and lower bounds on `_updated`, and flushed
//! files whose manifest ranges cannot hold a matching row are not opened.
//!
//! Only bounds that cannot change the merge result are used. Any bound on the primary key is
//! safe (the merge keeps one version per key, so a file without matching keys holds nothing
//! that decides a matching row). On `_updated` only lower bounds (`>`, `>=`) are: every
//! version newer than a matching one also matches, so the newest version of a matching key is
//! always in a kept file. An upper bound could skip a file holding the newest version and let
//! an older one show through, so it is never used. DataFusion still applies every filter.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use kalam_types::codec::encode_pk;
use kalam_types::schema::{TableDefinition, UPDATED_COLUMN};
use kalam_types::{KalamType, Value};

use crate::flush::ManifestEntry;

/// What the pushed-down filters say about the rows a scan can return.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScanBounds {
    /// Bounds on the encoded primary key, with whether the bound itself matches.
    pk_min: Option<(Vec<u8>, bool)>,
    pk_max: Option<(Vec<u8>, bool)>,
    /// The key is one of these (from `=` or `IN`).
    pk_in: Option<Vec<Vec<u8>>>,
    /// Matching rows have `_updated` above this (µs), or equal to it when the flag is set.
    updated_min: Option<(i64, bool)>,
}

impl ScanBounds {
    /// Bounds implied by a conjunction of filters on `def`.
    pub fn from_filters(def: &TableDefinition, filters: &[Expr]) -> Self {
        let mut bounds = Self::default();
        for f in filters {
            bounds.add(def, f);
        }
        bounds
    }

    fn add(&mut self, def: &TableDefinition, expr: &Expr) {
        let pk = &def.columns[def.primary_key_index()];
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                self.add(def, left);
                self.add(def, right);
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, literal, op) = match (left.as_ref(), right.as_ref()) {
                    (Expr::Column(c), Expr::Literal(v, _)) => (c.name.as_str(), v, *op),
                    (Expr::Literal(v, _), Expr::Column(c)) => match op.swap() {
                        Some(swapped) => (c.name.as_str(), v, swapped),
                        None => return,
                    },
                    _ => return,
                };
                if column == pk.name {
                    let Some(key) = key_of(pk.data_type, literal) else { return };
                    match op {
                        Operator::Eq => self.key_in(vec![key]),
                        Operator::Gt => self.key_above(key, false),
                        Operator::GtEq => self.key_above(key, true),
                        Operator::Lt => self.key_below(key, false),
                        Operator::LtEq => self.key_below(key, true),
                        _ => {}
                    }
                } else if column == UPDATED_COLUMN
                    && matches!(op, Operator::Gt | Operator::GtEq)
                    && let Some(t) = micros_of(literal)
                {
                    self.updated_after(t, op == Operator::GtEq);
                }
            }
            Expr::Between(Between { expr, negated: false, low, high }) => {
                let (Expr::Column(c), Expr::Literal(low, _), Expr::Literal(high, _)) =
                    (expr.as_ref(), low.as_ref(), high.as_ref())
                else {
                    return;
                };
                if c.name == pk.name {
                    if let Some(k) = key_of(pk.data_type, low) {
                        self.key_above(k, true);
                    }
                    if let Some(k) = key_of(pk.data_type, high) {
                        self.key_below(k, true);
                    }
                } else if c.name == UPDATED_COLUMN
                    && let Some(t) = micros_of(low)
                {
                    self.updated_after(t, true);
                }
            }
            Expr::InList(list) if !list.negated => {
                let Expr::Column(c) = list.expr.as_ref() else { return };
                if c.name != pk.name {
                    return;
                }
                let keys: Option<Vec<Vec<u8>>> = list
                    .list
                    .iter()
                    .map(|e| match e {
                        Expr::Literal(v, _) => key_of(pk.data_type, v),
                        _ => None,
                    })
                    .collect();
                if let Some(keys) = keys {
                    self.key_in(keys);
                }
            }
            _ => {}
        }
    }

    fn updated_after(&mut self, t: i64, inclusive: bool) {
        let tighter = match self.updated_min {
            None => true,
            Some((m, m_inclusive)) => t > m || (t == m && m_inclusive && !inclusive),
        };
        if tighter {
            self.updated_min = Some((t, inclusive));
        }
    }

    fn key_in(&mut self, mut keys: Vec<Vec<u8>>) {
        if let Some(existing) = &self.pk_in {
            keys.retain(|k| existing.contains(k));
        }
        self.pk_in = Some(keys);
    }

    fn key_above(&mut self, key: Vec<u8>, inclusive: bool) {
        let tighter = match &self.pk_min {
            None => true,
            Some((m, m_inclusive)) => key > *m || (key == *m && *m_inclusive && !inclusive),
        };
        if tighter {
            self.pk_min = Some((key, inclusive));
        }
    }

    fn key_below(&mut self, key: Vec<u8>, inclusive: bool) {
        let tighter = match &self.pk_max {
            None => true,
            Some((m, m_inclusive)) => key < *m || (key == *m && *m_inclusive && !inclusive),
        };
        if tighter {
            self.pk_max = Some((key, inclusive));
        }
    }

    /// True when key `k` satisfies the lower bound.
    fn above_min(&self, k: &[u8]) -> bool {
        self.pk_min.as_ref().is_none_or(|(lo, inclusive)| k > lo.as_slice() || (*inclusive && k == lo.as_slice()))
    }

    /// True when key `k` satisfies the upper bound.
    fn below_max(&self, k: &[u8]) -> bool {
        self.pk_max.as_ref().is_none_or(|(hi, inclusive)| k < hi.as_slice() || (*inclusive && k == hi.as_slice()))
    }

    /// False only when the entry's recorded ranges prove no matching row is in the file.
    pub fn may_match(&self, entry: &ManifestEntry) -> bool {
        if let Some((t, inclusive)) = self.updated_min {
            let newest = entry.max_updated_us;
            if newest < t || (newest == t && !inclusive) {
                return false;
            }
        }
        let Some((min, max)) = entry.key_range() else { return true };
        if let Some(keys) = &self.pk_in {
            return keys.iter().any(|k| {
                self.above_min(k)
                    && self.below_max(k)
                    && min.as_slice() <= k.as_slice()
                    && k.as_slice() <= max.as_slice()
            });
        }
        // The file's largest key must pass the lower bound and its smallest the upper one.
        self.above_min(&max) && self.below_max(&min)
    }

    /// True when the bounds exclude nothing.
    pub fn is_unbounded(&self) -> bool {
        *self == Self::default()
    }
}

/// The encoded key of a literal compared with the primary key, when the literal has the key's
/// own kind (other comparisons are left to DataFusion).
fn key_of(pk_type: KalamType, v: &ScalarValue) -> Option<Vec<u8>> {
    let value = match (pk_type, v) {
        (KalamType::BigInt, ScalarValue::Int64(Some(i))) => Value::BigInt(*i),
        (KalamType::BigInt, ScalarValue::Int32(Some(i))) => Value::BigInt(i64::from(*i)),
        (
            KalamType::Text,
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)),
        ) => Value::Text(s.clone()),
        _ => return None,
    };
    encode_pk(&value)
}

/// A timestamp literal in microseconds, rounded down: a version at the rounded value is below
/// the literal, so `>` stays exact and `>=` only widens.
fn micros_of(v: &ScalarValue) -> Option<i64> {
    match v {
        ScalarValue::TimestampMicrosecond(Some(t), _) => Some(*t),
        ScalarValue::TimestampNanosecond(Some(t), _) => Some(t.div_euclid(1000)),
        ScalarValue::TimestampMillisecond(Some(t), _) => t.checked_mul(1000),
        ScalarValue::TimestampSecond(Some(t), _) => t.checked_mul(1_000_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;

    fn def() -> TableDefinition {
        crate::test_defs::bigint_key_table(kalam_types::schema::TableType::Shared, "t")
    }

    fn file(min: i64, max: i64, max_updated: i64) -> ManifestEntry {
        let key = |i| encode_pk(&Value::BigInt(i)).map(|k| kalam_types::value::encode_hex(&k));
        ManifestEntry {
            storage_id: "local".into(),
            path: "f".into(),
            size_bytes: 0,
            row_count: 1,
            min_updated_us: 0,
            max_updated_us: max_updated,
            min_pk: key(min),
            max_pk: key(max),
            schema_version: 1,
            job_id: "j".into(),
            created_at_us: 0,
            base: None,
        }
    }

    fn bounds(filters: Vec<Expr>) -> ScanBounds {
        ScanBounds::from_filters(&def(), &filters)
    }

    #[test]
    fn primary_key_bounds_skip_files_outside_them() {
        let (low, high) = (file(1, 100, 0), file(101, 200, 0));
        let gt = bounds(vec![col("id").gt(lit(150i64))]);
        assert!(!gt.may_match(&low) && gt.may_match(&high));
        let past_low = bounds(vec![col("id").gt(lit(100i64))]);
        assert!(!past_low.may_match(&low) && past_low.may_match(&high), "exclusive bounds are exact");
        let from_low = bounds(vec![col("id").gt_eq(lit(100i64))]);
        assert!(from_low.may_match(&low));
        let under_high = bounds(vec![col("id").lt(lit(101i64))]);
        assert!(under_high.may_match(&low) && !under_high.may_match(&high));
        let le = bounds(vec![col("id").lt_eq(lit(100i64))]);
        assert!(le.may_match(&low) && !le.may_match(&high));
        let eq = bounds(vec![lit(42i64).eq(col("id"))]);
        assert!(eq.may_match(&low) && !eq.may_match(&high));
        let within = bounds(vec![col("id").in_list(vec![lit(7i64), lit(300i64)], false)]);
        assert!(within.may_match(&low) && !within.may_match(&high));
        let between = bounds(vec![col("id").between(lit(120i64), lit(130i64))]);
        assert!(!between.may_match(&low) && between.may_match(&high));
        let both = bounds(vec![col("id").gt(lit(50i64)).and(col("id").lt(lit(60i64)))]);
        assert!(both.may_match(&low) && !both.may_match(&high));
    }

    #[test]
    fn only_lower_bounds_on_updated_prune() {
        let (old, new) = (file(1, 10, 1_000), file(1, 10, 5_000));
        let ts = |t: i64| lit(ScalarValue::TimestampMicrosecond(Some(t), None));
        let after = bounds(vec![col(UPDATED_COLUMN).gt(ts(2_000))]);
        assert!(!after.may_match(&old) && after.may_match(&new));
        assert!(!bounds(vec![col(UPDATED_COLUMN).gt(ts(1_000))]).may_match(&old));
        assert!(bounds(vec![col(UPDATED_COLUMN).gt_eq(ts(1_000))]).may_match(&old));
        // An upper bound could hide the newest version of a key: never used.
        let before = bounds(vec![col(UPDATED_COLUMN).lt(ts(2_000))]);
        assert!(before.is_unbounded());
    }

    #[test]
    fn other_filters_and_mismatched_literals_prune_nothing() {
        for f in [
            col("id").gt(lit("5")),
            col("id").not_eq(lit(5i64)),
            col("id").in_list(vec![lit(1i64)], true),
            col("other").gt(lit(1i64)),
            col("id").gt(lit(1i64)).or(col("id").lt(lit(0i64))),
        ] {
            assert!(bounds(vec![f.clone()]).is_unbounded(), "{f}");
        }
    }
}
