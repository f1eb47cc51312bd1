//! The point-SELECT fast path: `SELECT <columns | *> FROM <table> WHERE <pk> = <literal>` on a
//! USER or SHARED table is answered by a key lookup (buffer `get` plus the flushed files whose
//! key range may hold the key, decoding only matching rows) without DataFusion planning.
//! Anything else — or anything this path cannot answer exactly like DataFusion would — takes
//! the general path.

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr, GroupByExpr, Query, SelectFlavor, SelectItem, SetExpr, Statement, TableFactor,
    WildcardAdditionalOptions,
};
use kalam_types::KalamType;
use kalam_types::codec;
use kalam_types::ids::UserId;
use kalam_types::schema::{DELETED_COLUMN, TableDefinition, TableType, UPDATED_COLUMN};
use kalam_types::value::{Literal, Value};
use serde_json::Value as Json;
use std::sync::Arc;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::read::lookup_keys;
use crate::rowjson::OrderedRow;
use crate::sql::parse::{TableRef, ident_name, literal};
use crate::sql::query::QueryOutput;

/// One output column of a point query.
enum Output {
    Column(usize),
    Updated,
    Deleted,
}

/// A recognised point query, ready to run.
pub struct PointQuery {
    shape: Arc<PointShape>,
    user: UserId,
    pk: Vec<u8>,
}

/// Where the looked-up key comes from.
enum KeySource {
    Literal(Vec<u8>),
    /// `$k` (1-based).
    Param(usize),
}

/// A point query with its key and partition still to bind: what the plan cache keeps.
pub struct PointShape {
    def: Arc<TableDefinition>,
    /// The partition a three-part name names (`None`: the acting user's).
    fixed_user: Option<UserId>,
    key: KeySource,
    columns: Vec<String>,
    outputs: Vec<Output>,
}

impl PointShape {
    /// The query for `acting` with `params`; `None` when a parameter is not a key value the
    /// lookup answers exactly like SQL comparison would (an integer for a BIGINT key, a string
    /// for a TEXT key): the general path then compares it.
    pub fn bind(self: &Arc<Self>, params: &[Json], acting: &UserId) -> Option<PointQuery> {
        let pk = match &self.key {
            KeySource::Literal(pk) => pk.clone(),
            KeySource::Param(k) => key_of(&self.def, &Literal::from_json(params.get(k - 1)?))?,
        };
        let user = self.fixed_user.clone().unwrap_or_else(|| acting.clone());
        Some(PointQuery { shape: self.clone(), user, pk })
    }
}

/// Recognises a point query, whose key may be a placeholder; `None` sends the statement to the
/// general path.
pub fn shape(engine: &Engine, stmt: &Statement) -> Option<PointShape> {
    let Statement::Query(q) = stmt else { return None };
    let Query { with: None, body, order_by: None, limit_clause: None, fetch: None, locks, for_clause: None, .. } =
        q.as_ref()
    else {
        return None;
    };
    if !locks.is_empty() {
        return None;
    }
    let SetExpr::Select(s) = body.as_ref() else { return None };
    let plain = s.distinct.is_none()
        && s.select_modifiers.is_none()
        && s.top.is_none()
        && s.exclude.is_none()
        && s.into.is_none()
        && s.lateral_views.is_empty()
        && s.prewhere.is_none()
        && s.connect_by.is_empty()
        && matches!(&s.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty())
        && s.cluster_by.is_empty()
        && s.distribute_by.is_empty()
        && s.sort_by.is_empty()
        && s.having.is_none()
        && s.named_window.is_empty()
        && s.qualify.is_none()
        && s.value_table_mode.is_none()
        && matches!(s.flavor, SelectFlavor::Standard);
    if !plain || s.from.len() != 1 || !s.from[0].joins.is_empty() {
        return None;
    }
    let TableFactor::Table { name, alias: None, args: None, with_hints, version: None, .. } = &s.from[0].relation
    else {
        return None;
    };
    if !with_hints.is_empty() {
        return None;
    }
    let table = TableRef::parse(name).ok()?;
    if crate::sql::system::is_builtin_namespace(&table.namespace) {
        return None;
    }
    // The acting user only matters for the partition, which binding decides.
    let (def, _) = crate::sql::resolve_table(engine, &table, &UserId::system()).ok()?;
    let fixed_user = table.fixed_partition().transpose().ok()?;
    if def.table_type == TableType::Stream {
        return None;
    }
    let selection = s.selection.as_ref()?;
    let key = match primary_key_equality(&def, selection) {
        Some(pk) => KeySource::Literal(pk),
        None => KeySource::Param(primary_key_placeholder(&def, selection)?),
    };

    let mut columns = Vec::new();
    let mut outputs = Vec::new();
    let mut column = |name: String, label: String| -> Option<()> {
        let output = match name.as_str() {
            UPDATED_COLUMN => Output::Updated,
            DELETED_COLUMN => Output::Deleted,
            n => Output::Column(def.column_index(n)?),
        };
        columns.push(label);
        outputs.push(output);
        Some(())
    };
    for item in &s.projection {
        match item {
            SelectItem::Wildcard(opts)
                if *opts
                    == WildcardAdditionalOptions {
                        wildcard_token: opts.wildcard_token.clone(),
                        ..Default::default()
                    } =>
            {
                for c in &def.columns {
                    column(c.name.clone(), c.name.clone())?;
                }
            }
            SelectItem::UnnamedExpr(Expr::Identifier(id)) => column(ident_name(id), ident_name(id))?,
            SelectItem::ExprWithAlias { expr: Expr::Identifier(id), alias } => {
                column(ident_name(id), ident_name(alias))?
            }
            _ => return None,
        }
    }
    // DataFusion refuses repeated output names; let it say so.
    if columns.iter().enumerate().any(|(i, c)| columns[..i].contains(c)) {
        return None;
    }
    Some(PointShape { def, fixed_user, key, columns, outputs })
}

/// `k` when `predicate` is exactly `<pk> = $k` (either side).
fn primary_key_placeholder(def: &TableDefinition, predicate: &Expr) -> Option<usize> {
    crate::sql::params::placeholder(key_operand(def, predicate)?)
}

/// The key bytes when `predicate` is exactly `<pk> = <literal>` (either side) and SQL
/// comparison could only match that one key (see [`key_of`]). Anything else (`id = 5.0`,
/// `id = ' 5'`, `k = 1`) compares with DataFusion's casting rules, so it takes the general path.
pub fn primary_key_equality(def: &TableDefinition, predicate: &Expr) -> Option<Vec<u8>> {
    key_of(def, &literal(key_operand(def, predicate)?).ok()?)
}

/// The other side of `<pk> = <operand>` (either side).
fn key_operand<'e>(def: &TableDefinition, predicate: &'e Expr) -> Option<&'e Expr> {
    let pk_col = &def.columns[def.primary_key_index()];
    let Expr::BinaryOp { left, op: BinaryOperator::Eq, right } = predicate else { return None };
    match (left.as_ref(), right.as_ref()) {
        (Expr::Identifier(id), other) | (other, Expr::Identifier(id)) if ident_name(id) == pk_col.name => Some(other),
        _ => None,
    }
}

/// The key bytes of `lit` when comparing it with the key column could only match that one key:
/// an integer for a BIGINT key, a string for a TEXT key.
fn key_of(def: &TableDefinition, lit: &Literal) -> Option<Vec<u8>> {
    let pk_col = &def.columns[def.primary_key_index()];
    let same_kind = match (lit, pk_col.data_type) {
        (Literal::Number(n), KalamType::BigInt) => n.trim_start_matches('-').bytes().all(|b| b.is_ascii_digit()),
        (Literal::String(_), KalamType::Text) => true,
        _ => false,
    };
    if !same_kind {
        return None;
    }
    codec::encode_pk(&Value::coerce(lit, pk_col.data_type, &pk_col.name).ok()?)
}

impl PointQuery {
    /// Looks the key up (blocking I/O: run on the blocking pool).
    pub fn execute(self, engine: &Engine) -> Result<QueryOutput, EngineError> {
        let shape = &self.shape;
        let found = lookup_keys(engine, &shape.def, Some(&self.user), std::slice::from_ref(&self.pk))?;
        let rows = found
            .into_values()
            .filter(|r| !r.deleted)
            .map(|r| {
                let cells = shape.columns.iter().zip(&shape.outputs).map(|(name, out)| {
                    let v = match out {
                        Output::Column(i) => r.values[*i].to_json(),
                        Output::Updated => Value::Timestamp(r.updated_us).to_json(),
                        Output::Deleted => Json::Bool(r.deleted),
                    };
                    (name.clone(), v)
                });
                OrderedRow(cells.collect())
            })
            .collect();
        Ok(QueryOutput { columns: shape.columns.clone(), rows })
    }
}
