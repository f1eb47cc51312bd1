//! Resource use of the server's processes, read from `/proc`: resident memory and CPU time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::report::Measurement;

/// CPU time (user + system) of `pid` so far; `None` once it is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: fields are counted after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the state field's start.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok().flatten().map(|t| t as u64).unwrap_or(100)
}

pub fn rss_mb(pid: u32) -> f64 {
    kalam_e2e::rss_kb(pid).unwrap_or(0) as f64 / 1024.0
}

/// Named processes whose memory and CPU each measurement reports.
#[derive(Debug, Clone, Default)]
pub struct Procs(pub Vec<(String, u32)>);

/// CPU times of [`Procs`] at one instant.
pub struct Mark {
    at: Instant,
    cpu: Vec<Option<Duration>>,
}

impl Procs {
    pub fn mark(&self) -> Mark {
        Mark { at: Instant::now(), cpu: self.0.iter().map(|(_, pid)| cpu_time(*pid)).collect() }
    }

    /// CPU use since `mark` (percent of one core) and resident memory now, per process.
    pub fn since(&self, mark: &Mark) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
        let wall = mark.at.elapsed().as_secs_f64().max(1e-6);
        let mut cpu = BTreeMap::new();
        let mut rss = BTreeMap::new();
        for ((name, pid), before) in self.0.iter().zip(&mark.cpu) {
            if let (Some(before), Some(now)) = (before, cpu_time(*pid)) {
                cpu.insert(name.clone(), (now.saturating_sub(*before)).as_secs_f64() / wall * 100.0);
            }
            rss.insert(name.clone(), rss_mb(*pid));
        }
        (cpu, rss)
    }

    /// Fills `m`'s CPU and memory figures from `mark` to now.
    pub fn attach(&self, mark: &Mark, mut m: Measurement) -> Measurement {
        let (cpu, rss) = self.since(mark);
        m.cpu_percent = cpu;
        m.rss_mb = rss;
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let me = std::process::id();
        let before = cpu_time(me).unwrap();
        let started = Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(200) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(cpu_time(me).unwrap() > before);
        assert!(rss_mb(me) > 1.0);
        assert!(cpu_time(u32::MAX).is_none());
    }
}
