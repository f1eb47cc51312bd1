//! Resource sampling: once a second, the resident memory and CPU use of each running daemon
//! (sysinfo), written into the process table that the `Supervisor` service serves (and kalamd
//! shows as `system.processes`). A daemon over its configured memory limit is restarted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kalam_config::SupervisorConfig;
use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};
use tokio::sync::Notify;

use crate::Table;
use crate::children::Kind;

/// How often the daemons are sampled.
const PERIOD: Duration = Duration::from_secs(1);

/// One restart signal per daemon, raised when it is over its memory limit.
pub type OverMemory = Arc<Mutex<HashMap<Kind, Arc<Notify>>>>;

/// The restart signal of `kind`.
pub fn notifier(over: &OverMemory, kind: Kind) -> Arc<Notify> {
    over.lock().unwrap_or_else(|p| p.into_inner()).entry(kind).or_default().clone()
}

fn kind_of(name: &str) -> Option<Kind> {
    [Kind::Kalamd, Kind::Flushd, Kind::Lived].into_iter().find(|k| k.binary() == name)
}

pub async fn run(cfg: SupervisorConfig, table: Table, over: OverMemory) {
    let mut system = match System::new() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "resource sampling unavailable");
            return;
        }
    };
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let running: Vec<(String, u32)> = table
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(|p| p.pid.map(|pid| (p.name.clone(), pid)))
            .collect();
        let pids: Vec<Pid> = running.iter().map(|(_, pid)| Pid::from_u32(*pid)).collect();
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&pids),
            true,
            ProcessRefreshKind::nothing().with_memory().with_cpu(),
        );
        for (name, pid) in running {
            let Some(process) = system.process(Pid::from_u32(pid)) else { continue };
            let (memory, cpu) = (process.memory(), process.cpu_usage());
            {
                let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
                // The daemon may have been restarted meanwhile: only its own pid's figures.
                if let Some(p) = t.iter_mut().find(|p| p.name == name && p.pid == Some(pid)) {
                    p.memory_bytes = Some(memory);
                    p.cpu_percent = Some(cpu);
                }
            }
            let Some(kind) = kind_of(&name) else { continue };
            if let Some(limit) = kind.memory_limit(&cfg)
                && memory > limit
            {
                tracing::warn!(
                    process = name,
                    pid,
                    memory_bytes = memory,
                    limit_bytes = limit,
                    "over its memory limit; restarting"
                );
                notifier(&over, kind).notify_waiters();
            }
        }
    }
}
