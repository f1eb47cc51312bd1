//! SELECT through DataFusion. Each request gets a session in which exactly the tables the
//! statement names are registered, bound to the acting user.

use std::collections::BTreeSet;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::catalog::{MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    Expr, Query, SetExpr, Statement, TableFactor, Visit, visit_expressions, visit_relations,
};

use kalam_types::ids::UserId;
use kalam_types::schema::{DELETED_COLUMN, UPDATED_COLUMN};
use kalam_types::value::{double_to_json, encode_hex};
use kalam_types::{KalamType, Value, arrow::value_at};
use serde_json::Value as Json;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::provider::KalamTableProvider;
use crate::rowjson::OrderedRow;
use crate::sql::parse::{DEFAULT_NAMESPACE, TableRef};
use crate::sql::system;

/// Rows of a query, ready for the envelope.
#[derive(Debug, Default)]
pub struct QueryOutput {
    pub columns: Vec<String>,
    pub rows: Vec<OrderedRow>,
}

pub async fn run_query(engine: &Arc<Engine>, stmt: &Statement, user: &UserId) -> Result<QueryOutput, EngineError> {
    let mut relations = BTreeSet::new();
    let _ = visit_relations(stmt, |name| {
        relations.insert(name.clone());
        ControlFlow::<()>::Continue(())
    });
    let names_system_columns = mentions_column(stmt, &[UPDATED_COLUMN, DELETED_COLUMN]);

    let config = SessionConfig::new().with_default_catalog_and_schema("datafusion", DEFAULT_NAMESPACE);
    let ctx = SessionContext::new_with_config(config);
    for f in crate::sql::udf::functions(&engine.ids, user.as_str()) {
        ctx.register_udf(f);
    }
    register_schema(&ctx, "datafusion", DEFAULT_NAMESPACE)?;
    for name in &relations {
        let qualified = name.0.len() > 1;
        let table_ref = TableRef::parse(name)?;
        let (ns, table) = (table_ref.namespace.clone(), table_ref.table.clone());
        if system::is_builtin_namespace(&ns) && table_ref.qualifier.is_none() {
            register_schema(&ctx, "datafusion", &ns)?;
            let (schema, batch) = system::table(engine, &ns, &table).await?;
            let reference = TableReference::partial(ns, table);
            ctx.register_table(reference, Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;
            continue;
        }
        if engine.catalog.table(&ns, &table).is_none() && !qualified {
            // An unqualified name may be a CTE; DataFusion reports it if it is not.
            continue;
        }
        let (def, partition_user) = crate::sql::resolve_table(engine, &table_ref, user)?;
        let provider = KalamTableProvider::new(
            engine.clone(),
            def,
            partition_user,
            names_system_columns,
            where_names_deleted(stmt),
        );
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
    let batches = ctx.execute_logical_plan(plan).await?.collect().await?;
    encode_batches(&batches)
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
    fn in_query(q: &Query) -> bool {
        in_set_expr(&q.body)
    }
    fn in_set_expr(body: &SetExpr) -> bool {
        match body {
            SetExpr::Select(select) => {
                select.selection.as_ref().is_some_and(mentions_deleted)
                    || select.from.iter().any(|t| {
                        std::iter::once(&t.relation).chain(t.joins.iter().map(|j| &j.relation)).any(|r| match r {
                            TableFactor::Derived { subquery, .. } => in_query(subquery),
                            _ => false,
                        })
                    })
            }
            SetExpr::Query(q) => in_query(q),
            SetExpr::SetOperation { left, right, .. } => in_set_expr(left) || in_set_expr(right),
            _ => false,
        }
    }
    fn mentions_deleted(expr: &Expr) -> bool {
        mentions_column(expr, &[DELETED_COLUMN])
    }
    match stmt {
        Statement::Query(q) => in_query(q),
        _ => false,
    }
}

/// Encodes result batches per sql.md §2.3; duplicate column names get `_2`, `_3`, ... .
pub fn encode_batches(batches: &[RecordBatch]) -> Result<QueryOutput, EngineError> {
    let Some(first) = batches.first() else { return Ok(QueryOutput::default()) };
    let mut columns: Vec<String> = Vec::new();
    for field in first.schema().fields() {
        let base = field.name().clone();
        let mut name = base.clone();
        let mut n = 2;
        while columns.contains(&name) {
            name = format!("{base}_{n}");
            n += 1;
        }
        columns.push(name);
    }
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

fn cell_json(array: &ArrayRef, row: usize) -> Result<Json, EngineError> {
    if array.is_null(row) {
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
        _ => {
            let fmt =
                ArrayFormatter::try_new(array.as_ref(), &FormatOptions::default()).map_err(EngineError::internal)?;
            Json::String(fmt.value(row).to_string())
        }
    })
}

fn as_type_of(array: &ArrayRef, ty: KalamType) -> Json {
    value_at(array.as_ref(), 0, ty).map(|v| v.to_json()).unwrap_or(Json::Null)
}
