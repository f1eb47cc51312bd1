//! The generated side of the SQL-endpoint fuzz test (sql_fuzz.rs): the vocabulary, the proptest
//! strategies that build statements, mutated statements, request bodies and senders from it, and
//! the fixed cases (known failures and deeply nested SQL).

use proptest::prelude::*;
use serde_json::{Value as Json, json};

// ---------------------------------------------------------------------------------------------
// Vocabulary

const IDENTS: &[&str] = &[
    "fz",
    "scratch",
    "u",
    "s",
    "p",
    "e",
    "s1",
    "s2",
    "id",
    "name",
    "n",
    "x",
    "b",
    "ts",
    "d",
    "t",
    "j",
    "bin",
    "k",
    "v",
    "payload",
    "a",
    "_updated",
    "_deleted",
    "system",
    "users",
    "tables",
    "jobs",
    "information_schema",
    "columns",
    "fuzzer",
    "user",
    "q",
    "r",
];
#[rustfmt::skip]
const TABLES: &[&str] = &[
    "fz.u", "fz.s", "fz.p", "fz.e", "scratch.s1", "scratch.s2", "fz.fuzzer.u", "fz.user.u", "fz.other.u",
    "fz.system.e", "system.users", "system.tables", "system.jobs", "system.namespaces", "system.storages",
    "system.live_queries", "system.flush_status", "system.table_schemas", "system.table_options",
    "system.audit_log", "system.processes", "information_schema.tables", "information_schema.columns", "u",
    "nosuch.t", "fz.nosuch", "\"fz\".\"u\"",
];
/// Functions (DataFusion's and KalamDB's). Functions that build values as large as an argument
/// says (repeat, lpad, generate_series, …) are left out: they test memory, not the planner.
#[rustfmt::skip]
const FUNCTIONS: &[&str] = &[
    "abs", "length", "upper", "lower", "substr", "coalesce", "nullif", "concat", "round", "floor", "ceil", "sqrt",
    "ln", "power", "now", "snowflake_id", "uuid_v7", "ulid", "current_user", "date_part", "date_trunc",
    "to_timestamp", "to_char", "regexp_match", "regexp_replace", "array_agg", "sum", "count", "min", "max", "avg",
    "string_agg", "make_array", "array_length", "starts_with", "strpos", "md5", "sha256", "encode", "decode",
    "arrow_typeof", "row_number", "cardinality", "btrim", "chr", "to_hex", "atan2", "trunc", "date_bin",
    "from_unixtime", "character_length", "left", "right", "split_part", "translate", "nvl", "greatest", "least",
    "named_struct", "get_field", "array_element", "make_date", "nosuchfunction",
];
#[rustfmt::skip]
const BINOPS: &[&str] = &[
    "+", "-", "*", "/", "%", "||", "=", "<>", "!=", "<", ">", "<=", ">=", "AND", "OR", "LIKE", "NOT LIKE", "ILIKE",
    "IS DISTINCT FROM", "IS NOT DISTINCT FROM", "&", "|", "^", "<<", ">>", "->", "->>", "@>", "<@", "~", "!~", "~*",
    "SIMILAR TO", "#", "::", "DIV", "AT TIME ZONE",
];
#[rustfmt::skip]
const TYPES: &[&str] = &[
    "INT", "INTEGER", "BIGINT", "TEXT", "VARCHAR(5)", "DOUBLE", "BOOLEAN", "TIMESTAMP", "DATE", "TIME", "JSON",
    "BYTES", "DECIMAL(10, 2)", "FLOAT", "SMALLINT", "UUID", "INTERVAL", "INT[]", "SERIAL", "TIMESTAMPTZ",
    "BIGINT UNSIGNED", "STRUCT<a INT>", "nosuchtype",
];
/// Valid statements, the seeds of the byte-level mutations.
const CORPUS: &[&str] = &[
    "SELECT * FROM fz.u WHERE id = 1",
    "SELECT id, name, n + 1 AS m FROM fz.u WHERE name LIKE 'o%' ORDER BY id DESC LIMIT 10",
    "SELECT count(*), max(x) FROM fz.u GROUP BY b HAVING count(*) > 0",
    "SELECT u.id, s.v FROM fz.u u JOIN fz.s s ON u.name = s.k",
    "SELECT * FROM fz.u WHERE id IN (SELECT v FROM fz.s WHERE j IS NOT NULL)",
    "WITH q AS (SELECT id FROM fz.u) SELECT * FROM q WHERE id > 1",
    "SELECT id FROM fz.u UNION ALL SELECT v FROM fz.s",
    "SELECT * FROM fz.u WHERE _deleted = true",
    "SELECT id, _updated FROM fz.u WHERE _updated > NOW() - INTERVAL '1 hour'",
    "SELECT * FROM fz.u WHERE id = $1 AND name = $2",
    "SELECT row_number() OVER (PARTITION BY b ORDER BY id) FROM fz.u",
    "SELECT CAST(n AS BIGINT), CAST('2025-01-01' AS DATE), X'00ff', 0xDEAD, 1e308, -9223372036854775808",
    "SELECT NOW(), SNOWFLAKE_ID(), UUID_V7(), ULID(), CURRENT_USER()",
    "SELECT j->'a', j->>'b' FROM fz.u",
    "INSERT INTO fz.u (id, name, n) VALUES (10, 'ten', 10)",
    "INSERT INTO fz.u (id, name, j) VALUES ($1, $2, $3)",
    "INSERT INTO fz.u SELECT * FROM fz.u WHERE id = 1",
    "INSERT INTO fz.e (payload, n) VALUES ('{}', 1)",
    "UPDATE fz.u SET n = n + 1, name = upper(name) WHERE id = 1",
    "UPDATE fz.s SET v = 2 WHERE k = 'a'",
    "DELETE FROM fz.u WHERE id = 10",
    "DELETE FROM fz.u WHERE name IS NULL AND n < 0",
    "CREATE USER TABLE scratch.t1 (id BIGINT PRIMARY KEY, a TEXT NOT NULL DEFAULT 'x', c TIMESTAMP DEFAULT NOW())",
    "CREATE SHARED TABLE IF NOT EXISTS scratch.t2 (k TEXT PRIMARY KEY, v JSON) ACCESS restricted FLUSH ROWS 100",
    "CREATE STREAM TABLE scratch.t3 (id TEXT PRIMARY KEY DEFAULT ULID(), p JSON) TTL 10s MAX_BUFFER 5 EPHEMERAL",
    "ALTER TABLE scratch.s1 ADD COLUMN c INT DEFAULT 0",
    "ALTER TABLE scratch.s1 RENAME COLUMN a TO a2",
    "ALTER TABLE scratch.s2 MODIFY COLUMN a BIGINT",
    "DROP TABLE IF EXISTS scratch.t1",
    "CREATE NAMESPACE IF NOT EXISTS scratch2",
    "ALTER NAMESPACE scratch SET OPTIONS (owner = 'x', days = 3)",
    "SHOW TABLES IN fz",
    "SHOW NAMESPACES",
    "DESCRIBE TABLE fz.u",
    "SHOW TABLE STATS fz.u",
    "FLUSH TABLE scratch.s1",
    "SUBSCRIBE TO fz.u WHERE n > 1 OPTIONS (last_rows = 5)",
    "KILL JOB 'nope'",
    "KILL LIVE QUERY 'nope'",
    "BEGIN; INSERT INTO fz.u (id) VALUES (20); ROLLBACK",
    "START TRANSACTION; UPDATE fz.u SET n = 1 WHERE id = 2; COMMIT",
    "SELECT * FROM system.users WHERE deleted_at IS NULL",
    "SELECT * FROM information_schema.columns WHERE table_name = 'u'",
    "ALTER FLUSH SETTINGS scratch.s1 SET INTERVAL 60s, ROW_THRESHOLD 5000",
    "CREATE USER IF NOT EXISTS 'fz_new' WITH ROLE user EMAIL 'a@b.c' METADATA '{\"a\": 1}'",
    "ALTER USER 'fz_new' SET METADATA '{\"b\": 2}'",
    "EXPLAIN SELECT * FROM fz.u",
    "CLEAR CACHE",
];

// ---------------------------------------------------------------------------------------------
// Strategies

fn sql_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn ident() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(IDENTS).prop_map(String::from),
        2 => "[a-z_][a-z0-9_]{0,12}",
        1 => "[A-Za-z_][A-Za-z0-9_$]{0,8}",
        1 => any::<String>().prop_map(|s| format!("\"{}\"", s.replace('"', "\"\""))),
        1 => prop::sample::select(&["SELECT", "FROM", "NULL", "user", "default", "ORDER", "\"\"", "_x"][..])
            .prop_map(String::from),
    ]
    .boxed()
}

fn table_ref() -> BoxedStrategy<String> {
    prop_oneof![
        6 => prop::sample::select(TABLES).prop_map(String::from),
        1 => ident(),
        1 => (ident(), ident()).prop_map(|(a, b)| format!("{a}.{b}")),
        1 => (ident(), ident(), ident()).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
        1 => "fz\\.[a-zA-Z0-9_.@/-]{0,70}\\.u",
    ]
    .boxed()
}

fn column() -> BoxedStrategy<String> {
    prop_oneof![
        4 => ident(),
        1 => (ident(), ident()).prop_map(|(a, b)| format!("{a}.{b}")),
        1 => Just("*".to_owned()),
    ]
    .boxed()
}

fn literal() -> BoxedStrategy<String> {
    prop_oneof![
        3 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => "[0-9]{19,80}",
        1 => any::<f64>().prop_map(|f| format!("{f:e}")),
        1 => "-?[0-9]{1,5}\\.[0-9]{0,5}(e[+-]?[0-9]{1,4})?",
        3 => any::<String>().prop_map(|s| sql_string(&s)),
        1 => "'[0-9T:. +-]{0,30}'",
        1 => prop::sample::select(&["NULL", "TRUE", "FALSE", "''", "'NaN'", "'-Infinity'", "-0", "-0.0", "CURRENT_TIMESTAMP"][..])
            .prop_map(String::from),
        1 => ("(DATE|TIMESTAMP|TIME|INTERVAL)", "[0-9a-z :.-]{0,30}").prop_map(|(t, v)| format!("{t} '{v}'")),
        1 => "X'[0-9A-Fa-f]{0,17}'",
        1 => "0x[0-9a-fA-F]{0,24}",
        2 => "\\$[0-9]{1,2}",
        1 => prop::sample::select(&["$0", "$99999999999999999999", "$-1", "$", "?", ":name", "@x", "$1$2"][..]).prop_map(String::from),
        1 => "\\[[0-9, ]{0,12}\\]",
        1 => "'\\{\"[a-z]{0,3}\": ?[0-9\\[\\]{}\"a-z:,]{0,12}\\}'",
    ]
    .boxed()
}

fn expr() -> BoxedStrategy<String> {
    let leaf = prop_oneof![3 => literal(), 2 => column()];
    leaf.prop_recursive(4, 48, 4, |inner| {
        prop_oneof![
            4 => (inner.clone(), prop::sample::select(BINOPS), inner.clone())
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            1 => (prop::sample::select(&["-", "+", "NOT ", "~", "@", "!!"][..]), inner.clone())
                .prop_map(|(op, e)| format!("{op}{e}")),
            3 => (prop::sample::select(FUNCTIONS), prop::collection::vec(inner.clone(), 0..4))
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
            1 => (prop::sample::select(&["count", "sum", "max"][..]), inner.clone())
                .prop_map(|(f, e)| format!("{f}(DISTINCT {e})")),
            2 => inner.clone().prop_map(|e| format!("({e})")),
            2 => (inner.clone(), prop::sample::select(TYPES)).prop_map(|(e, t)| format!("CAST({e} AS {t})")),
            1 => (inner.clone(), prop::sample::select(TYPES)).prop_map(|(e, t)| format!("{e}::{t}")),
            1 => (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("CASE WHEN {a} THEN {b} ELSE {c} END")),
            1 => (inner.clone(), prop::collection::vec(inner.clone(), 1..4), any::<bool>())
                .prop_map(|(a, l, not)| format!("{a} {}IN ({})", if not { "NOT " } else { "" }, l.join(", "))),
            1 => (inner.clone(), inner.clone(), inner.clone()).prop_map(|(a, b, c)| format!("{a} BETWEEN {b} AND {c}")),
            1 => (inner.clone(), prop::sample::select(&["IS NULL", "IS NOT NULL", "IS TRUE", "IS NOT FALSE"][..]))
                .prop_map(|(e, s)| format!("{e} {s}")),
            1 => (inner.clone(), table_ref()).prop_map(|(e, t)| format!("(SELECT {e} FROM {t})")),
            1 => (inner.clone(), table_ref(), inner.clone())
                .prop_map(|(e, t, w)| format!("EXISTS (SELECT {e} FROM {t} WHERE {w})")),
            1 => (inner.clone(), table_ref()).prop_map(|(e, t)| format!("{e} IN (SELECT id FROM {t})")),
            1 => (inner.clone(), inner.clone()).prop_map(|(e, o)| format!("sum({e}) OVER (PARTITION BY {o} ORDER BY {o})")),
            1 => (inner.clone(), inner.clone()).prop_map(|(a, i)| format!("{a}[{i}]")),
        ]
    })
    .boxed()
}

fn select() -> BoxedStrategy<String> {
    let projection = prop::collection::vec((expr(), prop::option::of(ident())), 1..4).prop_map(|items| {
        items.into_iter().map(|(e, a)| a.map_or(e.clone(), |a| format!("{e} AS {a}"))).collect::<Vec<_>>().join(", ")
    });
    let from = prop_oneof![
        4 => (table_ref(), prop::option::of(ident())).prop_map(|(t, a)| a.map_or(t.clone(), |a| format!("{t} {a}"))),
        2 => (
            table_ref(),
            prop::sample::select(&["JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN", "CROSS JOIN", ","][..]),
            table_ref(),
            expr()
        )
            .prop_map(|(l, k, r, on)| if k == "CROSS JOIN" || k == "," {
                format!("{l} a {k} {r} b")
            } else {
                format!("{l} a {k} {r} b ON {on}")
            }),
        1 => (expr(), table_ref()).prop_map(|(e, t)| format!("(SELECT {e} AS c FROM {t}) AS sq")),
        1 => expr().prop_map(|e| format!("unnest(make_array({e}))")),
    ];
    (
        any::<bool>(),
        projection,
        prop::option::weighted(0.85, from),
        prop::option::of(expr()),
        prop::option::weighted(0.2, prop::collection::vec(expr(), 1..3)),
        prop::option::weighted(0.1, expr()),
        prop::option::weighted(0.3, prop::collection::vec((expr(), any::<bool>()), 1..3)),
        prop::option::weighted(0.3, literal()),
    )
        .prop_map(|(distinct, proj, from, filter, group, having, order, limit)| {
            let mut sql = format!("SELECT {}{proj}", if distinct { "DISTINCT " } else { "" });
            if let Some(f) = from {
                sql.push_str(&format!(" FROM {f}"));
            }
            if let Some(w) = filter {
                sql.push_str(&format!(" WHERE {w}"));
            }
            if let Some(g) = group {
                sql.push_str(&format!(" GROUP BY {}", g.join(", ")));
            }
            if let Some(h) = having {
                sql.push_str(&format!(" HAVING {h}"));
            }
            if let Some(o) = order {
                let o: Vec<String> =
                    o.into_iter().map(|(e, desc)| format!("{e}{}", if desc { " DESC" } else { "" })).collect();
                sql.push_str(&format!(" ORDER BY {}", o.join(", ")));
            }
            if let Some(l) = limit {
                sql.push_str(&format!(" LIMIT {l}"));
            }
            sql
        })
        .boxed()
}

fn dml() -> BoxedStrategy<String> {
    prop_oneof![
        2 => (table_ref(), prop::option::of(prop::collection::vec(ident(), 1..4)), prop::collection::vec(prop::collection::vec(expr(), 1..4), 1..3))
            .prop_map(|(t, cols, rows)| {
                let cols = cols.map(|c| format!(" ({})", c.join(", "))).unwrap_or_default();
                let rows: Vec<String> = rows.into_iter().map(|r| format!("({})", r.join(", "))).collect();
                format!("INSERT INTO {t}{cols} VALUES {}", rows.join(", "))
            }),
        1 => (table_ref(), select()).prop_map(|(t, s)| format!("INSERT INTO {t} {s}")),
        2 => (table_ref(), prop::collection::vec((ident(), expr()), 1..3), prop::option::of(expr())).prop_map(|(t, sets, w)| {
            let sets: Vec<String> = sets.into_iter().map(|(c, e)| format!("{c} = {e}")).collect();
            let w = w.map(|w| format!(" WHERE {w}")).unwrap_or_default();
            format!("UPDATE {t} SET {}{w}", sets.join(", "))
        }),
        2 => (table_ref(), prop::option::of(expr())).prop_map(|(t, w)| {
            format!("DELETE FROM {t}{}", w.map(|w| format!(" WHERE {w}")).unwrap_or_default())
        }),
    ]
    .boxed()
}

fn column_def() -> BoxedStrategy<String> {
    (
        ident(),
        prop::sample::select(TYPES),
        prop::sample::select(
            &["", " NOT NULL", " NULL", " PRIMARY KEY", " NOT NULL PRIMARY KEY", " AUTO_INCREMENT"][..],
        ),
        prop::option::of(prop_oneof![
            literal(),
            prop::sample::select(&["NOW()", "SNOWFLAKE_ID()", "UUID_V7()", "ULID()", "CURRENT_USER()", "nope()"][..])
                .prop_map(String::from)
        ]),
    )
        .prop_map(|(n, t, c, d)| format!("{n} {t}{c}{}", d.map(|d| format!(" DEFAULT {d}")).unwrap_or_default()))
        .boxed()
}

/// DDL and admin statements. Destructive ones are pointed at the scratch namespace, so the
/// tables the other statements use stay in place.
fn ddl() -> BoxedStrategy<String> {
    let scratch = ident().prop_map(|i| format!("scratch.{i}"));
    prop_oneof![
        3 => (
            prop::sample::select(&["", "USER ", "SHARED ", "STREAM "][..]),
            scratch.clone(),
            prop::collection::vec(column_def(), 0..5),
            prop::sample::select(&[
                "", " ACCESS public", " ACCESS nope", " TTL 10s", " TTL 0s", " FLUSH ROWS 0", " FLUSH INTERVAL 99999999999s",
                " STORAGE nope", " SHARDING hash(0)", " SHARDING hash(99999999999)", " MAX_BUFFER -1", " EPHEMERAL",
                " WITH (flush_row_threshold = 'x')", " DELETED_RETENTION '5x'", " USE_USER_STORAGE", " OWNER_ID 'x'",
            ][..]),
        )
            .prop_map(|(kind, t, cols, opt)| format!("CREATE {kind}TABLE IF NOT EXISTS {t} ({}){opt}", cols.join(", "))),
        2 => (
            prop::sample::select(&["scratch.s1", "scratch.s2", "fz.e", "system.users", "scratch.nope"][..]),
            prop_oneof![
                column_def().prop_map(|c| format!("ADD COLUMN {c}")),
                ident().prop_map(|c| format!("DROP COLUMN {c}")),
                (ident(), ident()).prop_map(|(a, b)| format!("RENAME COLUMN {a} TO {b}")),
                (ident(), prop::sample::select(TYPES)).prop_map(|(c, t)| format!("MODIFY COLUMN {c} {t} NOT NULL")),
            ],
        )
            .prop_map(|(t, action)| format!("ALTER TABLE {t} {action}")),
        1 => scratch.clone().prop_map(|t| format!("DROP TABLE IF EXISTS {t}")),
        1 => ident().prop_map(|n| format!("CREATE NAMESPACE IF NOT EXISTS sc_{n}")),
        1 => ident().prop_map(|n| format!("DROP NAMESPACE IF EXISTS sc_{n} CASCADE")),
        1 => (ident(), literal()).prop_map(|(k, v)| format!("ALTER NAMESPACE scratch SET OPTIONS ({k} = {v})")),
        1 => (ident(), any::<String>()).prop_map(|(id, m)| format!("CREATE USER IF NOT EXISTS 'fz_{id}' WITH ROLE user METADATA {}", sql_string(&m))),
        1 => (prop::sample::select(&["user", "service", "dba", "system", "root", ""][..]), ident())
            .prop_map(|(r, id)| format!("ALTER USER 'fz_{id}' SET ROLE {r}")),
        1 => ident().prop_map(|s| format!("DROP STORAGE IF EXISTS {s}")),
        1 => (ident(), literal()).prop_map(|(s, v)| format!("ALTER STORAGE {s} SET DESCRIPTION {v}")),
        1 => prop::sample::select(&[
            "SHOW NAMESPACES", "SHOW TABLES", "SHOW STORAGES", "CLEAR CACHE", "FLUSH ALL TABLES IN scratch",
            "PAUSE FLUSH scratch.s1", "RESUME FLUSH scratch.s1", "ALTER FLUSH SETTINGS scratch.s1 RESET", "COMMIT", "ROLLBACK",
            "BEGIN", "VACUUM", "SET x = 1", "SHOW ALL", "COPY fz.u TO '/dev/null'", "ANALYZE fz.u", "TRUNCATE fz.u",
            "PREPARE q AS SELECT 1", "EXECUTE q", "GRANT ALL ON fz.u TO bob", "EXECUTE AS USER 'x' (SELECT 1)",
        ][..]).prop_map(String::from),
        2 => (prop::sample::select(&["DESCRIBE TABLE", "DESC TABLE", "SHOW TABLE STATS", "FLUSH TABLE", "SUBSCRIBE TO", "SHOW TABLES IN", "EXPLAIN SELECT * FROM"][..]), table_ref())
            .prop_map(|(s, t)| format!("{s} {t}")),
        1 => (table_ref(), expr(), literal()).prop_map(|(t, w, n)| format!("SUBSCRIBE TO {t} WHERE {w} OPTIONS (last_rows = {n})")),
        1 => (prop::sample::select(&["KILL JOB", "RETRY JOB", "KILL LIVE QUERY"][..]), literal()).prop_map(|(s, id)| format!("{s} {id}")),
        1 => (prop::sample::select(&["INTERVAL", "ROW_THRESHOLD", "SHARDING"][..]), literal())
            .prop_map(|(k, v)| format!("ALTER FLUSH SETTINGS scratch.s1 SET {k} {v}")),
    ]
    .boxed()
}

fn statement() -> BoxedStrategy<String> {
    prop_oneof![
        5 => select(),
        1 => (select(), prop::sample::select(&["UNION", "UNION ALL", "INTERSECT", "EXCEPT", "EXCEPT ALL"][..]), select())
            .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
        1 => (select(), select()).prop_map(|(a, b)| format!("WITH q AS ({a}) {b}")),
        3 => dml(),
        3 => ddl(),
    ]
    .boxed()
}

fn batch() -> BoxedStrategy<String> {
    prop_oneof![
        6 => statement(),
        1 => prop::collection::vec(statement(), 2..4).prop_map(|s| s.join("; ")),
        1 => prop::collection::vec(dml(), 1..3).prop_map(|s| format!("BEGIN; {}; COMMIT", s.join("; "))),
        1 => (statement(), prop::sample::select(&["", ";", ";;", " -- c", " /* c", "\n/* */", "; SELECT 1"][..]))
            .prop_map(|(s, tail)| format!("{s}{tail}")),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(f64),
    Duplicate(f64, usize),
    SwapTokens(f64, f64),
    Insert(f64, String),
    Delete(f64, usize),
    Replace(f64, char),
}

const INSERTS: &[&str] = &[
    "'",
    "\"",
    "(",
    ")",
    ";",
    "$1",
    "$0",
    "--",
    "/*",
    "*/",
    "\\",
    "\0",
    "é",
    "🦀",
    "\u{202e}",
    " UNION SELECT ",
    ",",
    "NULL",
    "99999999999999999999999",
    "-",
    "::",
    "[",
    "]",
    "{",
    "}",
    "`",
    "\n",
    "\t",
    "E'",
    "$$",
    " OR 1=1 ",
    ".",
    "*",
    "%",
    " WHERE ",
    " FROM ",
    "\u{feff}",
    "\u{10ffff}",
];

fn mutation() -> BoxedStrategy<Mutation> {
    let at = 0.0..1.0f64;
    prop_oneof![
        1 => at.clone().prop_map(Mutation::Truncate),
        1 => (at.clone(), 1usize..40).prop_map(|(p, n)| Mutation::Duplicate(p, n)),
        2 => (at.clone(), at.clone()).prop_map(|(a, b)| Mutation::SwapTokens(a, b)),
        3 => (at.clone(), prop_oneof![prop::sample::select(INSERTS).prop_map(String::from), any::<char>().prop_map(String::from)])
            .prop_map(|(p, s)| Mutation::Insert(p, s)),
        1 => (at.clone(), 1usize..10).prop_map(|(p, n)| Mutation::Delete(p, n)),
        1 => (at, any::<char>()).prop_map(|(p, c)| Mutation::Replace(p, c)),
    ]
    .boxed()
}

fn mutate(sql: &str, mutations: &[Mutation]) -> String {
    let mut s: Vec<char> = sql.chars().collect();
    let pos = |f: f64, len: usize| ((f * len as f64) as usize).min(len);
    for m in mutations {
        let len = s.len();
        match m {
            Mutation::Truncate(f) => s.truncate(pos(*f, len)),
            Mutation::Duplicate(f, n) => {
                let start = pos(*f, len);
                let end = (start + n).min(len);
                let piece: Vec<char> = s[start..end].to_vec();
                s.splice(end..end, piece);
            }
            Mutation::SwapTokens(a, b) => {
                let text: String = s.iter().collect();
                let mut tokens: Vec<&str> = text.split(' ').collect();
                let (i, j) = (pos(*a, tokens.len() - 1), pos(*b, tokens.len() - 1));
                tokens.swap(i, j);
                s = tokens.join(" ").chars().collect();
            }
            Mutation::Insert(f, ins) => {
                let p = pos(*f, len);
                s.splice(p..p, ins.chars());
            }
            Mutation::Delete(f, n) => {
                let start = pos(*f, len);
                s.drain(start..(start + n).min(len));
            }
            Mutation::Replace(f, c) => {
                if len > 0 {
                    s[pos(*f, len - 1)] = *c;
                }
            }
        }
    }
    s.into_iter().collect()
}

fn mutated() -> BoxedStrategy<String> {
    let seed = prop_oneof![3 => prop::sample::select(CORPUS).prop_map(String::from), 1 => statement()];
    (seed, prop::collection::vec(mutation(), 1..6)).prop_map(|(s, m)| mutate(&s, &m)).boxed()
}

fn json_value() -> BoxedStrategy<Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>().prop_map(Json::from),
        prop::sample::select(&[0.5, -0.0, 1e308, -1e308, 5e-324, 9007199254740993.0][..]).prop_map(Json::from),
        any::<String>().prop_map(Json::from),
        "[0-9T:. +-]{0,30}".prop_map(Json::from),
        prop::sample::select(
            &["NaN", "Infinity", "0x", "0xZZ", "true", "t", "1.5", "9999999999999999999999", "{}", "[1]"][..]
        )
        .prop_map(Json::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::from),
            prop::collection::btree_map("[a-z]{0,3}", inner, 0..4).prop_map(|m| Json::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Who sends a request.
#[derive(Debug, Clone)]
pub enum Who {
    /// The loopback bypass (role system).
    System,
    /// The loopback bypass acting as another user (`X-USER-ID`).
    SystemAs(String),
    /// The `user`-role API key.
    User,
    /// The API key with an `X-USER-ID` header (refused unless it names the user itself).
    UserAs(String),
}

fn who() -> BoxedStrategy<Who> {
    let user_id = prop_oneof![
        3 => prop::sample::select(&["fuzzer", "bob", "system", "a.b@c-d_e", "..", ".", "", "x/y"][..]).prop_map(String::from),
        1 => "[A-Za-z0-9_.@/: -]{0,70}",
    ];
    prop_oneof![
        4 => Just(Who::System),
        1 => user_id.clone().prop_map(Who::SystemAs),
        4 => Just(Who::User),
        1 => user_id.prop_map(Who::UserAs),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
pub enum Body {
    Sql { sql: String, params: Option<Json> },
    Raw(Vec<u8>),
}

fn raw_body() -> BoxedStrategy<Body> {
    prop_oneof![
        2 => prop::collection::vec(any::<u8>(), 0..200).prop_map(Body::Raw),
        2 => json_value().prop_map(|v| Body::Raw(v.to_string().into_bytes())),
        2 => json_value().prop_map(|v| Body::Raw(json!({"sql": v}).to_string().into_bytes())),
        2 => (prop::sample::select(CORPUS), json_value())
            .prop_map(|(s, p)| Body::Raw(json!({"sql": s, "params": p}).to_string().into_bytes())),
        2 => (prop::sample::select(CORPUS), 0.0..1.0f64).prop_map(|(s, f)| {
            let text = json!({"sql": s, "params": [1, "a"]}).to_string();
            Body::Raw(text.as_bytes()[..(f * text.len() as f64) as usize].to_vec())
        }),
        1 => (1usize..3000).prop_map(|d| {
            Body::Raw(format!("{{\"sql\": \"SELECT $1\", \"params\": [{}1{}]}}", "[".repeat(d), "]".repeat(d)).into_bytes())
        }),
        1 => (prop::sample::select(CORPUS), json_value())
            .prop_map(|(s, v)| Body::Raw(json!({"sql": s, "extra": v, "Sql": 1}).to_string().into_bytes())),
        1 => (1usize..200_000).prop_map(|n| Body::Sql { sql: format!("SELECT {}1", "1+".repeat(n % 5000)).repeat(1 + n / 5000), params: None }),
        1 => Just(Body::Raw(b"{\"sql\": \"SELECT 1\", \"sql\": \"SELECT 2\"}".to_vec())),
        1 => Just(Body::Raw(b"{\"sql\": \"\\ud800\"}".to_vec())),
    ]
    .boxed()
}

#[derive(Debug, Clone)]
pub struct Case {
    pub who: Who,
    pub body: Body,
}

fn params() -> BoxedStrategy<Option<Json>> {
    prop_oneof![
        5 => Just(None),
        4 => prop::collection::vec(json_value(), 0..5).prop_map(|v| Some(Json::from(v))),
    ]
    .boxed()
}

pub fn case() -> BoxedStrategy<Case> {
    prop_oneof![
        5 => (who(), batch(), params()).prop_map(|(who, sql, params)| Case { who, body: Body::Sql { sql, params } }),
        3 => (who(), mutated(), params()).prop_map(|(who, sql, params)| Case { who, body: Body::Sql { sql, params } }),
        1 => (who(), raw_body()).prop_map(|(who, body)| Case { who, body }),
    ]
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Fixed cases

/// Nested a few thousand levels deep: refused or answered, never a crash.
pub fn deep_cases() -> Vec<Case> {
    let mut sqls = Vec::new();
    for d in [10usize, 100, 1000, 3000, 5000] {
        let nest = |open: &str, inner: &str, close: &str| format!("{}{inner}{}", open.repeat(d), close.repeat(d));
        sqls.push(format!("SELECT {}", nest("(", "1", ")")));
        sqls.push(format!("SELECT {}", nest("-", "1", "")));
        sqls.push(format!("SELECT {}", nest("NOT ", "TRUE", "")));
        sqls.push(format!("SELECT {}", nest("abs(", "1", ")")));
        sqls.push(format!("SELECT {}", nest("coalesce(NULL, ", "1", ")")));
        sqls.push(format!("SELECT {}", nest("CASE WHEN TRUE THEN ", "1", " END")));
        sqls.push(format!("SELECT {}", nest("[", "1", "]")));
        sqls.push(format!("SELECT 1{}", " + 1".repeat(d)));
        sqls.push(format!("SELECT 'a'{}", " || 'a'".repeat(d)));
        sqls.push(format!(
            "SELECT * FROM fz.u WHERE id = 0{}",
            (1..=d).map(|i| format!(" OR id = {i}")).collect::<String>()
        ));
        sqls.push(format!("SELECT * FROM fz.u WHERE {}", nest("(", "id = 1", " AND TRUE)")));
        sqls.push(format!(
            "SELECT * FROM fz.u WHERE id IN ({})",
            (0..d).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        ));
        sqls.push(format!("SELECT * FROM {} AS q", nest("(SELECT * FROM ", "fz.u", ") AS q")));
        sqls.push(format!("SELECT * FROM fz.u WHERE id IN {}", nest("(SELECT id FROM fz.u WHERE id IN ", "(1)", ")")));
        sqls.push(format!("SELECT {}", nest("(SELECT ", "1", ")")));
        sqls.push(format!("INSERT INTO fz.u (id, n) VALUES (99, {})", nest("(", "1", ")")));
        sqls.push(format!("UPDATE fz.u SET n = {} WHERE id = -1", nest("abs(", "1", ")")));
        sqls.push(format!("SELECT {}1{}", "/*".repeat(d), "*/".repeat(d)));
    }
    // Long chains of set operations and of CTEs: planned by recursion, and slow (a 1000-link
    // UNION ALL takes seconds in a debug build), so fewer depths.
    for d in [10usize, 100, 3000] {
        sqls.push(format!("SELECT 1 {}", "UNION ALL SELECT 1 ".repeat(d)));
    }
    for d in [10usize, 100, 1000] {
        let chain: Vec<String> = (1..d).map(|i| format!("q{i} AS (SELECT c + 1 AS c FROM q{})", i - 1)).collect();
        sqls.push(format!("WITH q0 AS (SELECT 1 AS c), {} SELECT * FROM q{}", chain.join(", "), d - 1));
    }
    let mut cases: Vec<Case> =
        sqls.into_iter().map(|sql| Case { who: Who::System, body: Body::Sql { sql, params: None } }).collect();
    for d in [10usize, 100, 1000, 3000] {
        let nested = format!("{}1{}", "[".repeat(d), "]".repeat(d));
        let body = format!("{{\"sql\": \"SELECT * FROM fz.u WHERE j = $1\", \"params\": [{nested}]}}");
        cases.push(Case { who: Who::User, body: Body::Raw(body.into_bytes()) });
        let sql = format!("SELECT * FROM fz.u WHERE n = {}1{}", "(".repeat(d), ")".repeat(d));
        cases.push(Case { who: Who::User, body: Body::Sql { sql, params: None } });
    }
    cases
}

/// 5xx answers found by earlier runs, kept so the test fails until they are fixed.
pub fn known_cases() -> Vec<Case> {
    let sql = |who: Who, sql: &str, params: Option<Json>| Case { who, body: Body::Sql { sql: sql.into(), params } };
    vec![
        // A placeholder and no `params` at all (with `params: []` it is PARAM_COUNT_MISMATCH).
        sql(Who::System, "SELECT $1", None),
        sql(Who::User, "SELECT * FROM fz.u WHERE id = $1", None),
        // UNION (not UNION ALL, INTERSECT or EXCEPT) of two different columns.
        sql(Who::User, "SELECT id FROM fz.u UNION SELECT n FROM fz.u", None),
        sql(Who::System, "SELECT k FROM fz.s UNION SELECT name FROM fz.u", None),
        // SUM over a NULL literal.
        sql(Who::User, "SELECT sum(NULL)", None),
        // Row-generating functions over no rows (a join with an empty partition).
        sql(
            Who::System,
            "SELECT array_agg(uuid_v7()) AS e FROM system.namespaces a CROSS JOIN fz.user.u b WHERE b.id < 0",
            None,
        ),
        sql(Who::User, "SELECT snowflake_id() AS e FROM fz.u WHERE id < 0", None),
        // Aggregates and window functions where UPDATE/DELETE evaluate row by row.
        sql(Who::User, "DELETE FROM fz.u WHERE sum(DISTINCT '{\"w\": 5}')", None),
        sql(Who::User, "UPDATE fz.u SET n = max(n)", None),
        sql(Who::User, "DELETE FROM fz.u WHERE row_number() OVER () = 1", None),
        // A field of a scalar column, in ORDER BY and in the SELECT list.
        sql(Who::User, "SELECT id FROM fz.u ORDER BY id.x", None),
        sql(Who::User, "SELECT n['a'] FROM fz.u", None),
        // A scalar subquery that returns several rows.
        sql(Who::User, "SELECT (SELECT id FROM fz.u)", None),
        // A placeholder that is not `$<number>` (sql.md §10: `invalid parameter placeholder`).
        sql(Who::User, "SELECT $1B", None),
        // One table named twice, once with quoted identifiers ("The table u already exists").
        sql(Who::User, "SELECT 1 FROM fz.u a, \"fz\".\"u\" b", None),
    ]
}
