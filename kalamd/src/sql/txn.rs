//! `BEGIN … COMMIT | ROLLBACK` inside one request (sql.md §9).
//!
//! A block runs in two passes. The first parses and authorizes every statement up to the
//! closing COMMIT/ROLLBACK and runs the block's SELECTs (and the sources of INSERT … SELECT):
//! they see committed data only, never the block's own writes, so running them before the
//! writes changes nothing. The second pass takes the commit lock once and runs the block's
//! INSERT/UPDATE/DELETE statements in order into one write batch; each reads the rows earlier
//! statements staged. COMMIT writes that batch (data, counters and change-log records, so
//! live notifications follow only the commit, in statement order); ROLLBACK or any failure
//! drops it. Nothing of the block is visible to anyone before the commit.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use kalam_types::auth::Identity;
use kalam_types::error::ErrorCode;
use kalam_types::schema::TableDefinition;

use super::parse::KalamStatement;
use super::{BatchError, MAX_DEFINITION_RETRIES, StatementResult, permissions, statement_failure};
use crate::engine::Engine;
use crate::error::EngineError;

/// How the block ended.
#[derive(Clone, Copy, PartialEq)]
enum End {
    Commit,
    Rollback,
}

/// A statement of the block waiting for the second pass.
struct Staged {
    index: usize,
    stmt: KalamStatement,
    selected: Option<Vec<RecordBatch>>,
    cache_hit: Option<bool>,
}

/// Runs the block that starts with the `BEGIN` at `begin` (0-based). On success, appends one
/// result per statement of the block (BEGIN and COMMIT/ROLLBACK included) and returns the
/// index of the first statement after it. On failure nothing of the block stays in `results`.
pub(super) async fn run(
    engine: &Arc<Engine>,
    statements: &[String],
    begin: usize,
    identity: &Identity,
    results: &mut Vec<StatementResult>,
) -> Result<usize, BatchError> {
    let rolled_back = " (transaction rolled back)";
    // Slot k holds the result of statement begin + 1 + k.
    let mut slots: Vec<Option<StatementResult>> = Vec::new();
    let mut staged = Vec::new();
    let mut end = None;
    let mut failure: Option<(usize, EngineError)> = None;
    for (index, text) in statements.iter().enumerate().skip(begin + 1) {
        let step = first_pass(engine, text, identity).await;
        match step {
            Ok(Step::End(e)) => {
                end = Some((index, e));
                break;
            }
            Ok(Step::Done(result)) => slots.push(Some(result)),
            Ok(Step::Write(stmt, selected, cache_hit)) => {
                slots.push(None);
                staged.push(Staged { index, stmt, selected, cache_hit });
            }
            Err(e) => {
                failure = Some((index, e));
                break;
            }
        }
    }
    // Writes before the first failure (or all of them) run; an earlier failing write is the
    // one reported.
    let limit = failure.as_ref().map_or(usize::MAX, |(i, _)| *i);
    staged.retain(|s| s.index < limit);
    let commit = match (&failure, end) {
        (None, Some((index, End::Commit))) => Some(index),
        _ => None,
    };
    let written = if staged.is_empty() { Ok(vec![]) } else { second_pass(engine, staged, identity, commit).await };
    let written = match written {
        Ok(written) => written,
        Err((index, e)) => return Err(statement_failure(e, index, &statements[index], rolled_back)),
    };
    if let Some((index, e)) = failure {
        return Err(statement_failure(e, index, &statements[index], rolled_back));
    }
    let Some((end_index, end)) = end else {
        let error = kalam_types::error::KalamError::new(
            ErrorCode::TransactionError,
            "Transaction not committed: missing COMMIT",
        );
        return Err(BatchError { error, statement_index: None, statement: None });
    };
    let mut defs = Vec::new();
    for (index, result, def) in written {
        slots[index - begin - 1] = Some(result);
        defs.push(def);
    }
    results.push(StatementResult::message(0, "Transaction started".to_owned()));
    results.extend(slots.into_iter().flatten());
    let count = end_index - begin - 1;
    let message = match end {
        End::Commit => format!("Transaction committed ({count} statement(s))"),
        End::Rollback => "Transaction rolled back".to_owned(),
    };
    results.push(StatementResult::message(0, message));
    if end == End::Commit {
        for def in defs {
            engine.maybe_trigger_flush(&def);
        }
    }
    Ok(end_index + 1)
}

enum Step {
    End(End),
    /// A SELECT, already run.
    Done(StatementResult),
    /// A write for the second pass, with the rows of its SELECT source.
    Write(KalamStatement, Option<Vec<RecordBatch>>, Option<bool>),
}

async fn first_pass(engine: &Arc<Engine>, text: &str, identity: &Identity) -> Result<Step, EngineError> {
    let lookup = engine.plan_cache.prepare(engine, text)?;
    let stmt = &lookup.prepared.stmt;
    match stmt {
        KalamStatement::Commit => return Ok(Step::End(End::Commit)),
        KalamStatement::Rollback => return Ok(Step::End(End::Rollback)),
        KalamStatement::Query(_)
        | KalamStatement::Insert(_)
        | KalamStatement::Update(_)
        | KalamStatement::Delete(_) => {}
        other => {
            return Err(EngineError::user(
                ErrorCode::TransactionError,
                format!("{} is not allowed inside a transaction", other.kind_name()),
            ));
        }
    }
    if let KalamStatement::Query(s)
    | KalamStatement::Insert(s)
    | KalamStatement::Update(s)
    | KalamStatement::Delete(s) = stmt
    {
        // A block has no parameters.
        super::params::check_count(s, &[])?;
    }
    permissions::check(engine, identity, stmt)?;
    match stmt {
        KalamStatement::Query(query) => {
            let mut result = super::run_select(engine, &lookup.prepared, query, &[], identity).await?;
            result.cache_hit = lookup.cache_hit;
            Ok(Step::Done(result))
        }
        write => {
            let selected = super::insert_source(engine, write, identity).await?;
            Ok(Step::Write(write.clone(), selected, lookup.cache_hit))
        }
    }
}

type Written = Vec<(usize, StatementResult, Arc<TableDefinition>)>;

/// Runs the staged writes in one batch under the commit lock; writes it when `commit` holds
/// the index of the COMMIT statement.
async fn second_pass(
    engine: &Arc<Engine>,
    staged: Vec<Staged>,
    identity: &Identity,
    commit: Option<usize>,
) -> Result<Written, (usize, EngineError)> {
    let first = staged.first().map_or(0, |s| s.index);
    let (engine, user) = (engine.clone(), identity.acting.clone());
    let task = tokio::task::spawn_blocking(move || {
        let mut attempts = 0;
        loop {
            let mut guard = engine.store.begin_transaction();
            let mut written = Vec::with_capacity(staged.len());
            let mut outcome = Ok(());
            for s in &staged {
                match super::write_dml(&engine, Some(&mut guard), &s.stmt, &user, s.selected.clone()) {
                    Ok((mut result, def)) => {
                        result.cache_hit = s.cache_hit;
                        written.push((s.index, result, def));
                    }
                    Err(e) => {
                        outcome = Err((s.index, e));
                        break;
                    }
                }
            }
            match outcome {
                // A table changed between resolving and locking: run the block's writes again.
                Err((_, EngineError::DefinitionChanged)) if attempts < MAX_DEFINITION_RETRIES => {
                    attempts += 1;
                    continue;
                }
                Err(failure) => return Err(failure),
                Ok(()) => {
                    if let Some(index) = commit {
                        guard.write().map_err(|e| (index, e.into()))?;
                    }
                    return Ok(written);
                }
            }
        }
    });
    // Without COMMIT (ROLLBACK) the guard is dropped unwritten.
    task.await.map_err(|e| (first, EngineError::internal(e)))?
}
