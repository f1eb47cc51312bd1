//! The columnar read of one partition for DataFusion scans (storage.md §9), producing the same
//! rows as [`crate::read::read_partition`] without turning flushed rows into values.
//!
//! Each flushed file the bounds keep is read as Arrow arrays (only the columns the query needs,
//! plus the key, `_updated` and `_deleted`) and projected onto the current schema by column id;
//! the buffer is one more source. Every source is sorted by primary key (files are written in
//! key order, the buffer is scanned in key order), so a k-way merge over the key columns picks
//! the newest version of each key (the buffer wins ties) and the output is gathered column by
//! column with `interleave`, in key order.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, RecordBatch, RecordBatchOptions, new_null_array,
};
use datafusion::arrow::compute::{cast, concat, filter, interleave};
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef, TimestampMicrosecondType};
use datafusion::parquet::arrow::ProjectionMask;
use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use kalam_types::arrow::{COLUMN_ID_KEY, build_array, table_schema};
use kalam_types::ids::UserId;
use kalam_types::schema::{DELETED_COLUMN, TableDefinition, TableType, UPDATED_COLUMN, added_column_value};
use kalam_types::{KalamType, Value};

use crate::engine::Engine;
use crate::error::EngineError;
use crate::flush::ManifestEntry;
use crate::prune::ScanBounds;
use crate::read::{MergedRow, manifest_entries};

/// What a scan returns: `columns` of the table schema with system columns (user columns, then
/// `_updated`, `_deleted`), in key order, one row per visible key.
pub struct PartitionScan<'a> {
    pub def: &'a TableDefinition,
    pub user: Option<&'a UserId>,
    pub bounds: &'a ScanBounds,
    pub include_deleted: bool,
    /// Indexes into the table schema with system columns.
    pub columns: &'a [usize],
}

/// One sorted source: a file or the buffer, with the columns of the full table schema that
/// were read (`None` for columns the query does not need).
struct Source {
    columns: Vec<Option<ArrayRef>>,
    rows: usize,
}

impl PartitionScan<'_> {
    fn pk_index(&self) -> usize {
        self.def.primary_key_index()
    }

    fn updated_index(&self) -> usize {
        self.def.columns.len()
    }

    fn deleted_index(&self) -> usize {
        self.def.columns.len() + 1
    }

    /// Columns every source must provide: the requested ones, the key and the system columns.
    fn needed(&self) -> Vec<bool> {
        let mut needed = vec![false; self.def.columns.len() + 2];
        for &c in self.columns {
            needed[c] = true;
        }
        for c in [self.pk_index(), self.updated_index(), self.deleted_index()] {
            needed[c] = true;
        }
        needed
    }
}

/// Reads the partition and returns one batch of `schema` (the requested columns).
pub fn scan_partition(engine: &Engine, req: &PartitionScan<'_>, schema: SchemaRef) -> Result<RecordBatch, EngineError> {
    let def = req.def;
    let user = if def.table_type == TableType::Shared { None } else { req.user };
    let needed = req.needed();
    // The buffer is read before the manifest (see `read_partition`).
    let hot = crate::read::read_buffer(engine, def, user)?;
    let mut entries = manifest_entries(engine, def, user)?;
    if !req.bounds.is_unbounded() {
        let listed = entries.len();
        entries.retain(|e| req.bounds.may_match(e));
        tracing::debug!(table = %def.qualified_name(), listed, read = entries.len(), "flushed files pruned");
    }
    let mut sources = Vec::with_capacity(entries.len() + 1);
    for entry in &entries {
        let source = read_file(engine, def, entry, &needed)?;
        if source.rows > 0 {
            sources.push(source);
        }
    }
    if !hot.is_empty() {
        sources.push(buffer_source(def, &hot, &needed));
    }
    let winners = merge(req, &sources)?;
    let mut arrays = Vec::with_capacity(req.columns.len());
    for &c in req.columns {
        let parts: Vec<&dyn Array> =
            sources.iter().map(|s| s.columns[c].as_deref().expect("requested column read")).collect();
        let array = match (&winners, parts.as_slice()) {
            (Winners::AllOf(src), _) => sources[*src].columns[c].clone().expect("requested column read"),
            (Winners::Filtered(src, mask), _) => filter(parts[*src], mask).map_err(EngineError::internal)?,
            (Winners::Picked(picks), []) if picks.is_empty() => {
                new_null_array(schema.field(arrays.len()).data_type(), 0)
            }
            (Winners::Picked(picks), _) => interleave(&parts, picks).map_err(EngineError::internal)?,
        };
        arrays.push(array);
    }
    let rows = match &winners {
        Winners::AllOf(src) => sources[*src].rows,
        Winners::Filtered(_, mask) => mask.true_count(),
        Winners::Picked(picks) => picks.len(),
    };
    let options = RecordBatchOptions::new().with_row_count(Some(rows));
    RecordBatch::try_new_with_options(schema, arrays, &options).map_err(EngineError::internal)
}

/// The visible rows, by source.
enum Winners {
    /// Every row of one source.
    AllOf(usize),
    /// The rows of one source where the mask is true.
    Filtered(usize, BooleanArray),
    /// `(source, row)` in output order.
    Picked(Vec<(usize, usize)>),
}

/// The key column of every source, compared without encoding.
enum Keys<'a> {
    BigInt(Vec<&'a datafusion::arrow::array::PrimitiveArray<Int64Type>>),
    Text(Vec<&'a datafusion::arrow::array::StringArray>),
}

impl Keys<'_> {
    fn cmp(&self, a: (usize, usize), b: (usize, usize)) -> Ordering {
        match self {
            Keys::BigInt(k) => k[a.0].value(a.1).cmp(&k[b.0].value(b.1)),
            Keys::Text(k) => k[a.0].value(a.1).as_bytes().cmp(k[b.0].value(b.1).as_bytes()),
        }
    }
}

/// A source's current row, ordered by key (then source, so the heap pops equal keys together).
struct Head<'k, 'a> {
    keys: &'k Keys<'a>,
    at: (usize, usize),
}

impl PartialEq for Head<'_, '_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Head<'_, '_> {}
impl PartialOrd for Head<'_, '_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Head<'_, '_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.keys.cmp(self.at, other.at).then(self.at.0.cmp(&other.at.0))
    }
}

/// Picks the newest version of every key across the sources (ties: the later source, so the
/// buffer, which is last), dropping deleted versions unless the request keeps them.
fn merge(req: &PartitionScan<'_>, sources: &[Source]) -> Result<Winners, EngineError> {
    let column = |s: &Source, i: usize| s.columns[i].clone().expect("system column read");
    let deleted: Vec<ArrayRef> = sources.iter().map(|s| column(s, req.deleted_index())).collect();
    let is_deleted = |src: usize, row: usize| deleted[src].as_boolean().value(row);
    if sources.is_empty() {
        return Ok(Winners::Picked(Vec::new()));
    }
    if sources.len() == 1 {
        // One sorted source has one version per key.
        if req.include_deleted || deleted[0].as_boolean().true_count() == 0 {
            return Ok(Winners::AllOf(0));
        }
        let mask = datafusion::arrow::compute::not(deleted[0].as_boolean()).map_err(EngineError::internal)?;
        return Ok(Winners::Filtered(0, mask));
    }
    let updated: Vec<ArrayRef> = sources.iter().map(|s| column(s, req.updated_index())).collect();
    let updated_at = |src: usize, row: usize| updated[src].as_primitive::<TimestampMicrosecondType>().value(row);
    let pk: Vec<ArrayRef> = sources.iter().map(|s| column(s, req.pk_index())).collect();
    let keys = match pk.first().map(|a| a.data_type()) {
        Some(DataType::Int64) => Keys::BigInt(pk.iter().map(|a| a.as_primitive::<Int64Type>()).collect()),
        Some(DataType::Utf8) => Keys::Text(pk.iter().map(|a| a.as_string::<i32>()).collect()),
        other => return Err(EngineError::internal(format!("unsupported primary-key array {other:?}"))),
    };
    let mut heap: BinaryHeap<Reverse<Head<'_, '_>>> = BinaryHeap::with_capacity(sources.len());
    for (src, s) in sources.iter().enumerate() {
        if s.rows > 0 {
            heap.push(Reverse(Head { keys: &keys, at: (src, 0) }));
        }
    }
    let total: usize = sources.iter().map(|s| s.rows).sum();
    let mut picks = Vec::with_capacity(total);
    // The heads holding the current key (reused: one allocation for the whole merge).
    let mut advance = Vec::with_capacity(sources.len());
    while let Some(Reverse(first)) = heap.pop() {
        let mut best = first.at;
        advance.clear();
        advance.push(first.at);
        while let Some(Reverse(next)) = heap.peek() {
            if keys.cmp(next.at, best) != Ordering::Equal {
                break;
            }
            let at = next.at;
            heap.pop();
            // Heads pop in source order, so `>=` lets a later source win a tie.
            if updated_at(at.0, at.1) >= updated_at(best.0, best.1) {
                best = at;
            }
            advance.push(at);
        }
        if req.include_deleted || !is_deleted(best.0, best.1) {
            picks.push(best);
        }
        for &(src, row) in &advance {
            if row + 1 < sources[src].rows {
                heap.push(Reverse(Head { keys: &keys, at: (src, row + 1) }));
            }
        }
    }
    Ok(Winners::Picked(picks))
}

/// The buffered rows as a source (only the needed columns are built).
fn buffer_source(def: &TableDefinition, rows: &[MergedRow], needed: &[bool]) -> Source {
    let n = def.columns.len();
    let columns = needed
        .iter()
        .enumerate()
        .map(|(i, &need)| {
            need.then(|| match i {
                i if i < n => build_array(def.columns[i].data_type, rows.iter().map(|r| &r.values[i])),
                i if i == n => {
                    let v: Vec<Value> = rows.iter().map(|r| Value::Timestamp(r.updated_us)).collect();
                    build_array(KalamType::Timestamp, v.iter())
                }
                _ => Arc::new(BooleanArray::from(rows.iter().map(|r| r.deleted).collect::<Vec<_>>())) as ArrayRef,
            })
        })
        .collect();
    Source { columns, rows: rows.len() }
}

/// Reads the needed columns of one flushed file onto the current schema: matched by column id,
/// cast when the column was widened, the literal DEFAULT (or NULL) when the file predates it.
fn read_file(
    engine: &Engine,
    def: &TableDefinition,
    entry: &ManifestEntry,
    needed: &[bool],
) -> Result<Source, EngineError> {
    let (path, source) = engine.open_file(entry)?;
    let metadata = engine.parquet_metadata(&path, &source)?;
    let err = |e: &dyn std::fmt::Display| EngineError::Parquet(format!("{}: {e}", path.display()));
    let file_schema = metadata.schema().clone();
    let n = def.columns.len();
    // Where each needed column of the current schema is in the file, if it is there.
    let position = |i: usize| -> Option<usize> {
        let fields = file_schema.fields();
        match i {
            i if i < n => {
                let id = def.columns[i].column_id.to_string();
                fields.iter().position(|f| f.metadata().get(COLUMN_ID_KEY) == Some(&id))
            }
            i if i == n => file_schema.index_of(UPDATED_COLUMN).ok(),
            _ => file_schema.index_of(DELETED_COLUMN).ok(),
        }
    };
    let wanted: Vec<(usize, Option<usize>)> =
        needed.iter().enumerate().filter(|(_, need)| **need).map(|(i, _)| (i, position(i))).collect();
    if wanted.iter().any(|(i, at)| *i >= n && at.is_none()) {
        return Err(EngineError::Parquet(format!("{}: system columns missing", path.display())));
    }
    let mut roots: Vec<usize> = wanted.iter().filter_map(|(_, at)| *at).collect();
    roots.sort_unstable();
    roots.dedup();
    let builder = ParquetRecordBatchReaderBuilder::new_with_metadata(source, metadata);
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots.iter().copied());
    let reader = builder.with_projection(mask).build().map_err(|e| err(&e))?;
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| err(&e))?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let full = table_schema(def, true);
    let mut columns: Vec<Option<ArrayRef>> = vec![None; n + 2];
    for (i, at) in wanted {
        let target = full.field(i).data_type();
        let array = match at {
            Some(file_col) => {
                // The projected batch holds the selected roots in file order.
                let idx = roots.binary_search(&file_col).expect("selected root");
                let parts: Vec<&dyn Array> = batches.iter().map(|b| b.column(idx).as_ref()).collect();
                let joined = match parts.len() {
                    0 => new_null_array(target, 0),
                    1 => batches[0].column(idx).clone(),
                    _ => concat(&parts).map_err(|e| err(&e))?,
                };
                if joined.data_type() == target { joined } else { cast(&joined, target).map_err(|e| err(&e))? }
            }
            None => {
                let value = added_column_value(&def.columns[i]);
                build_array(def.columns[i].data_type, std::iter::repeat_n(&value, rows))
            }
        };
        columns[i] = Some(array);
    }
    Ok(Source { columns, rows })
}

#[cfg(test)]
mod tests {
    use kalam_types::codec;

    use super::*;

    /// The encoded key order (the buffer's) equals the Arrow order the merge compares in.
    fn encoded_order_matches(a: &Value, b: &Value) -> bool {
        codec::encode_pk(a).cmp(&codec::encode_pk(b))
            == match (a, b) {
                (Value::BigInt(x), Value::BigInt(y)) => x.cmp(y),
                (Value::Text(x), Value::Text(y)) => x.as_bytes().cmp(y.as_bytes()),
                _ => Ordering::Equal,
            }
    }

    #[test]
    fn the_merge_order_is_the_key_order_of_the_buffer() {
        let ints = [i64::MIN, -5, -1, 0, 1, 7, i64::MAX];
        for a in ints {
            for b in ints {
                assert!(encoded_order_matches(&Value::BigInt(a), &Value::BigInt(b)), "{a} {b}");
            }
        }
        let texts = ["", "a", "ab", "b", "é", "z\u{0}"];
        for a in texts {
            for b in texts {
                assert!(encoded_order_matches(&Value::Text(a.into()), &Value::Text(b.into())), "{a} {b}");
            }
        }
    }
}
