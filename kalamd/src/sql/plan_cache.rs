//! The global plan cache (storage.md §13): an LRU of prepared SELECT/INSERT/UPDATE/DELETE
//! statements keyed by their normalized text (whitespace and comments collapsed, keywords
//! upper-cased, literals and placeholders kept). An entry holds the parsed statement and, for
//! queries DataFusion runs, the logical plan with its placeholders unbound; the plan names no
//! user (the acting user is read by the table providers when a scan starts), so every user
//! shares it. An entry is valid while every table it references is the exact definition it was
//! prepared against: ALTER TABLE (a new schema version) and DROP make it a miss.

use std::num::NonZeroUsize;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::ast::visit_relations;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};
use kalam_types::error::KalamError;
use kalam_types::schema::TableDefinition;
use lru::LruCache;

use crate::engine::Engine;
use crate::sql::parse::{self, KalamStatement, TableRef};
use crate::sql::system;

/// A statement ready to run: parsed, and (for shared queries) planned once.
pub struct Prepared {
    pub stmt: KalamStatement,
    /// The definitions of the tables the statement references, as prepared.
    tables: Vec<Arc<TableDefinition>>,
    /// The DataFusion plan of a query, once built; `None` inside when it cannot be shared
    /// (built-in tables, `CURRENT_USER()`).
    pub plan: OnceLock<Option<Arc<LogicalPlan>>>,
    /// The key-lookup form of a point query, once recognised (`None` inside: not one).
    pub point: OnceLock<Option<Arc<crate::sql::fast::PointShape>>>,
}

/// A statement of a request, and whether it went through the cache (`None` for statements the
/// cache does not hold: DDL, admin, SHOW …).
pub struct Lookup {
    pub prepared: Arc<Prepared>,
    pub cache_hit: Option<bool>,
}

/// Longer statements are parsed every time and never cached (bulk INSERTs with literal rows):
/// the cache's memory stays bounded by `plan_cache_size` × this.
pub const MAX_CACHED_SQL_LEN: usize = 16 * 1024;

pub struct PlanCache {
    /// `None` when `query.plan_cache_size` is 0.
    entries: Option<Mutex<LruCache<String, Arc<Prepared>>>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl PlanCache {
    pub fn new(capacity: usize) -> Self {
        PlanCache {
            entries: NonZeroUsize::new(capacity).map(|c| Mutex::new(LruCache::new(c))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, LruCache<String, Arc<Prepared>>>> {
        self.entries.as_ref().map(|m| m.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The statement `sql`, from the cache when an entry is still valid, else parsed (and
    /// cached when it is a SELECT/INSERT/UPDATE/DELETE over known tables).
    pub fn prepare(&self, engine: &Engine, sql: &str) -> Result<Lookup, KalamError> {
        // The statement is tokenized once: for its key and, on a miss, for the parser.
        let tokens = parse::tokenize(sql)?;
        let key = (sql.len() <= MAX_CACHED_SQL_LEN).then(|| normalize(&tokens));
        if let Some(key) = &key
            && let Some(mut entries) = self.lock()
            && let Some(entry) = entries.get(key)
        {
            if entry.is_current(engine) {
                self.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(Lookup { prepared: entry.clone(), cache_hit: Some(true) });
            }
            entries.pop(key);
        }
        let stmt = parse::parse_tokens(sql, tokens)?;
        let cacheable = matches!(
            stmt,
            KalamStatement::Query(_)
                | KalamStatement::Insert(_)
                | KalamStatement::Update(_)
                | KalamStatement::Delete(_)
        );
        let tables = if cacheable { referenced_tables(engine, &stmt) } else { None };
        let Some(tables) = tables else {
            let prepared = Arc::new(Prepared { stmt, tables: vec![], plan: OnceLock::new(), point: OnceLock::new() });
            return Ok(Lookup { prepared, cache_hit: cacheable.then_some(false) });
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        let prepared = Arc::new(Prepared { stmt, tables, plan: OnceLock::new(), point: OnceLock::new() });
        if let (Some(key), Some(mut entries)) = (key, self.lock()) {
            entries.put(key, prepared.clone());
        }
        Ok(Lookup { prepared, cache_hit: Some(false) })
    }

    /// Empties the cache; returns how many entries it held.
    pub fn clear(&self) -> usize {
        self.lock().map_or(0, |mut entries| {
            let n = entries.len();
            entries.clear();
            n
        })
    }

    /// (hits, misses) since start.
    pub fn counters(&self) -> (u64, u64) {
        (self.hits.load(Ordering::Relaxed), self.misses.load(Ordering::Relaxed))
    }
}

impl Prepared {
    fn is_current(&self, engine: &Engine) -> bool {
        self.tables.iter().all(|def| {
            engine.catalog.table(def.namespace.as_str(), def.name.as_str()).is_some_and(|now| Arc::ptr_eq(&now, def))
        })
    }
}

/// The user tables a statement references (built-in tables are read fresh every time and need
/// no check; nor do CTE names). `None` when one is unknown: the statement fails, and is not
/// cached.
fn referenced_tables(engine: &Engine, stmt: &KalamStatement) -> Option<Vec<Arc<TableDefinition>>> {
    let (KalamStatement::Query(s) | KalamStatement::Insert(s) | KalamStatement::Update(s) | KalamStatement::Delete(s)) =
        stmt
    else {
        return None;
    };
    let ctes = crate::sql::query::cte_names(s);
    let mut tables: Vec<Arc<TableDefinition>> = Vec::new();
    let mut known = true;
    let _ = visit_relations(s.as_ref(), |name| {
        let Ok(table) = TableRef::parse(name) else {
            known = false;
            return ControlFlow::Break(());
        };
        if system::is_builtin_namespace(&table.namespace) && table.qualifier.is_none() {
            return ControlFlow::Continue(());
        }
        // An unqualified CTE name references no table.
        if name.0.len() == 1 && ctes.contains(&table.table) {
            return ControlFlow::Continue(());
        }
        match engine.catalog.table(&table.namespace, &table.table) {
            Some(def) => {
                if !tables.iter().any(|t| Arc::ptr_eq(t, &def)) {
                    tables.push(def);
                }
                ControlFlow::Continue(())
            }
            // The table may be created later: an entry must not outlive that unchecked.
            None => {
                known = false;
                ControlFlow::Break(())
            }
        }
    });
    known.then_some(tables)
}

/// The cache key of a statement: its tokens with whitespace and comments collapsed to one
/// space and unquoted keywords upper-cased; literals, identifiers and placeholders as written.
fn normalize(tokens: &[TokenWithSpan]) -> String {
    let mut key = String::new();
    for token in tokens.iter().map(|t| &t.token) {
        match token {
            Token::Whitespace(_) => {
                if !key.is_empty() && !key.ends_with(' ') {
                    key.push(' ');
                }
            }
            Token::Word(w) if w.quote_style.is_none() && w.keyword != Keyword::NoKeyword => {
                key.push_str(&w.value.to_ascii_uppercase());
            }
            other => key.push_str(&other.to_string()),
        }
    }
    key.trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn normalize(sql: &str) -> Option<String> {
        Some(super::normalize(&parse::tokenize(sql).ok()?))
    }

    #[test]
    fn normalization_collapses_layout_and_keyword_case_but_keeps_values() {
        let a = normalize("select  id FROM app.t\n where id = $1 -- point\n").unwrap();
        let b = normalize("SELECT id from app.t WHERE id = $1").unwrap();
        assert_eq!(a, b);
        assert_ne!(b, normalize("SELECT id FROM app.t WHERE id = $2").unwrap());
        assert_ne!(normalize("SELECT 'A'").unwrap(), normalize("SELECT 'a'").unwrap());
        assert_ne!(normalize("SELECT \"Id\" FROM t").unwrap(), normalize("SELECT \"id\" FROM t").unwrap());
    }
}
