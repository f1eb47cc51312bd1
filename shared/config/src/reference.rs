//! docs/configuration.md is the configuration reference. These tests hold it to the typed
//! configuration: every key documented and every documented key real, each default as the code
//! has it, and each environment variable setting the key its row names.

use std::collections::BTreeMap;

use crate::{KalamConfig, default_keys, env_key};

struct Row {
    keys: Vec<String>,
    default: String,
    env: Vec<String>,
}

/// The backticked words of one table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

fn reference_rows() -> Vec<Row> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/configuration.md");
    let text = std::fs::read_to_string(path).expect("docs/configuration.md");
    text.lines()
        .filter(|l| l.starts_with("| `"))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').collect();
            assert!(cells.len() == 3, "a reference row has key, default and environment cells: {line}");
            Row {
                keys: ticked(cells[0]),
                default: ticked(cells[1]).into_iter().next().unwrap_or_default(),
                env: ticked(cells[2]).into_iter().filter(|e| e.starts_with("KALAMDB_")).collect(),
            }
        })
        .collect()
}

fn render(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[test]
fn every_key_is_documented_and_every_documented_key_exists() {
    let typed: BTreeMap<String, serde_json::Value> = default_keys().into_iter().collect();
    let documented: Vec<String> = reference_rows().into_iter().flat_map(|r| r.keys).collect();
    let missing: Vec<&String> = typed.keys().filter(|k| !documented.contains(k)).collect();
    let unknown: Vec<&String> = documented.iter().filter(|k| !typed.contains_key(*k)).collect();
    assert!(missing.is_empty(), "keys missing from docs/configuration.md: {missing:?}");
    assert!(unknown.is_empty(), "docs/configuration.md documents keys the configuration lacks: {unknown:?}");
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<&String> = documented.iter().filter(|k| !seen.insert(*k)).collect();
    assert!(twice.is_empty(), "keys documented twice: {twice:?}");
}

#[test]
fn documented_defaults_are_the_real_ones() {
    let typed: BTreeMap<String, serde_json::Value> = default_keys().into_iter().collect();
    for row in reference_rows() {
        for key in &row.keys {
            let Some(value) = typed.get(key) else { continue };
            let actual = render(value);
            // An empty path is derived from data_dir; the reference says from what (`<data_dir>/…`).
            if actual.is_empty() {
                assert!(row.default.starts_with('<'), "{key}: empty default documented as `{}`", row.default);
            } else {
                assert_eq!(row.default, actual, "{key}: documented default differs from the code");
            }
        }
    }
}

#[test]
fn documented_environment_variables_set_their_key() {
    for row in reference_rows() {
        for var in &row.env {
            let key = env_key(&var["KALAMDB_".len()..].to_ascii_lowercase());
            assert!(row.keys.contains(&key), "{var} sets `{key}`, but its row documents {:?}", row.keys);
        }
        // Keys without an own spelling take the generic form; the reference names it.
        if row.keys.len() == 1 && row.env.is_empty() {
            panic!("{}: no environment variable documented", row.keys[0]);
        }
    }
}

#[test]
fn generic_environment_names_reach_nested_and_underscored_sections() {
    assert_eq!(env_key("rate_limit_max_queries_per_sec"), "rate_limit.max_queries_per_sec");
    assert_eq!(env_key("storage_rocksdb_keep_log_file_num"), "storage.rocksdb.keep_log_file_num");
    assert_eq!(env_key("storage_change_log_retention_seconds"), "storage.change_log_retention_seconds");
    assert_eq!(env_key("logging_max_age_days"), "logging.max_age_days");
    assert_eq!(env_key("host"), "server.host");
    let mut cfg = KalamConfig::default();
    cfg.rate_limit.max_queries_per_sec = 7;
    assert_ne!(cfg, KalamConfig::default());
}
