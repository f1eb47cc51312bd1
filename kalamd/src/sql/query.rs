//! SELECT through DataFusion. Each request gets a session in which exactly the tables the
//! statement names are registered, bound to the acting user.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::AsArray;
use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{
    DataType, DurationNanosecondType, Field, IntervalMonthDayNanoType, IntervalUnit, TimeUnit,
};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::{MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::common::ScalarValue;
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, Query, SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, Visit, VisitMut,
    Visitor, VisitorMut, WildcardAdditionalOptions, visit_expressions, visit_relations,
};

use kalam_types::auth::Identity;
use kalam_types::ids::UserId;
use kalam_types::schema::{DELETED_COLUMN, UPDATED_COLUMN};
use kalam_types::value::{double_to_json, encode_hex};
use kalam_types::{KalamType, Value, arrow::value_at};
use serde_json::Value as Json;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::provider::{ActingUser, KalamTableProvider};
use crate::rowjson::OrderedRow;
use crate::sql::parse::{DEFAULT_NAMESPACE, TableRef, ident_name};
use crate::sql::system;

/// Rows of a query, ready for the envelope.
#[derive(Debug, Default)]
pub struct QueryOutput {
    pub columns: Vec<String>,
    pub rows: Vec<OrderedRow>,
}

pub async fn run_query(engine: &Arc<Engine>, stmt: &Statement, viewer: &Identity) -> Result<QueryOutput, EngineError> {
    let (names, batches) = collect(engine, stmt, viewer).await?;
    encode_batches(names, &batches)
}

/// Runs a query through a plan-cache entry: its shared plan when there is one (built now if
/// the statement allows sharing), with `params` bound to the placeholders; otherwise planned
/// for this request from `bound` (the statement with its parameters as literals).
pub async fn run_prepared(
    engine: &Arc<Engine>,
    slot: &OnceLock<Option<Arc<LogicalPlan>>>,
    template: &Statement,
    bound: &Statement,
    params: &[Json],
    viewer: &Identity,
) -> Result<QueryOutput, EngineError> {
    let shared = match slot.get() {
        Some(plan) => plan.clone(),
        None if shareable(template) => {
            // A placeholder whose type only its value tells (`SELECT $1`) cannot be planned
            // unbound: such statements are planned per request.
            let plan = plan_statement(engine, template, viewer).await.ok().map(|(_, plan)| Arc::new(plan));
            slot.get_or_init(|| plan).clone()
        }
        None => {
            let _ = slot.set(None);
            None
        }
    };
    let Some(plan) = shared else { return run_query(engine, bound, viewer).await };
    let plan = if params.is_empty() {
        plan.as_ref().clone()
    } else {
        let values: Vec<ScalarValue> = params.iter().map(param_scalar).collect();
        plan.as_ref().clone().with_param_values(values)?
    };
    let (names, batches) = execute(&session(engine, &viewer.acting), plan).await?;
    encode_batches(names, &batches)
}

/// A parameter as the literal it stands for (the same types as the SQL literal would have).
fn param_scalar(param: &Json) -> ScalarValue {
    match param {
        Json::Null => ScalarValue::Null,
        Json::Bool(b) => ScalarValue::Boolean(Some(*b)),
        Json::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => ScalarValue::Int64(Some(i)),
            (None, Some(u)) => ScalarValue::UInt64(Some(u)),
            _ => ScalarValue::Float64(n.as_f64()),
        },
        Json::String(s) => ScalarValue::Utf8(Some(s.clone())),
        other => ScalarValue::Utf8(Some(other.to_string())),
    }
}

/// Whether one plan of `stmt` serves every user: it reads no built-in table (their rows are
/// taken when planning) and does not call `CURRENT_USER()`.
pub fn shareable(stmt: &Statement) -> bool {
    let mut builtin = false;
    let _ = visit_relations(stmt, |name| {
        builtin |=
            TableRef::parse(name).is_ok_and(|t| system::is_builtin_namespace(&t.namespace) && t.qualifier.is_none());
        ControlFlow::<()>::Continue(())
    });
    let mut current_user = false;
    let _ = visit_expressions(stmt, |e| {
        if let Expr::Function(f) = e {
            current_user |= f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case("current_user"));
        }
        ControlFlow::<()>::Continue(())
    });
    !builtin && !current_user
}

/// A session for `user`: KalamDB's functions, the default schema, and the acting user whose
/// partitions the table providers read.
fn session(engine: &Engine, user: &UserId) -> SessionContext {
    let config = SessionConfig::new()
        .with_default_catalog_and_schema("datafusion", DEFAULT_NAMESPACE)
        .with_extension(Arc::new(ActingUser(user.clone())));
    let ctx = SessionContext::new_with_config(config);
    for f in crate::sql::udf::functions(&engine.ids, user.as_str()) {
        ctx.register_udf(f);
    }
    ctx
}

async fn execute(ctx: &SessionContext, plan: LogicalPlan) -> Result<(Vec<String>, Vec<RecordBatch>), EngineError> {
    let names: Vec<String> = plan.schema().fields().iter().map(|f| f.name().clone()).collect();
    let physical = ctx.state().create_physical_plan(&plan).await.map_err(planning_error)?;
    let batches = datafusion::physical_plan::collect(physical, ctx.task_ctx()).await?;
    Ok((names, batches))
}

/// A failure of DataFusion's optimizer or physical planner on a statement is the statement's
/// problem to report (400), not a server failure: the planner refuses shapes it cannot handle
/// with internal errors. Other failures (reads during planning) keep their own mapping.
pub(crate) fn planning_error(e: datafusion::error::DataFusionError) -> EngineError {
    match e.find_root() {
        datafusion::error::DataFusionError::Internal(msg) => {
            tracing::warn!(error = %e, "the planner refused a statement");
            EngineError::user(
                kalam_types::error::ErrorCode::InvalidSql,
                format!("statement could not be planned: {msg}"),
            )
        }
        _ => e.into(),
    }
}

/// Plans and runs a query; returns its column names and result batches.
pub async fn collect(
    engine: &Arc<Engine>,
    stmt: &Statement,
    viewer: &Identity,
) -> Result<(Vec<String>, Vec<RecordBatch>), EngineError> {
    let (ctx, plan) = plan_statement(engine, stmt, viewer).await?;
    execute(&ctx, plan).await
}

/// Plans a query in a new session holding exactly the tables it names.
async fn plan_statement(
    engine: &Arc<Engine>,
    stmt: &Statement,
    viewer: &Identity,
) -> Result<(SessionContext, LogicalPlan), EngineError> {
    let user = &viewer.acting;
    let mut relations = BTreeSet::new();
    let _ = visit_relations(stmt, |name| {
        relations.insert(name.clone());
        ControlFlow::<()>::Continue(())
    });
    let names_system_columns = mentions_column(stmt, &[UPDATED_COLUMN, DELETED_COLUMN]);
    let mut stmt = stmt.clone();
    if names_system_columns {
        // The providers then expose `_updated`/`_deleted`; `*` must still mean user columns.
        let _ = VisitMut::visit(&mut stmt, &mut WildcardExpander { engine });
    }
    let stmt = &stmt;
    let ctes = cte_names(stmt);

    let ctx = session(engine, user);
    register_schema(&ctx, "datafusion", DEFAULT_NAMESPACE)?;
    // One registration per table however it is spelled (`app.t` and `"app"."t"`).
    let mut registered = BTreeSet::new();
    for name in &relations {
        let qualified = name.0.len() > 1;
        let table_ref = TableRef::parse(name)?;
        let spelled = (qualified, table_ref.namespace.clone(), table_ref.table.clone(), table_ref.qualifier.clone());
        if !registered.insert(spelled) {
            continue;
        }
        let (ns, table) = (table_ref.namespace.clone(), table_ref.table.clone());
        if system::is_builtin_namespace(&ns) && table_ref.qualifier.is_none() {
            register_schema(&ctx, "datafusion", &ns)?;
            // Soft-deleted users show only to a WHERE clause that names `deleted_at`.
            let deleted_users = where_mentions(stmt, "deleted_at");
            let (schema, batch) = system::table(engine, &ns, &table, viewer, deleted_users).await?;
            let reference = TableReference::partial(ns, table);
            ctx.register_table(reference, Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;
            continue;
        }
        if !qualified && ctes.contains(&table) {
            continue;
        }
        let (def, _) = crate::sql::resolve_table(engine, &table_ref, user)?;
        // Only a three-part name naming a user fixes the partition; otherwise the scan reads
        // the acting user's, whoever runs the plan.
        let fixed = table_ref.fixed_partition().transpose()?;
        let provider =
            KalamTableProvider::new(engine.clone(), def, fixed, names_system_columns, where_names_deleted(stmt));
        let reference = match &table_ref.qualifier {
            // `ns.<user>.table`: catalog `ns`, schema `<user>` (DataFusion's three-part form).
            Some(q) => {
                register_schema(&ctx, &ns, q)?;
                TableReference::full(ns, q.clone(), table)
            }
            None => {
                register_schema(&ctx, "datafusion", &ns)?;
                TableReference::partial(ns, table)
            }
        };
        ctx.register_table(reference, Arc::new(provider))?;
    }
    let plan =
        ctx.state().statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(stmt.clone()))).await?;
    Ok((ctx, plan))
}

/// Names of the common table expressions anywhere in the statement (unqualified references to
/// them are not tables).
pub(crate) fn cte_names(stmt: &Statement) -> BTreeSet<String> {
    struct Ctes(BTreeSet<String>);
    impl Visitor for Ctes {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                self.0.extend(with.cte_tables.iter().map(|c| ident_name(&c.alias.name)));
            }
            ControlFlow::Continue(())
        }
    }
    let mut ctes = Ctes(BTreeSet::new());
    let _ = stmt.visit(&mut ctes);
    ctes.0
}

/// Rewrites `*` (and `t.*`) over a single USER/SHARED table into its user columns, so a
/// statement that also names `_updated`/`_deleted` does not get them twice (sql.md §3).
struct WildcardExpander<'a> {
    engine: &'a Engine,
}

impl VisitorMut for WildcardExpander<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        let SetExpr::Select(select) = q.body.as_mut() else { return ControlFlow::Continue(()) };
        let [from] = select.from.as_slice() else { return ControlFlow::Continue(()) };
        let TableFactor::Table { name, alias, .. } = &from.relation else { return ControlFlow::Continue(()) };
        if !from.joins.is_empty() {
            return ControlFlow::Continue(());
        }
        let Ok(table) = TableRef::parse(name) else { return ControlFlow::Continue(()) };
        let Some(def) = self.engine.catalog.table(&table.namespace, &table.table) else {
            return ControlFlow::Continue(());
        };
        if def.table_type == kalam_types::schema::TableType::Stream {
            return ControlFlow::Continue(());
        }
        let reference = alias.as_ref().map(|a| ident_name(&a.name)).unwrap_or_else(|| table.table.clone());
        let plain = |o: &WildcardAdditionalOptions| {
            o.opt_ilike.is_none()
                && o.opt_exclude.is_none()
                && o.opt_except.is_none()
                && o.opt_replace.is_none()
                && o.opt_rename.is_none()
                && o.opt_alias.is_none()
        };
        let mut projection = Vec::with_capacity(select.projection.len());
        for item in std::mem::take(&mut select.projection) {
            let expand = match &item {
                SelectItem::Wildcard(o) => plain(o),
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::ObjectName(n), o) => {
                    plain(o) && n.0.last().and_then(|p| p.as_ident()).is_some_and(|i| ident_name(i) == reference)
                }
                _ => false,
            };
            if expand {
                projection.extend(
                    def.columns
                        .iter()
                        .map(|c| SelectItem::UnnamedExpr(Expr::Identifier(Ident::with_quote('"', &c.name)))),
                );
            } else {
                projection.push(item);
            }
        }
        select.projection = projection;
        ControlFlow::Continue(())
    }
}

/// Makes sure `catalog.schema` exists in the session (creating the catalog too).
fn register_schema(ctx: &SessionContext, catalog: &str, schema: &str) -> Result<(), EngineError> {
    let provider = match ctx.catalog(catalog) {
        Some(c) => c,
        None => {
            let c: Arc<dyn datafusion::catalog::CatalogProvider> = Arc::new(MemoryCatalogProvider::new());
            ctx.register_catalog(catalog, c.clone());
            c
        }
    };
    if provider.schema(schema).is_none() {
        provider.register_schema(schema, Arc::new(MemorySchemaProvider::new()))?;
    }
    Ok(())
}

/// True when any expression inside `node` names one of `columns` (plain or qualified).
fn mentions_column<V: Visit>(node: &V, columns: &[&str]) -> bool {
    let mut found = false;
    let _ = visit_expressions(node, |e| {
        let id = match e {
            Expr::Identifier(id) => Some(id),
            Expr::CompoundIdentifier(parts) => parts.last(),
            _ => None,
        };
        found |= id.is_some_and(|i| columns.contains(&i.value.as_str()));
        ControlFlow::<()>::Continue(())
    });
    found
}

/// True when a WHERE clause of the statement mentions `_deleted`: only then are soft-deleted
/// rows visible (sql.md §3).
fn where_names_deleted(stmt: &Statement) -> bool {
    where_mentions(stmt, DELETED_COLUMN)
}

/// True when a WHERE clause of the statement (or of a derived table in its FROM) names
/// `column`.
fn where_mentions(stmt: &Statement, column: &str) -> bool {
    fn in_query(q: &Query, column: &str) -> bool {
        in_set_expr(&q.body, column)
    }
    fn in_set_expr(body: &SetExpr, column: &str) -> bool {
        match body {
            SetExpr::Select(select) => {
                select.selection.as_ref().is_some_and(|e| mentions_column(e, &[column]))
                    || select.from.iter().any(|t| {
                        std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)).any(|r| match r {
                            TableFactor::Derived { subquery, .. } => in_query(subquery, column),
                            _ => false,
                        })
                    })
            }
            SetExpr::Query(q) => in_query(q, column),
            SetExpr::SetOperation { left, right, .. } => in_set_expr(left, column) || in_set_expr(right, column),
            _ => false,
        }
    }
    match stmt {
        Statement::Query(q) => in_query(q, column),
        _ => false,
    }
}

/// Result column names: duplicates get `_2`, `_3`, ... .
pub fn unique_names(names: Vec<String>) -> Vec<String> {
    let mut columns: Vec<String> = Vec::with_capacity(names.len());
    for base in names {
        let mut name = base.clone();
        let mut n = 2;
        while columns.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        columns.push(name);
    }
    columns
}

/// Encodes result batches (columns `names`, also when there are no rows) per sql.md §2.3.
pub fn encode_batches(names: Vec<String>, batches: &[RecordBatch]) -> Result<QueryOutput, EngineError> {
    let columns = unique_names(names);
    let mut rows = Vec::new();
    for batch in batches {
        for r in 0..batch.num_rows() {
            let row = columns
                .iter()
                .zip(batch.columns())
                .map(|(name, col)| Ok((name.clone(), cell_json(col, r)?)))
                .collect::<Result<Vec<_>, EngineError>>()?;
            rows.push(OrderedRow(row));
        }
    }
    Ok(QueryOutput { columns, rows })
}

/// One result cell in the JSON encoding of sql.md §2.3.
pub(crate) fn cell_json(array: &ArrayRef, row: usize) -> Result<Json, EngineError> {
    // Logical nulls: a `NullArray` (the type of a bare `NULL`) has no validity buffer.
    if array.logical_nulls().is_some_and(|n| n.is_null(row)) {
        return Ok(Json::Null);
    }
    let as_type = |ty: KalamType| value_at(array.as_ref(), row, ty).map(|v| v.to_json()).unwrap_or(Json::Null);
    let cast_to =
        |to: &DataType| datafusion::arrow::compute::cast(&array.slice(row, 1), to).map_err(EngineError::internal);
    Ok(match array.data_type() {
        DataType::Boolean => as_type(KalamType::Boolean),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            let a = cast_to(&DataType::Int64)?;
            value_at(a.as_ref(), 0, KalamType::BigInt).map(|v| v.to_json()).unwrap_or(Json::Null)
        }
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            let a = cast_to(&DataType::UInt64)?;
            let a = a.as_any().downcast_ref::<datafusion::arrow::array::UInt64Array>();
            a.map(|a| Json::from(a.value(0))).unwrap_or(Json::Null)
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => {
            let a = cast_to(&DataType::Float64)?;
            match value_at(a.as_ref(), 0, KalamType::Double) {
                Some(Value::Double(d)) => double_to_json(d),
                _ => Json::Null,
            }
        }
        DataType::Utf8 => as_type(KalamType::Text),
        DataType::LargeUtf8 | DataType::Utf8View => {
            let a = cast_to(&DataType::Utf8)?;
            value_at(a.as_ref(), 0, KalamType::Text).map(|v| v.to_json()).unwrap_or(Json::Null)
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => {
            let a = cast_to(&DataType::Binary)?;
            match value_at(a.as_ref(), 0, KalamType::Bytes) {
                Some(Value::Bytes(b)) => Json::String(encode_hex(&b)),
                _ => Json::Null,
            }
        }
        DataType::Timestamp(_, _) | DataType::Date64 => {
            let a = cast_to(&DataType::Timestamp(TimeUnit::Microsecond, None))?;
            as_type_of(&a, KalamType::Timestamp)
        }
        DataType::Date32 => as_type(KalamType::Date),
        DataType::Time32(_) | DataType::Time64(_) => {
            let a = cast_to(&DataType::Time64(TimeUnit::Microsecond))?;
            as_type_of(&a, KalamType::Time)
        }
        DataType::Interval(_) => {
            let a = cast_to(&DataType::Interval(IntervalUnit::MonthDayNano))?;
            let v = a.as_primitive::<IntervalMonthDayNanoType>().value(0);
            Json::String(iso_duration(v.months, v.days, v.nanoseconds))
        }
        DataType::Duration(_) => {
            let a = cast_to(&DataType::Duration(TimeUnit::Nanosecond))?;
            Json::String(iso_duration(0, 0, a.as_primitive::<DurationNanosecondType>().value(0)))
        }
        DataType::List(_) | DataType::LargeList(_) | DataType::FixedSizeList(_, _) | DataType::ListView(_) => {
            let a = cast_to(&DataType::List(Arc::new(Field::new_list_field(list_item_type(array.data_type()), true))))?;
            let values = a.as_list::<i32>().value(0);
            Json::Array((0..values.len()).map(|i| cell_json(&values, i)).collect::<Result<_, _>>()?)
        }
        DataType::Struct(fields) => {
            let s = array.as_struct();
            let mut obj = serde_json::Map::new();
            for (field, column) in fields.iter().zip(s.columns()) {
                obj.insert(field.name().clone(), cell_json(column, row)?);
            }
            Json::Object(obj)
        }
        DataType::Map(_, _) => {
            let m = array.as_map();
            let entries = m.value(row);
            let (keys, values) = (entries.column(0), entries.column(1));
            let mut obj = serde_json::Map::new();
            for i in 0..entries.len() {
                let key = match cell_json(keys, i)? {
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(key, cell_json(values, i)?);
            }
            Json::Object(obj)
        }
        _ => {
            let fmt =
                ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).map_err(EngineError::internal)?;
            Json::String(fmt.value(row).to_string())
        }
    })
}

/// The element type of a list type.
fn list_item_type(ty: &DataType) -> DataType {
    match ty {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) | DataType::ListView(f) => {
            f.data_type().clone()
        }
        other => other.clone(),
    }
}

/// ISO-8601 duration text (`P1Y2M3DT4H5M6.5S`; `PT0S` when zero), sql.md §2.3.
fn iso_duration(months: i32, days: i32, nanos: i64) -> String {
    let mut out = String::from("P");
    let (years, months) = (months / 12, months % 12);
    for (n, unit) in [(years as i64, 'Y'), (months as i64, 'M'), (days as i64, 'D')] {
        if n != 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    let (hours, rest) = (nanos / 3_600_000_000_000, nanos % 3_600_000_000_000);
    let (minutes, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let (seconds, frac) = (rest / 1_000_000_000, rest % 1_000_000_000);
    if hours != 0 || minutes != 0 || seconds != 0 || frac != 0 || out.len() == 1 {
        out.push('T');
        if hours != 0 {
            out.push_str(&format!("{hours}H"));
        }
        if minutes != 0 {
            out.push_str(&format!("{minutes}M"));
        }
        if seconds != 0 || frac != 0 {
            let sign = if seconds == 0 && frac < 0 { "-" } else { "" };
            let mut s = format!("{sign}{seconds}");
            if frac != 0 {
                let digits = format!("{:09}", frac.unsigned_abs());
                s.push('.');
                s.push_str(digits.trim_end_matches('0'));
            }
            out.push_str(&s);
            out.push('S');
        } else if out.ends_with('T') {
            out.push_str("0S");
        }
    }
    out
}

fn as_type_of(array: &ArrayRef, ty: KalamType) -> Json {
    value_at(array.as_ref(), 0, ty).map(|v| v.to_json()).unwrap_or(Json::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_iso_8601() {
        assert_eq!(iso_duration(0, 0, 5_400_000_000_000), "PT1H30M");
        assert_eq!(iso_duration(14, 3, 0), "P1Y2M3D");
        assert_eq!(iso_duration(0, 1, 1_500_000_000), "P1DT1.5S");
        assert_eq!(iso_duration(0, 0, 0), "PT0S");
        assert_eq!(iso_duration(0, 0, -30_000_000_000), "PT-30S");
    }
}
