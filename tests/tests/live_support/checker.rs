//! The oracle of the live-query checker (live_checker.rs): the subscriptions' filters evaluated
//! as SQL would, the `change` messages, the replay of an unfiltered stream as one consistent
//! history, the stream §4.6 derives from it for a filter, and the comparison with what a
//! subscriber received. Declared only by live_checker.rs (through `#[path]`), not by
//! live_support/mod.rs, which other test files include.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value as Json};

pub type Row = Map<String, Json>;

/// The subscriptions' filters, evaluated here exactly as SQL would (NULL never matches).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Filter {
    All,
    Grp1,
    VAbove50,
    LowGrp12,
    NoteA,
    Grp3OrNoV,
}

pub const FILTERS: [Filter; 6] =
    [Filter::All, Filter::Grp1, Filter::VAbove50, Filter::LowGrp12, Filter::NoteA, Filter::Grp3OrNoV];

impl Filter {
    pub fn sql(self) -> &'static str {
        match self {
            Filter::All => "SELECT * FROM app.items",
            Filter::Grp1 => "SELECT * FROM app.items WHERE grp = 1",
            Filter::VAbove50 => "SELECT * FROM app.items WHERE v > 50",
            Filter::LowGrp12 => "SELECT * FROM app.items WHERE grp IN (1, 2) AND v < 30",
            Filter::NoteA => "SELECT id, note FROM app.items WHERE note LIKE 'a%'",
            Filter::Grp3OrNoV => "SELECT id, grp, v FROM app.items WHERE grp = 3 OR v IS NULL",
        }
    }

    /// Projected columns (before `_updated`, `_deleted`); `None` for `SELECT *`.
    fn columns(self) -> Option<&'static [&'static str]> {
        match self {
            Filter::NoteA => Some(&["id", "note"]),
            Filter::Grp3OrNoV => Some(&["id", "grp", "v"]),
            _ => None,
        }
    }

    fn matches(self, row: &Row) -> bool {
        let int = |c: &str| row.get(c).and_then(Json::as_i64);
        match self {
            Filter::All => true,
            Filter::Grp1 => int("grp") == Some(1),
            Filter::VAbove50 => int("v").is_some_and(|v| v > 50),
            Filter::LowGrp12 => matches!(int("grp"), Some(1 | 2)) && int("v").is_some_and(|v| v < 30),
            Filter::NoteA => row.get("note").and_then(Json::as_str).is_some_and(|n| n.starts_with('a')),
            Filter::Grp3OrNoV => int("grp") == Some(3) || row.get("v").is_none_or(Json::is_null),
        }
    }

    fn project(self, row: &Row) -> Json {
        let projected = match self.columns() {
            None => row.clone(),
            Some(cols) => cols
                .iter()
                .copied()
                .chain(["_updated", "_deleted"])
                .map(|c| (c.to_owned(), row.get(c).cloned().unwrap_or(Json::Null)))
                .collect(),
        };
        Json::Array(vec![Json::Object(projected)])
    }
}

/// One `change` message, without its per-subscription `seq`.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: String,
    pub commit_seq: u64,
    pub timestamp: Json,
    pub rows: Option<Json>,
    pub old_values: Option<Json>,
}

impl Change {
    /// Parses and shape-checks a `change` message; returns it with its `seq`.
    pub fn parse(msg: &Json) -> Result<(u64, Change), String> {
        let present = |k: &str| msg.get(k).filter(|v| !v.is_null()).cloned();
        let (Some(seq), Some(commit_seq), Some(kind)) =
            (msg["seq"].as_u64(), msg["commit_seq"].as_u64(), msg["change_type"].as_str())
        else {
            return Err(format!("change without seq, commit_seq or change_type: {msg}"));
        };
        let change = Change {
            kind: kind.to_owned(),
            commit_seq,
            timestamp: msg["timestamp"].clone(),
            rows: present("rows"),
            old_values: present("old_values"),
        };
        let one = |v: &Option<Json>| v.as_ref().map(|v| v.as_array().map_or(0, Vec::len));
        match (kind, one(&change.rows), one(&change.old_values)) {
            ("insert", Some(1), None) | ("update", Some(1), Some(1)) | ("delete", None, Some(1)) => Ok((seq, change)),
            _ => Err(format!("malformed change: {msg}")),
        }
    }

    pub fn new_row(&self) -> Option<&Row> {
        self.rows.as_ref()?.get(0)?.as_object()
    }

    fn old_row(&self) -> Option<&Row> {
        self.old_values.as_ref()?.get(0)?.as_object()
    }

    pub fn id(&self) -> Option<i64> {
        self.new_row().or(self.old_row())?.get("id")?.as_i64()
    }

    fn describe(&self) -> String {
        let show = |v: &Option<Json>| v.as_ref().map_or("-".to_owned(), Json::to_string);
        format!(
            "{} commit_seq {} at {} rows {} old_values {}",
            self.kind,
            self.commit_seq,
            self.timestamp,
            show(&self.rows),
            show(&self.old_values)
        )
    }
}

/// Replays the unfiltered stream onto the genesis state; every previous version it carries must
/// be the one the stream itself produced last for that row (so no change is missing or doubled).
pub fn replay(user: &str, genesis: &Row, changes: &[Change], failures: &mut Vec<String>) -> BTreeMap<i64, Row> {
    let mut state = BTreeMap::from([(0, genesis.clone())]);
    let mut problems = Vec::new();
    let updated = |r: Option<&Row>| r.and_then(|r| r.get("_updated")).and_then(Json::as_str).map(str::to_owned);
    for c in changes {
        let Some(id) = c.id() else {
            problems.push(format!("no id in {}", c.describe()));
            continue;
        };
        let live = state.get(&id).filter(|r| r.get("_deleted") == Some(&Json::Bool(false)));
        let ok = match c.kind.as_str() {
            "insert" => live.is_none() && c.new_row().is_some_and(|r| r.get("_deleted") == Some(&Json::Bool(false))),
            "update" => live.is_some() && live == c.old_row() && updated(c.new_row()) > updated(live),
            _ => {
                let same = |a: &Row, b: &Row| ["id", "grp", "v", "note"].iter().all(|k| a.get(*k) == b.get(*k));
                let gone = c.old_row();
                live.zip(gone).is_some_and(|(l, g)| same(l, g))
                    && gone.is_some_and(|g| g.get("_deleted") == Some(&Json::Bool(true)))
                    && updated(gone) > updated(live)
            }
        };
        if !ok {
            let before = live.map_or("no live version".to_owned(), |r| Json::Object(r.clone()).to_string());
            problems.push(format!("{} does not follow {before}", c.describe()));
        }
        let after = if c.kind == "delete" { c.old_row() } else { c.new_row() };
        if let Some(row) = after {
            state.insert(id, row.clone());
        }
    }
    if !problems.is_empty() {
        failures.push(format!(
            "{user}: the unfiltered stream is not one consistent history ({} breaks), first: {}",
            problems.len(),
            problems.iter().take(5).cloned().collect::<Vec<_>>().join(" | ")
        ));
    }
    state
}

/// What §4.6 delivers to `filter` for the unfiltered stream `all`.
pub fn expected_for(filter: Filter, all: &[Change]) -> Vec<Change> {
    all.iter()
        .filter_map(|c| {
            let (old, new) = match c.kind.as_str() {
                "insert" => (None, c.new_row()),
                "update" => (c.old_row(), c.new_row()),
                _ => (c.old_row(), None),
            };
            let (was, is) = (old.is_some_and(|r| filter.matches(r)), new.is_some_and(|r| filter.matches(r)));
            let project = |r: Option<&Row>| r.map(|r| filter.project(r));
            let (kind, rows, old_values) = match (was, is) {
                (false, true) => ("insert", project(new), None),
                (true, true) => ("update", project(new), project(old)),
                (true, false) => ("delete", None, project(old)),
                (false, false) => return None,
            };
            Some(Change {
                kind: kind.into(),
                commit_seq: c.commit_seq,
                timestamp: c.timestamp.clone(),
                rows,
                old_values,
            })
        })
        .collect()
}

pub fn compare(name: &str, expected: &[Change], got: &[Change], failures: &mut Vec<String>) {
    if expected == got {
        return;
    }
    let first = expected.iter().zip(got).position(|(e, g)| e != g).unwrap_or(expected.len().min(got.len()));
    let describe = |c: Option<&Change>| c.map_or("nothing".to_owned(), Change::describe);
    let seqs = |cs: &[Change]| cs.iter().map(|c| c.commit_seq).collect::<BTreeSet<u64>>();
    let (want, have) = (seqs(expected), seqs(got));
    let missing: Vec<u64> = want.difference(&have).take(10).copied().collect();
    let extra: Vec<u64> = have.difference(&want).take(10).copied().collect();
    failures.push(format!(
        "{name}: received {} changes, expected {}; missing commit_seq {missing:?}, unexpected {extra:?}; \
         first difference at #{first}: expected {}, received {}",
        got.len(),
        expected.len(),
        describe(expected.get(first)),
        describe(got.get(first)),
    ));
}
