//! Results: one [`Measurement`] per benchmark, printed as a table, written as JSON, and
//! compared with an earlier results file.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Latency percentiles of a set of samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; `None` without samples.
    pub fn of(samples: &mut [Duration]) -> Option<Percentiles> {
        if samples.is_empty() {
            return None;
        }
        samples.sort_unstable();
        let at = |p: f64| {
            let rank = ((samples.len() as f64) * p).ceil() as usize;
            samples[rank.clamp(1, samples.len()) - 1].as_secs_f64() * 1e3
        };
        Some(Percentiles { p50_ms: at(0.50), p95_ms: at(0.95), p99_ms: at(0.99) })
    }
}

/// One benchmark's figures.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Measurement {
    /// Stable identifier, used to match results across runs (`insert.single.c1`).
    pub name: String,
    /// What was measured, for people.
    pub title: String,
    /// Operations timed (statements, rows, notifications …; see `unit`).
    pub ops: u64,
    pub unit: String,
    pub seconds: f64,
    /// `ops / seconds`.
    pub per_sec: f64,
    /// Per-operation latency, when each operation was timed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Percentiles>,
    /// Resident memory of each server process at the end of the measurement, MB.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub rss_mb: BTreeMap<String, f64>,
    /// CPU use of each server process over the measurement, percent of one core.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cpu_percent: BTreeMap<String, f64>,
    /// Speed as a fraction of a baseline's (throughput over throughput, or the baseline's
    /// p50 over ours when there is no throughput), by baseline name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub ratios: BTreeMap<String, f64>,
    /// Extra figures (bytes per subscription, retries, MB/s …).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, f64>,
}

impl Measurement {
    /// `ops` operations in `elapsed`, with per-operation `latencies` (may be empty).
    pub fn new(name: &str, title: &str, unit: &str, ops: u64, elapsed: Duration, latencies: &mut [Duration]) -> Self {
        let seconds = elapsed.as_secs_f64();
        Measurement {
            name: name.to_owned(),
            title: title.to_owned(),
            ops,
            unit: unit.to_owned(),
            seconds,
            per_sec: if seconds > 0.0 { ops as f64 / seconds } else { 0.0 },
            latency: Percentiles::of(latencies),
            ..Default::default()
        }
    }

    pub fn extra(mut self, key: &str, value: f64) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// How fast this is next to `baseline` (1.0 = as fast).
    fn ratio_to(&self, baseline: &Measurement) -> Option<f64> {
        if self.per_sec > 0.0 && baseline.per_sec > 0.0 {
            return Some(self.per_sec / baseline.per_sec);
        }
        match (self.latency, baseline.latency) {
            (Some(ours), Some(theirs)) if ours.p50_ms > 0.0 => Some(theirs.p50_ms / ours.p50_ms),
            _ => None,
        }
    }
}

/// The machine a run happened on.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gb: f64,
    pub kernel: String,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_kb: f64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Machine {
            cpu_model,
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_gb: (mem_kb / 1024.0 / 1024.0 * 10.0).round() / 10.0,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
        }
    }
}

/// A whole run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Results {
    /// RFC 3339 time the run started.
    pub started_at: String,
    /// `release` or `debug`: compare runs of the same profile only.
    pub profile: String,
    pub quick: bool,
    pub machine: Machine,
    pub measurements: Vec<Measurement>,
    /// Prepended to the name of every measurement pushed (a driver's results).
    #[serde(skip)]
    pub prefix: String,
}

impl Results {
    pub fn new(quick: bool) -> Results {
        Results {
            started_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            profile: if cfg!(debug_assertions) { "debug" } else { "release" }.to_owned(),
            quick,
            machine: Machine::this(),
            measurements: Vec::new(),
            prefix: String::new(),
        }
    }

    /// Records `m`, printing its line at once so a long run shows progress.
    pub fn push(&mut self, mut m: Measurement) {
        m.name = format!("{}{}", self.prefix, m.name);
        println!("{}", line(&m));
        self.measurements.push(m);
    }

    pub fn get(&self, name: &str) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.name == name)
    }

    /// Sets `name`'s ratio to each of `baselines` measured in this run.
    pub fn relate(&mut self, name: &str, baselines: &[&str]) {
        let ratios: Vec<(String, f64)> = {
            let Some(m) = self.get(name) else { return };
            baselines.iter().filter_map(|b| Some(((*b).to_owned(), m.ratio_to(self.get(b)?)?))).collect()
        };
        if let Some(m) = self.measurements.iter_mut().find(|m| m.name == name) {
            m.ratios.extend(ratios);
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")?;
        Ok(())
    }

    pub fn read(path: &Path) -> anyhow::Result<Results> {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} is not a kalam-bench results file: {e}", path.display()))
    }

    /// The summary table: throughput, latency, ratios, memory and CPU.
    pub fn table(&self) -> String {
        let mut out = format!(
            "kalam-bench {} build{} on {} ({} CPUs, {} GB), {}\n\n",
            self.profile,
            if self.quick { ", quick" } else { "" },
            self.machine.cpu_model,
            self.machine.cpus,
            self.machine.memory_gb,
            self.started_at
        );
        out += &format!(
            "{:<34} {:>14} {:>9} {:>9} {:>9}  {:<30} {}\n",
            "benchmark", "throughput", "p50 ms", "p95 ms", "p99 ms", "vs baseline", "RSS MB / CPU %"
        );
        for m in &self.measurements {
            let (p50, p95, p99) = match m.latency {
                Some(l) => (fmt_ms(l.p50_ms), fmt_ms(l.p95_ms), fmt_ms(l.p99_ms)),
                None => ("-".into(), "-".into(), "-".into()),
            };
            let ratios: Vec<String> = m.ratios.iter().map(|(b, r)| format!("{r:.2}× {b}")).collect();
            let procs: Vec<String> = m
                .rss_mb
                .iter()
                .map(|(p, rss)| {
                    let cpu = m.cpu_percent.get(p).map(|c| format!("/{c:.0}%")).unwrap_or_default();
                    format!("{}:{rss:.0}{cpu}", short(p))
                })
                .collect();
            out += &format!(
                "{:<34} {:>14} {:>9} {:>9} {:>9}  {:<30} {}\n",
                m.name,
                fmt_rate(m.per_sec, &m.unit),
                p50,
                p95,
                p99,
                ratios.join(", "),
                procs.join(" ")
            );
        }
        out
    }

    /// This run next to `old`: the change of throughput and of p50 for each benchmark in both.
    pub fn compare(&self, old: &Results) -> String {
        let mut out = format!(
            "\nCompared with {} ({} build{}):\n{:<34} {:>14} {:>14} {:>9} {:>10} {:>10} {:>9}\n",
            old.started_at,
            old.profile,
            if old.quick { ", quick" } else { "" },
            "benchmark",
            "before",
            "after",
            "change",
            "p50 before",
            "p50 after",
            "change"
        );
        if old.profile != self.profile || old.quick != self.quick {
            out += "  (different profile or size: the figures are not comparable)\n";
        }
        for m in &self.measurements {
            let Some(o) = old.measurements.iter().find(|o| o.name == m.name) else {
                out += &format!("{:<34} (new)\n", m.name);
                continue;
            };
            let change = |new: f64, old: f64| {
                if old > 0.0 { format!("{:+.1}%", (new / old - 1.0) * 100.0) } else { "-".into() }
            };
            let (p_old, p_new, p_change) = match (o.latency, m.latency) {
                (Some(a), Some(b)) => (fmt_ms(a.p50_ms), fmt_ms(b.p50_ms), change(b.p50_ms, a.p50_ms)),
                _ => ("-".into(), "-".into(), "-".into()),
            };
            out += &format!(
                "{:<34} {:>14} {:>14} {:>9} {:>10} {:>10} {:>9}\n",
                m.name,
                fmt_rate(o.per_sec, &o.unit),
                fmt_rate(m.per_sec, &m.unit),
                change(m.per_sec, o.per_sec),
                p_old,
                p_new,
                p_change
            );
        }
        for o in &old.measurements {
            if self.get(&o.name).is_none() {
                out += &format!("{:<34} (not run this time)\n", o.name);
            }
        }
        out
    }
}

fn short(process: &str) -> &str {
    process.strip_prefix("kalam-").unwrap_or(process)
}

fn fmt_ms(ms: f64) -> String {
    if ms >= 100.0 { format!("{ms:.0}") } else { format!("{ms:.2}") }
}

fn fmt_rate(per_sec: f64, unit: &str) -> String {
    if per_sec <= 0.0 {
        return "-".into();
    }
    let n = if per_sec >= 1e6 {
        format!("{:.2}M", per_sec / 1e6)
    } else if per_sec >= 1e4 {
        format!("{:.0}k", per_sec / 1e3)
    } else {
        format!("{per_sec:.0}")
    };
    format!("{n} {}/s", abbreviate(unit))
}

fn abbreviate(unit: &str) -> &str {
    match unit {
        "statements" => "stmt",
        "notifications" => "ntf",
        "requests" => "req",
        "queries" => "q",
        "subscriptions" => "sub",
        "resumes" => "res",
        other => other,
    }
}

/// One measurement as a progress line.
pub fn line(m: &Measurement) -> String {
    let latency = m
        .latency
        .map(|l| format!("  p50 {} p95 {} p99 {} ms", fmt_ms(l.p50_ms), fmt_ms(l.p95_ms), fmt_ms(l.p99_ms)))
        .unwrap_or_default();
    let extra: Vec<String> = m.extra.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    let extra = if extra.is_empty() { String::new() } else { format!("  ({})", extra.join(", ")) };
    format!(
        "  {:<34} {} {} in {:.2} s  {}{latency}{extra}",
        m.name,
        m.ops,
        m.unit,
        m.seconds,
        fmt_rate(m.per_sec, &m.unit)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut samples = ms(&(1..=100).rev().collect::<Vec<_>>());
        let p = Percentiles::of(&mut samples).unwrap();
        assert_eq!((p.p50_ms, p.p95_ms, p.p99_ms), (50.0, 95.0, 99.0));
        let p = Percentiles::of(&mut ms(&[7])).unwrap();
        assert_eq!((p.p50_ms, p.p99_ms), (7.0, 7.0));
        assert!(Percentiles::of(&mut []).is_none());
    }

    #[test]
    fn ratios_use_throughput_else_latency() {
        let mut r = Results::new(true);
        r.measurements.push(Measurement::new("a", "", "requests", 100, Duration::from_secs(1), &mut ms(&[4])));
        r.measurements.push(Measurement::new("ceiling", "", "requests", 400, Duration::from_secs(1), &mut ms(&[1])));
        r.measurements.push(Measurement::new("q", "", "queries", 10, Duration::from_secs(1), &mut ms(&[20])));
        r.measurements.push(Measurement::new("df", "", "queries", 0, Duration::ZERO, &mut ms(&[5])));
        r.relate("a", &["ceiling", "missing"]);
        r.relate("q", &["df"]);
        assert_eq!(r.get("a").unwrap().ratios.get("ceiling"), Some(&0.25));
        assert!(!r.get("a").unwrap().ratios.contains_key("missing"));
        assert_eq!(r.get("q").unwrap().ratios.get("df"), Some(&0.25));
    }

    #[test]
    fn a_results_file_round_trips_and_compares_by_name() {
        let mut old = Results::new(false);
        old.measurements.push(Measurement::new("a", "", "rows", 100, Duration::from_secs(1), &mut ms(&[10])));
        old.measurements.push(Measurement::new("gone", "", "rows", 1, Duration::from_secs(1), &mut []));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        old.write(&path).unwrap();
        assert_eq!(Results::read(&path).unwrap(), old);
        let mut new = Results::new(false);
        new.measurements.push(Measurement::new("a", "", "rows", 150, Duration::from_secs(1), &mut ms(&[5])));
        new.measurements.push(Measurement::new("b", "", "rows", 1, Duration::from_secs(1), &mut []));
        let text = new.compare(&old);
        assert!(text.contains("+50.0%") && text.contains("-50.0%"), "{text}");
        assert!(text.contains("b") && text.contains("(new)") && text.contains("(not run this time)"), "{text}");
        std::fs::write(&path, "{").unwrap();
        assert!(Results::read(&path).unwrap_err().to_string().contains("not a kalam-bench results file"));
    }
}
