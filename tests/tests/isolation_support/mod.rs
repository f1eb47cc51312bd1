//! The generated side of the partition-isolation test (isolation.rs): deterministic randomness,
//! the schema, the data both clusters load, and the query generator.

use std::collections::HashSet;

use serde_json::{Value as Json, json};

/// Every number of bob's is at least this (alice's stay far below it).
pub const BOB_MIN: f64 = 9_000_000.0;

// ---------------------------------------------------------------------------------------------
// Deterministic randomness

pub struct Rng(pub u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len())]
    }
}

// ---------------------------------------------------------------------------------------------
// Schema

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Ty {
    Big,
    Int,
    Dbl,
    Text,
    Bool,
    Date,
}

pub struct Tab {
    name: &'static str,
    user: bool,
    cols: &'static [(&'static str, Ty)],
}

pub const ITEMS: Tab = Tab {
    name: "items",
    user: true,
    cols: &[
        ("id", Ty::Big),
        ("name", Ty::Text),
        ("qty", Ty::Int),
        ("price", Ty::Dbl),
        ("active", Ty::Bool),
        ("note", Ty::Text),
        ("cat_id", Ty::Big),
    ],
};
pub const ORDERS: Tab = Tab {
    name: "orders",
    user: true,
    cols: &[
        ("id", Ty::Big),
        ("item_id", Ty::Big),
        ("amount", Ty::Dbl),
        ("status", Ty::Text),
        ("paid", Ty::Bool),
        ("memo", Ty::Text),
    ],
};
const TAGS: Tab = Tab {
    name: "tags",
    user: true,
    cols: &[("tag", Ty::Text), ("item_id", Ty::Big), ("weight", Ty::Int), ("day", Ty::Date)],
};
const CAT: Tab = Tab {
    name: "cat",
    user: false,
    cols: &[("id", Ty::Big), ("cname", Ty::Text), ("rank", Ty::Int), ("hidden", Ty::Bool)],
};
const TABLES: [&Tab; 4] = [&ITEMS, &ORDERS, &TAGS, &CAT];
/// The tables single-table queries pick from, the USER ones more often.
const DATA_TABLES: [&Tab; 6] = [&ITEMS, &ITEMS, &ORDERS, &ORDERS, &TAGS, &CAT];

pub const SCHEMA: &str = "CREATE NAMESPACE app; \
    CREATE USER TABLE app.items (id BIGINT PRIMARY KEY, name TEXT NOT NULL, qty INT, price DOUBLE NOT NULL, \
        active BOOLEAN NOT NULL, note TEXT, cat_id BIGINT); \
    CREATE USER TABLE app.orders (id BIGINT PRIMARY KEY, item_id BIGINT NOT NULL, amount DOUBLE, status TEXT, \
        paid BOOLEAN, memo TEXT); \
    CREATE USER TABLE app.tags (tag TEXT PRIMARY KEY, item_id BIGINT, weight INT, day DATE); \
    CREATE SHARED TABLE app.cat (id BIGINT PRIMARY KEY, cname TEXT, rank INT, hidden BOOLEAN) ACCESS public; \
    CREATE SHARED TABLE app.vault (id BIGINT PRIMARY KEY, secret TEXT) ACCESS private";

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or("NULL".into(), |v| v.to_string())
}

// ---------------------------------------------------------------------------------------------
// Data: the same statements run on both clusters; bob's and the ghost's only on FULL.

#[derive(Clone, Copy, PartialEq)]
pub enum Who {
    System,
    Alice,
    Bob,
    Ghost,
}

pub const GHOST: &str = "bob_ghost";
const WORDS: [&str; 12] = [
    "apple",
    "Apricot",
    "banana",
    "cherry",
    "Ελιά",
    "naïve",
    "per%cent",
    "under_score",
    "O'Reilly",
    "",
    " spaced ",
    "zeta",
];
const STATUSES: [&str; 4] = ["new", "paid", "shipped", "void"];

fn items_insert(rng: &mut Rng, ids: impl Iterator<Item = i64>, bob: bool) -> String {
    let rows: Vec<String> = ids
        .map(|id| {
            let (name, qty, price, note) = if bob {
                (
                    format!("BOBSECRET-{id}"),
                    Some(9_000_000 + rng.range(0, 99_999)),
                    BOB_MIN + rng.range(0, 4000) as f64 * 0.25,
                    rng.chance(70).then(|| format!("BOBSECRET note {id}")),
                )
            } else {
                let w = rng.pick(&WORDS);
                (
                    if rng.chance(30) { (*w).to_owned() } else { format!("{w}-{id}") },
                    (!rng.chance(15)).then(|| rng.range(-20, 400)),
                    rng.range(0, 2000) as f64 * 0.25,
                    (!rng.chance(35)).then(|| (*rng.pick(&WORDS)).to_owned()),
                )
            };
            let cat = match rng.below(20) {
                0..=2 => None,
                3 => Some(99),
                _ => Some(rng.range(1, 8)),
            };
            format!(
                "({id}, {}, {}, {price:?}, {}, {}, {})",
                q(&name),
                opt(qty),
                rng.chance(60),
                note.map_or("NULL".into(), |n| q(&n)),
                opt(cat)
            )
        })
        .collect();
    format!("INSERT INTO app.items (id, name, qty, price, active, note, cat_id) VALUES {}", rows.join(", "))
}

fn orders_insert(rng: &mut Rng, ids: impl Iterator<Item = i64>, bob: bool) -> String {
    let rows: Vec<String> = ids
        .map(|id| {
            let (item, amount, status, memo) = if bob {
                (
                    rng.range(1, 25),
                    Some(BOB_MIN + rng.range(0, 800) as f64 * 0.5),
                    if rng.chance(50) { (*rng.pick(&STATUSES)).to_owned() } else { "BOBSECRET-status".into() },
                    rng.chance(60).then(|| "BOBSECRET memo".to_owned()),
                )
            } else {
                (
                    rng.range(1, 70),
                    (!rng.chance(10)).then(|| rng.range(0, 800) as f64 * 0.5),
                    (*rng.pick(&STATUSES)).to_owned(),
                    rng.chance(50).then(|| (*rng.pick(&WORDS)).to_owned()),
                )
            };
            let paid = match rng.below(3) {
                0 => "NULL",
                1 => "TRUE",
                _ => "FALSE",
            };
            format!(
                "({id}, {item}, {}, {}, {paid}, {})",
                amount.map_or("NULL".into(), |a| format!("{a:?}")),
                q(&status),
                memo.map_or("NULL".into(), |m| q(&m))
            )
        })
        .collect();
    format!("INSERT INTO app.orders (id, item_id, amount, status, paid, memo) VALUES {}", rows.join(", "))
}

fn tags_insert(rng: &mut Rng, tags: &[String], bob: bool) -> String {
    let rows: Vec<String> = tags
        .iter()
        .map(|tag| {
            let (item, weight, day) = if bob {
                (
                    rng.range(1, 20),
                    Some(9_000_000 + rng.range(0, 999)),
                    Some(format!("2099-0{}-1{}", rng.range(1, 9), rng.range(0, 9))),
                )
            } else {
                (
                    rng.range(1, 60),
                    (!rng.chance(20)).then(|| rng.range(-5, 50)),
                    (!rng.chance(25)).then(|| format!("2024-0{}-1{}", rng.range(1, 9), rng.range(0, 9))),
                )
            };
            format!("({}, {item}, {}, {})", q(tag), opt(weight), day.map_or("NULL".into(), |d| format!("DATE '{d}'")))
        })
        .collect();
    format!("INSERT INTO app.tags (tag, item_id, weight, day) VALUES {}", rows.join(", "))
}

/// Every data statement, in order. `FLUSH TABLE` statements are waited for.
pub fn data_steps(seed: u64) -> Vec<(Who, String)> {
    let mut a = Rng(seed ^ 0xA11CE);
    let mut b = Rng(seed ^ 0xB0B);
    let mut steps = vec![
        (
            Who::System,
            "INSERT INTO app.cat VALUES (1, 'books', 3, false), (2, 'games', 1, false), (3, 'garden', 4, true), \
             (4, 'tools', 2, false), (5, 'music', 8, false), (6, 'food', 5, true), (7, 'toys', 7, false), (8, 'misc', 6, false)"
                .into(),
        ),
        (Who::System, "INSERT INTO app.vault VALUES (1, 'BOBSECRET-vault'), (9000001, 'BOBSECRET-vault-2')".into()),
    ];
    // Phase A: both tiers will hold these after the first flush.
    steps.push((Who::Alice, items_insert(&mut a, 1..=30, false)));
    steps.push((Who::Alice, items_insert(&mut a, 31..=60, false)));
    steps.push((Who::Alice, orders_insert(&mut a, 1..=45, false)));
    steps.push((Who::Alice, orders_insert(&mut a, 46..=90, false)));
    let alice_tags: Vec<String> =
        (1..=30).map(|n| format!("t-{n}")).chain(["red", "green", "blue", "O'Reilly"].map(String::from)).collect();
    steps.push((Who::Alice, tags_insert(&mut a, &alice_tags, false)));
    steps.push((Who::Bob, items_insert(&mut b, (1..=20).chain(9_000_001..=9_000_030), true)));
    steps.push((Who::Bob, orders_insert(&mut b, (1..=25).chain(9_000_001..=9_000_025), true)));
    let bob_tags: Vec<String> =
        (1..=15).map(|n| format!("t-{n}")).chain((1..=10).map(|n| format!("bobsecret-{n}"))).collect();
    steps.push((Who::Bob, tags_insert(&mut b, &bob_tags, true)));
    steps.push((Who::Ghost, items_insert(&mut b, (1..=10).chain(9_100_001..=9_100_005), true)));
    steps.push((Who::Ghost, orders_insert(&mut b, 1..=10, true)));
    let ghost_tags: Vec<String> = (1..=5).map(|n| format!("t-{n}")).collect();
    steps.push((Who::Ghost, tags_insert(&mut b, &ghost_tags, true)));
    for t in ["items", "orders", "tags", "cat"] {
        steps.push((Who::System, format!("FLUSH TABLE app.{t}")));
    }
    // Phase B: updates and soft deletes over flushed rows, more rows.
    steps.push((Who::Alice, "UPDATE app.items SET qty = qty + 1, note = 'upd' WHERE id % 5 = 0".into()));
    steps.push((Who::Alice, "DELETE FROM app.items WHERE id % 7 = 3".into()));
    steps.push((Who::Alice, items_insert(&mut a, 61..=75, false)));
    steps.push((Who::Alice, "DELETE FROM app.orders WHERE status = 'void' AND id % 2 = 0".into()));
    steps.push((Who::Alice, "UPDATE app.orders SET paid = TRUE WHERE id % 4 = 1".into()));
    steps.push((Who::Alice, "DELETE FROM app.tags WHERE tag IN ('t-2', 't-9', 'blue')".into()));
    steps.push((Who::Bob, "UPDATE app.items SET name = 'BOBSECRET-upd', note = 'upd' WHERE id <= 20".into()));
    steps.push((Who::Bob, "DELETE FROM app.items WHERE id % 7 = 4 OR id % 7 = 3".into()));
    steps.push((Who::Bob, items_insert(&mut b, 61..=80, true)));
    steps.push((Who::Bob, "DELETE FROM app.orders WHERE id % 3 = 0".into()));
    steps.push((Who::Bob, "DELETE FROM app.tags WHERE tag IN ('t-1', 't-3', 'bobsecret-1')".into()));
    steps.push((Who::Ghost, "DELETE FROM app.items WHERE id % 2 = 0".into()));
    steps.push((Who::System, "FLUSH TABLE app.items".into()));
    steps.push((Who::System, "FLUSH TABLE app.orders".into()));
    // Phase C: left in the buffer.
    steps.push((Who::Alice, "DELETE FROM app.items WHERE id IN (2, 62)".into()));
    steps.push((
        Who::Alice,
        "UPDATE app.items SET price = price + 0.5, active = NOT active WHERE id IN (4, 8, 15, 64)".into(),
    ));
    steps.push((Who::Alice, orders_insert(&mut a, 91..=100, false)));
    steps.push((Who::Bob, "DELETE FROM app.items WHERE id = 61".into()));
    steps.push((Who::Bob, "UPDATE app.orders SET memo = 'BOBSECRET-late' WHERE id <= 10".into()));
    steps.push((Who::Bob, orders_insert(&mut b, 91..=100, true)));
    steps
}

// ---------------------------------------------------------------------------------------------
// Query generator

pub struct Query {
    pub family: &'static str,
    pub sql: String,
    pub params: Option<Vec<Json>>,
    /// The query has a total ORDER BY: rows are compared in order.
    pub ordered: bool,
    /// Names another user's partition: must be refused.
    pub other_partition: bool,
}

pub struct Gen {
    pub rng: Rng,
    pub params: Vec<Json>,
    pub use_params: bool,
}

const BIGS: [i64; 22] = [-1, 0, 1, 2, 3, 4, 5, 7, 10, 12, 15, 20, 25, 30, 33, 45, 60, 61, 70, 75, 9_000_001, 9_000_010];
const TEXTS: [&str; 18] = [
    "apple",
    "apple-3",
    "Apricot-7",
    "banana",
    "banana-12",
    "",
    "naïve",
    "O'Reilly",
    "new",
    "paid",
    "void",
    "t-3",
    "red",
    "upd",
    "per%cent",
    "zeta",
    "BOBSECRET-1",
    "BOBSECRET-upd",
];
const PATTERNS: [&str; 14] =
    ["a%", "%e%", "A%", "%-1_", "_pple%", "%\\%%", "BOB%", "%SECRET%", "%upd%", "t-%", "%", "", "%é%", "%Reilly"];

impl Gen {
    fn lit(&mut self, ty: Ty) -> String {
        if self.use_params && ty != Ty::Date && self.rng.chance(50) {
            let v = match ty {
                Ty::Big => json!(*self.rng.pick(&BIGS)),
                Ty::Int => json!(self.rng.range(-25, 420)),
                Ty::Dbl => json!(self.rng.range(0, 2000) as f64 * 0.25),
                Ty::Text => json!(*self.rng.pick(&TEXTS)),
                Ty::Bool => json!(self.rng.chance(50)),
                Ty::Date => unreachable!(),
            };
            // Now and then a value of the wrong kind, refused the same way on both clusters.
            let v = if self.rng.chance(4) { json!("not-a-number") } else { v };
            self.params.push(v);
            return format!("${}", self.params.len());
        }
        match ty {
            Ty::Big => self.rng.pick(&BIGS).to_string(),
            Ty::Int => {
                if self.rng.chance(5) {
                    "9000050".into()
                } else {
                    self.rng.range(-25, 420).to_string()
                }
            }
            Ty::Dbl => {
                if self.rng.chance(5) {
                    "9000000.5".into()
                } else {
                    format!("{:?}", self.rng.range(0, 2000) as f64 * 0.25)
                }
            }
            Ty::Text => q(self.rng.pick::<&str>(&TEXTS)),
            Ty::Bool => if self.rng.chance(50) { "TRUE" } else { "FALSE" }.into(),
            Ty::Date => format!(
                "DATE '20{}-0{}-1{}'",
                self.rng.pick(&["24", "24", "99"]),
                self.rng.range(1, 9),
                self.rng.range(0, 9)
            ),
        }
    }

    fn col(alias: &str, name: &str) -> String {
        if alias.is_empty() { name.to_owned() } else { format!("{alias}.{name}") }
    }

    /// A table reference; now and then another user's partition or alice's own spelled out.
    pub fn tref(&mut self, t: &Tab) -> String {
        if !t.user {
            return format!("app.{}", t.name);
        }
        match self.rng.below(100) {
            0..=3 => {
                let form = *self.rng.pick(&["app.bob.{}", "app.BOB.{}", "app.\"bob\".{}", "app.bob_ghost.{}"]);
                form.replace("{}", t.name)
            }
            4..=6 => format!("app.alice.{}", t.name),
            7..=8 => format!("app.\"user\".{}", t.name),
            _ => format!("app.{}", t.name),
        }
    }

    fn atom(&mut self, cols: &[(String, Ty)]) -> String {
        let (c, ty) = self.rng.pick(cols).clone();
        match (ty, self.rng.below(10)) {
            (_, 0) => format!("{c} IS NULL"),
            (_, 1) => format!("{c} IS NOT NULL"),
            (Ty::Bool, 2..=4) => c,
            (Ty::Bool, 5..=6) => format!("NOT {c}"),
            (Ty::Bool, _) => format!("{c} = {}", self.lit(Ty::Bool)),
            (Ty::Text, 2..=4) => {
                let not = if self.rng.chance(20) { "NOT " } else { "" };
                let op = if self.rng.chance(25) { "ILIKE" } else { "LIKE" };
                format!("{c} {not}{op} {}", q(self.rng.pick::<&str>(&PATTERNS)))
            }
            (Ty::Text, 5) => format!("length({c}) > {}", self.rng.range(0, 12)),
            (Ty::Text, 6) => format!("starts_with({c}, {})", q(self.rng.pick::<&str>(&["a", "B", "t-", "BOB", "O'"]))),
            (_, 7) => {
                let n = self.rng.range(1, 4);
                let list: Vec<String> = (0..n).map(|_| self.lit(ty)).collect();
                let not = if self.rng.chance(25) { "NOT " } else { "" };
                format!("{c} {not}IN ({})", list.join(", "))
            }
            (Ty::Big | Ty::Int | Ty::Dbl | Ty::Date, 8) => {
                let (x, y) = (self.lit(ty), self.lit(ty));
                format!("{c} BETWEEN {x} AND {y}")
            }
            (Ty::Big | Ty::Int, 9) => format!("{c} % {} = {}", self.rng.range(2, 5), self.rng.range(0, 1)),
            _ => {
                let op = *self.rng.pick(&["=", "<>", "<", "<=", ">", ">="]);
                format!("{c} {op} {}", self.lit(ty))
            }
        }
    }

    /// A predicate over `cols`; `sys` is the alias of a table whose system columns may be used.
    pub fn pred(&mut self, cols: &[(String, Ty)], sys: Option<&str>, depth: usize) -> String {
        if depth > 0 && self.rng.chance(45) {
            let l = self.pred(cols, sys, depth - 1);
            return match self.rng.below(5) {
                0 => format!("NOT ({l})"),
                1 | 2 => format!("({l} OR {})", self.pred(cols, sys, depth - 1)),
                _ => format!("({l} AND {})", self.pred(cols, sys, depth - 1)),
            };
        }
        if let Some(alias) = sys
            && self.rng.chance(8)
        {
            let d = Self::col(alias, "_deleted");
            let u = Self::col(alias, "_updated");
            return match self.rng.below(6) {
                0 => format!("{d} = true"),
                1 => format!("{d} = false"),
                2 => d,
                3 => format!("({d} OR {})", self.atom(cols)),
                4 => format!("{u} > TIMESTAMP '2000-01-01 00:00:00'"),
                _ => format!("{u} <= NOW()"),
            };
        }
        self.atom(cols)
    }

    pub fn cols_of(t: &Tab, alias: &str) -> Vec<(String, Ty)> {
        t.cols.iter().map(|(n, ty)| (Self::col(alias, n), *ty)).collect()
    }

    fn expr(&mut self, c: &str, ty: Ty) -> String {
        match (ty, self.rng.below(8)) {
            (_, 0..=2) => c.to_owned(),
            (Ty::Big | Ty::Int, 3) => format!("{c} + 1"),
            (Ty::Big | Ty::Int, 4) => format!("{c} * 2"),
            (Ty::Big | Ty::Int, 5) => format!("{c} % 7"),
            (Ty::Big | Ty::Int, 6) => format!("coalesce({c}, -1)"),
            (Ty::Big | Ty::Int, _) => format!("CAST({c} AS TEXT)"),
            (Ty::Dbl, 3) => format!("{c} * 2"),
            (Ty::Dbl, 4) => format!("{c} + 0.5"),
            (Ty::Dbl, 5) => format!("floor({c})"),
            (Ty::Dbl, _) => format!("{c} / 4"),
            (Ty::Text, 3) => format!("upper({c})"),
            (Ty::Text, 4) => format!("length({c})"),
            (Ty::Text, 5) => format!("coalesce({c}, '∅')"),
            (Ty::Text, 6) => format!("substr({c}, 1, 3)"),
            (Ty::Text, _) => format!("{c} || '!'"),
            (Ty::Bool, 3 | 4) => format!("NOT {c}"),
            (Ty::Bool, _) => format!("CASE WHEN {c} THEN 'y' ELSE 'n' END"),
            (Ty::Date, 3 | 4) => format!("CAST({c} AS TEXT)"),
            (Ty::Date, _) => format!("date_part('month', {c})"),
        }
    }

    /// 1..=max projected expressions over `cols`, with aliases most of the time (a bare column
    /// at most once: DataFusion refuses duplicate expressions).
    fn proj(&mut self, cols: &[(String, Ty)], max: usize) -> Vec<String> {
        let n = 1 + self.rng.below(max);
        let mut bare = HashSet::new();
        (0..n)
            .map(|i| {
                let (c, ty) = self.rng.pick(cols).clone();
                let e = self.expr(&c, ty);
                if e == c && self.rng.chance(40) && bare.insert(c) { e } else { format!("{e} AS e{i}") }
            })
            .collect()
    }

    /// `ORDER BY 1, …, k` over every output column (a total order), sometimes with LIMIT.
    fn order(&mut self, k: usize, sql: &mut String) -> bool {
        if !self.rng.chance(35) {
            return false;
        }
        let ords: Vec<String> = (1..=k).map(|i| i.to_string()).collect();
        sql.push_str(&format!(" ORDER BY {}", ords.join(", ")));
        if self.rng.chance(60) {
            sql.push_str(&format!(" LIMIT {}", self.rng.range(0, 12)));
            if self.rng.chance(30) {
                sql.push_str(&format!(" OFFSET {}", self.rng.range(0, 5)));
            }
        }
        true
    }

    fn data_table(&mut self) -> &'static Tab {
        self.rng.pick::<&Tab>(&DATA_TABLES)
    }

    fn single(&mut self) -> (String, bool) {
        let t = self.data_table();
        let alias = if self.rng.chance(40) { "x" } else { "" };
        let from = self.tref(t);
        let cols = Self::cols_of(t, alias);
        let proj = if self.rng.chance(10) { vec!["*".to_owned()] } else { self.proj(&cols, 4) };
        let distinct = if self.rng.chance(10) { "DISTINCT " } else { "" };
        let as_alias = if alias.is_empty() { String::new() } else { format!(" AS {alias}") };
        let mut sql = format!("SELECT {distinct}{} FROM {from}{as_alias}", proj.join(", "));
        if self.rng.chance(85) {
            let p = self.pred(&cols, Some(alias), 2);
            sql.push_str(&format!(" WHERE {p}"));
        }
        let k = if proj[0] == "*" { t.cols.len() } else { proj.len() };
        let ordered = self.order(k, &mut sql);
        (sql, ordered)
    }

    fn join(&mut self) -> (String, bool) {
        let specs: [(&Tab, &str, &Tab, &str, &str); 7] = [
            (&ITEMS, "i", &ORDERS, "o", "i.id = o.item_id"),
            (&ITEMS, "i", &TAGS, "g", "i.id = g.item_id"),
            (&ORDERS, "o", &TAGS, "g", "o.item_id = g.item_id"),
            (&ITEMS, "i", &CAT, "c", "i.cat_id = c.id"),
            (&ORDERS, "o", &CAT, "c", "o.item_id % 8 + 1 = c.id"),
            (&ITEMS, "i", &ITEMS, "j", "i.id + 1 = j.id"),
            (&TAGS, "g", &CAT, "c", "g.weight = c.rank"),
        ];
        let (l, la, r, ra, on) = *self.rng.pick(&specs);
        let kind = *self.rng.pick(&["JOIN", "INNER JOIN", "LEFT JOIN", "RIGHT JOIN", "FULL JOIN"]);
        let mut cols = Self::cols_of(l, la);
        let rcols = Self::cols_of(r, ra);
        let mut on = on.to_owned();
        if self.rng.chance(25) {
            on = format!("{on} AND {}", self.pred(&rcols, Some(ra), 0));
        }
        cols.extend(rcols);
        let (lt, rt) = (self.tref(l), self.tref(r));
        let mut from = format!("{lt} {la} {kind} {rt} {ra} ON {on}");
        if l.name != "items" && r.name == "cat" && self.rng.chance(30) {
            // A third table.
            from = format!("{from} JOIN {} i ON i.id = {la}.item_id", self.tref(&ITEMS));
            cols.extend(Self::cols_of(&ITEMS, "i"));
        }
        let proj = self.proj(&cols, 5);
        let mut sql = format!("SELECT {} FROM {from}", proj.join(", "));
        if self.rng.chance(75) {
            let p = self.pred(&cols, Some(la), 2);
            sql.push_str(&format!(" WHERE {p}"));
        }
        let ordered = self.order(proj.len(), &mut sql);
        (sql, ordered)
    }

    fn subquery(&mut self) -> (String, bool) {
        let items = self.tref(&ITEMS);
        let orders = self.tref(&ORDERS);
        let icols = Self::cols_of(&ITEMS, "i");
        let ocols = Self::cols_of(&ORDERS, "o");
        let mut sql = match self.rng.below(8) {
            0 => {
                let not = if self.rng.chance(30) { "NOT " } else { "" };
                let inner = self.pred(&Self::cols_of(&ORDERS, ""), Some(""), 1);
                let proj = self.proj(&icols, 3).join(", ");
                format!("SELECT {proj} FROM {items} i WHERE i.id {not}IN (SELECT item_id FROM {orders} WHERE {inner})")
            }
            1 => {
                let not = if self.rng.chance(30) { "NOT " } else { "" };
                let inner = self.pred(&ocols, Some("o"), 1);
                let outer = self.pred(&icols, Some("i"), 1);
                let proj = self.proj(&icols, 3).join(", ");
                format!(
                    "SELECT {proj} FROM {items} i WHERE {not}EXISTS (SELECT 1 FROM {orders} o WHERE o.item_id = i.id AND {inner}) AND {outer}"
                )
            }
            2 => {
                let outer = self.pred(&icols, Some("i"), 1);
                let agg = *self.rng.pick(&["count(*)", "sum(o.amount)", "max(o.status)", "count(o.memo)"]);
                format!(
                    "SELECT i.id, i.name, (SELECT {agg} FROM {orders} o WHERE o.item_id = i.id) AS sub FROM {items} i WHERE {outer}"
                )
            }
            3 => {
                let inner = self.pred(&ocols, Some("o"), 1);
                let outer = self.pred(&icols, Some("i"), 1);
                let agg = *self.rng.pick(&["count(*)", "max(o.amount)", "min(o.id)", "sum(o.amount)"]);
                let proj = self.proj(&icols, 2).join(", ");
                format!("SELECT {proj}, (SELECT {agg} FROM {orders} o WHERE {inner}) AS s FROM {items} i WHERE {outer}")
            }
            4 => {
                let inner = self.pred(&Self::cols_of(&ITEMS, ""), Some(""), 1);
                format!(
                    "SELECT d.k, count(*) AS n, sum(d.v) AS s, max(d.name) AS m FROM \
                     (SELECT id % 5 AS k, qty AS v, name FROM {items} WHERE {inner}) AS d GROUP BY d.k"
                )
            }
            5 => {
                let inner = self.pred(&Self::cols_of(&ITEMS, ""), Some(""), 1);
                let op = *self.rng.pick(&[">", "<", ">="]);
                format!(
                    "SELECT i.id, i.qty FROM {items} i WHERE i.qty {op} (SELECT avg(qty) FROM {items} WHERE {inner})"
                )
            }
            6 => {
                let tags = self.tref(&TAGS);
                let inner = self.pred(&Self::cols_of(&ITEMS, ""), Some(""), 1);
                format!("SELECT tag, weight FROM {tags} WHERE item_id IN (SELECT id FROM {items} WHERE {inner})")
            }
            _ => {
                let inner = self.pred(&Self::cols_of(&CAT, ""), None, 1);
                format!(
                    "SELECT count(*) AS n, sum(amount) AS s FROM {orders} WHERE item_id IN \
                     (SELECT id FROM {items} WHERE cat_id IN (SELECT id FROM app.cat WHERE {inner}))"
                )
            }
        };
        // Every variant has at most 4 output columns; order by those it has.
        let k = count_outputs(&sql);
        let ordered = self.order(k, &mut sql);
        (sql, ordered)
    }

    fn aggregate(&mut self) -> (String, bool) {
        let t = self.data_table();
        let keys: &[&str] = match t.name {
            "items" => &["active", "cat_id", "id % 5", "qty IS NULL", "substr(name, 1, 1)", "note IS NULL"],
            "orders" => &["status", "paid", "item_id % 4", "memo IS NULL"],
            "tags" => &["weight % 3", "day IS NULL", "item_id % 6"],
            _ => &["hidden", "rank % 2"],
        };
        let cols = Self::cols_of(t, "");
        let nums: Vec<&(String, Ty)> =
            cols.iter().filter(|(_, ty)| matches!(ty, Ty::Big | Ty::Int | Ty::Dbl)).collect();
        let n = 1 + self.rng.below(4);
        let mut aggs = Vec::new();
        for i in 0..n {
            let (c, _) = (*self.rng.pick(&nums)).clone();
            let (any, _) = self.rng.pick(&cols).clone();
            let a = match self.rng.below(7) {
                0 => "count(*)".to_owned(),
                1 => format!("count({any})"),
                2 => format!("sum({c})"),
                3 => format!("min({any})"),
                4 => format!("max({any})"),
                5 => format!("avg({c})"),
                _ => format!("count(DISTINCT {any})"),
            };
            aggs.push(format!("{a} AS a{i}"));
        }
        let from = self.tref(t);
        let grouped = self.rng.chance(70);
        let mut sql = if grouped {
            let key = *self.rng.pick(keys);
            format!("SELECT {key} AS k, {} FROM {from}", aggs.join(", "))
        } else {
            format!("SELECT {} FROM {from}", aggs.join(", "))
        };
        if self.rng.chance(70) {
            let p = self.pred(&cols, Some(""), 2);
            sql.push_str(&format!(" WHERE {p}"));
        }
        if grouped {
            sql.push_str(" GROUP BY 1");
            if self.rng.chance(30) {
                sql.push_str(&format!(" HAVING count(*) > {}", self.rng.range(0, 6)));
            }
        }
        let ordered = self.order(aggs.len() + usize::from(grouped), &mut sql);
        (sql, ordered)
    }

    fn count(&mut self) -> (String, bool) {
        let t = self.data_table();
        let from = self.tref(t);
        let cols = Self::cols_of(t, "");
        let p = self.pred(&cols, Some(""), 3);
        (format!("SELECT count(*) AS n FROM {from} WHERE {p}"), false)
    }

    fn set_op(&mut self) -> (String, bool) {
        let two = self.rng.chance(40);
        let mut parts = Vec::new();
        for _ in 0..2 + usize::from(self.rng.chance(25)) {
            let (t, big, text) = *self.rng.pick(&[
                (&ITEMS, "id", "name"),
                (&ITEMS, "cat_id", "note"),
                (&ORDERS, "item_id", "status"),
                (&ORDERS, "id", "memo"),
                (&TAGS, "item_id", "tag"),
                (&CAT, "id", "cname"),
            ]);
            let from = self.tref(t);
            let p = self.pred(&Self::cols_of(t, ""), Some(""), 1);
            let cols = if two { format!("{big} AS a, {text} AS b") } else { format!("{big} AS a") };
            parts.push(format!("SELECT {cols} FROM {from} WHERE {p}"));
        }
        let mut sql = parts[0].clone();
        for p in &parts[1..] {
            let op = *self.rng.pick(&["UNION", "UNION ALL", "INTERSECT", "EXCEPT", "INTERSECT ALL", "EXCEPT ALL"]);
            sql = format!("{sql} {op} {p}");
        }
        let ordered = self.order(1 + usize::from(two), &mut sql);
        (sql, ordered)
    }

    fn cte(&mut self) -> (String, bool) {
        let items = self.tref(&ITEMS);
        let orders = self.tref(&ORDERS);
        let pi = self.pred(&Self::cols_of(&ITEMS, ""), Some(""), 1);
        let po = self.pred(&Self::cols_of(&ORDERS, ""), Some(""), 1);
        let mut sql = match self.rng.below(4) {
            0 => {
                let join = *self.rng.pick(&["JOIN", "LEFT JOIN"]);
                format!(
                    "WITH a AS (SELECT id, qty, name FROM {items} WHERE {pi}), \
                     b AS (SELECT item_id, count(*) AS n, sum(amount) AS s FROM {orders} WHERE {po} GROUP BY item_id) \
                     SELECT a.id, a.name, b.n, b.s FROM a {join} b ON a.id = b.item_id"
                )
            }
            1 => format!("WITH x AS (SELECT * FROM {items} WHERE {pi}) SELECT count(*) AS n, max(x.name) AS m FROM x"),
            2 => format!(
                "WITH x AS (SELECT id, item_id, amount FROM {orders} WHERE {po}), y AS (SELECT * FROM x WHERE amount > 10) \
                 SELECT y.id, y.amount FROM y"
            ),
            _ => format!(
                "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 12) \
                 SELECT r.n, i.name FROM r JOIN {items} i ON i.id = r.n WHERE {}",
                pi.replace("_deleted", "i._deleted").replace("_updated", "i._updated")
            ),
        };
        let k = count_outputs(&sql);
        let ordered = self.order(k, &mut sql);
        (sql, ordered)
    }

    fn system_columns(&mut self) -> (String, bool) {
        let t = *self.rng.pick(&[&ITEMS, &ORDERS, &TAGS]);
        let from = self.tref(t);
        let key = t.cols[0].0;
        let p = self.pred(&Self::cols_of(t, ""), None, 1);
        let sql = match self.rng.below(6) {
            0 => format!("SELECT {key}, _deleted FROM {from} WHERE _deleted = true"),
            1 => format!("SELECT {key}, _deleted FROM {from} WHERE _deleted OR {p}"),
            2 => {
                format!("SELECT _deleted, count(*) AS n FROM {from} WHERE _deleted IN (true, false) GROUP BY _deleted")
            }
            3 => format!("SELECT *, _updated, _deleted FROM {from} WHERE _deleted = false AND {p}"),
            4 => format!(
                "SELECT {key}, _updated IS NOT NULL AS has_ts, _updated <= NOW() AS past FROM {from} WHERE NOT _deleted"
            ),
            _ => format!("SELECT count(*) AS n FROM {from} WHERE _updated > TIMESTAMP '2020-01-01 00:00:00' AND {p}"),
        };
        (sql, false)
    }

    fn window(&mut self) -> (String, bool) {
        let sql = if self.rng.chance(60) {
            let items = self.tref(&ITEMS);
            let pi = self.pred(&Self::cols_of(&ITEMS, ""), Some(""), 1);
            format!(
                "SELECT id, row_number() OVER (ORDER BY id) AS rn, rank() OVER (PARTITION BY active ORDER BY qty) AS rk, \
                 sum(qty) OVER (PARTITION BY cat_id) AS s, lag(name) OVER (ORDER BY id) AS prev, count(*) OVER () AS total \
                 FROM {items} WHERE {pi}"
            )
        } else {
            let orders = self.tref(&ORDERS);
            format!(
                "SELECT id, sum(amount) OVER (ORDER BY id ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS run, \
                 dense_rank() OVER (ORDER BY status) AS dr FROM {orders}"
            )
        };
        (sql, false)
    }

    fn system_table(&mut self) -> (String, bool) {
        const FIXED: [&str; 30] = [
            "SELECT user_id, username, role, apikey, email, metadata, storage_mode, storage_id FROM system.users",
            "SELECT * FROM system.users",
            "SELECT count(*) AS n FROM system.users",
            "SELECT user_id FROM system.users WHERE user_id LIKE 'b%' OR role <> 'user'",
            "SELECT user_id FROM system.users WHERE deleted_at IS NOT NULL",
            "SELECT user_id, deleted_at IS NULL AS live FROM system.users WHERE deleted_at IS NULL OR deleted_at IS NOT NULL",
            "SELECT * FROM system.namespaces",
            "SELECT namespace_id, table_name, table_type, access FROM system.tables ORDER BY 1, 2",
            "SELECT * FROM system.tables",
            "SELECT * FROM system.table_schemas",
            "SELECT * FROM system.table_options",
            "SELECT * FROM information_schema.tables",
            "SELECT * FROM information_schema.columns WHERE table_schema = 'app'",
            "SELECT * FROM system.jobs",
            "SELECT job_type, status, namespace_id, table_name, user_id, parameters FROM system.jobs",
            "SELECT count(*) AS n FROM system.jobs",
            "SELECT * FROM system.live_queries",
            "SELECT namespace_id, table_name, table_type, paused FROM system.flush_status",
            "SHOW TABLES",
            "SHOW TABLES IN app",
            "SHOW NAMESPACES",
            "SELECT * FROM system.storages",
            "SELECT * FROM system.processes",
            "SELECT * FROM app.vault",
            "SELECT i.id, v.secret FROM app.items i JOIN app.vault v ON v.id = i.id",
            "DESCRIBE TABLE app.vault",
            "SELECT t.table_name, count(*) AS cols FROM system.tables t JOIN information_schema.columns c \
             ON c.table_schema = t.namespace_id AND c.table_name = t.table_name GROUP BY t.table_name",
            "SELECT CURRENT_USER() AS me",
            "SELECT u.user_id, count(i.id) AS n FROM system.users u LEFT JOIN app.items i ON true GROUP BY u.user_id",
            "SELECT user_id FROM system.users WHERE user_id IN (SELECT name FROM app.items) OR user_id = 'bob'",
        ];
        let t = *self.rng.pick(&TABLES);
        let sql = match self.rng.below(6) {
            0 => format!("SHOW TABLE STATS {}", self.tref(t)),
            2 => format!("SUBSCRIBE TO {} WHERE {}", self.tref(t), self.pred(&Self::cols_of(t, ""), None, 1)),
            1 => format!("DESCRIBE TABLE {}", self.tref(t)),
            _ => (*self.rng.pick(&FIXED)).to_owned(),
        };
        (sql, false)
    }

    pub fn next(&mut self) -> Query {
        self.params.clear();
        let roll = self.rng.below(100);
        self.use_params = roll < 70 && self.rng.chance(25);
        let (family, (sql, ordered)) = match roll {
            0..=19 => ("single", self.single()),
            20..=32 => ("join", self.join()),
            33..=44 => ("subquery", self.subquery()),
            45..=56 => ("aggregate", self.aggregate()),
            57..=64 => ("count", self.count()),
            65..=69 => ("window", self.window()),
            70..=79 => ("set-op", self.set_op()),
            80..=86 => ("cte", self.cte()),
            87..=92 => ("system-columns", self.system_columns()),
            _ => ("system-tables", self.system_table()),
        };
        let mut params = self.params.clone();
        let other_partition = names_other_partition(&sql);
        // Now and then one parameter too many or too few: refused the same way on both clusters.
        if !params.is_empty() && !other_partition && self.rng.chance(4) {
            if self.rng.chance(50) {
                params.pop();
            } else {
                params.push(json!(1));
            }
        }
        let params = (!params.is_empty()).then_some(params);
        Query { family, sql, params, ordered, other_partition }
    }
}

/// Whether `sql` names a partition of bob's (or of the ghost's) with a three-part name.
pub fn names_other_partition(sql: &str) -> bool {
    ["app.bob.", "app.BOB.", "app.\"bob\".", "app.bob_ghost."].iter().any(|p| sql.contains(p))
}

/// Output columns of a generated statement (the top-level SELECT list after the last CTE).
fn count_outputs(sql: &str) -> usize {
    let start = sql.rfind(") SELECT ").map_or_else(|| sql.find("SELECT ").unwrap_or(0), |p| p + 2);
    let body = &sql[start + "SELECT ".len()..];
    let (mut depth, mut n) = (0i32, 1usize);
    for (i, ch) in body.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => n += 1,
            _ => {}
        }
        if depth == 0 && body[i..].starts_with(" FROM ") {
            break;
        }
    }
    n
}
