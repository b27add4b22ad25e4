//! CPU time spent by each process of a measurement, from `/proc/<pid>/stat`: the bench's own
//! clients, the hub, the PostgreSQL cluster, and waited-for children (pgbench). On a 2-core
//! machine every one of them shares the same cores, so a rate is bounded by the CPU time each
//! unit of work costs in all of them together: CPU per K explains a rate that wall-clock figures
//! only report.

use std::path::Path;

/// Accumulated CPU seconds (user + system) of the parties of a measurement at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuSample {
    /// This process (the bench's client tasks and its polling).
    pub client: f64,
    /// Children of this process it has waited for (pgbench runs).
    pub waited_children: f64,
    /// The hub under test.
    pub hub: f64,
    /// The PostgreSQL cluster: the postmaster, its live children, and its children that exited
    /// (the postmaster waits for them, so their time is in its `cutime`).
    pub postgres: f64,
}

impl CpuSample {
    /// Now, for the hub `hub_pid` and the cluster whose data directory is `pg_data`.
    pub fn now(hub_pid: Option<u32>, pg_data: Option<&Path>) -> Self {
        let tick = ticks_per_second();
        let self_stat = Stat::read("self");
        Self {
            client: self_stat.map_or(0.0, |s| s.own() as f64 / tick),
            waited_children: self_stat.map_or(0.0, |s| s.children() as f64 / tick),
            hub: hub_pid
                .and_then(|pid| Stat::read(&pid.to_string()))
                .map_or(0.0, |s| s.own() as f64 / tick),
            postgres: pg_data.map_or(0.0, |dir| cluster_ticks(dir) as f64 / tick),
        }
    }

    /// What was spent from `earlier` to `self`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            client: self.client - earlier.client,
            waited_children: self.waited_children - earlier.waited_children,
            hub: self.hub - earlier.hub,
            postgres: self.postgres - earlier.postgres,
        }
    }

    /// Every party's CPU milliseconds per unit of work (`units` of it done).
    pub fn per_unit_ms(&self, units: u64) -> CpuPerUnit {
        let per = |seconds: f64| seconds * 1000.0 / (units.max(1) as f64);
        CpuPerUnit {
            client: per(self.client),
            waited_children: per(self.waited_children),
            hub: per(self.hub),
            postgres: per(self.postgres),
        }
    }
}

/// CPU milliseconds per unit of work, by party.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuPerUnit {
    pub client: f64,
    pub waited_children: f64,
    pub hub: f64,
    pub postgres: f64,
}

impl CpuPerUnit {
    pub fn total(&self) -> f64 {
        self.client + self.waited_children + self.hub + self.postgres
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({
            "client_ms": self.client,
            "pgbench_client_ms": self.waited_children,
            "hub_ms": self.hub,
            "postgres_ms": self.postgres,
            "total_ms": self.total(),
        })
    }
}

/// The fields of `/proc/<pid>/stat` this module reads, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Stat {
    parent: u32,
    utime: u64,
    stime: u64,
    cutime: u64,
    cstime: u64,
}

impl Stat {
    fn read(pid: &str) -> Option<Self> {
        parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    fn own(&self) -> u64 {
        self.utime + self.stime
    }

    fn children(&self) -> u64 {
        self.cutime + self.cstime
    }
}

/// Parses a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and may hold
/// spaces and parentheses itself, so the fields are counted after its last `)`.
fn parse_stat(line: &str) -> Option<Stat> {
    let after_name = &line[line.rfind(')')? + 1..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name: state (3), ppid (4), …, utime (14), stime (15), cutime (16), cstime (17).
    let field = |number: usize| fields.get(number - 3)?.parse::<u64>().ok();
    Some(Stat {
        parent: u32::try_from(field(4)?).ok()?,
        utime: field(14)?,
        stime: field(15)?,
        cutime: field(16)?,
        cstime: field(17)?,
    })
}

/// The cluster's CPU ticks: its postmaster (first line of `postmaster.pid`) with its exited
/// children, plus every live process whose parent it is.
fn cluster_ticks(data_dir: &Path) -> u64 {
    let Some(postmaster) = std::fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()
        .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
    else {
        return 0;
    };
    let Some(own) = Stat::read(&postmaster.to_string()) else {
        return 0;
    };
    let children: u64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let name = name.to_str()?;
            name.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            Stat::read(name).filter(|s| s.parent == postmaster)
        })
        .map(|s| s.own())
        .sum();
    own.own() + own.children() + children
}

/// `sysconf(_SC_CLK_TCK)`, asked of `getconf` (the bench forbids `unsafe`); 100 on Linux
/// whenever it cannot be asked.
fn ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fields_after_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (tokio (rt) w) S 17 4242 4242 0 -1 4194560 1234 0 0 0 \
                    355 120 7 3 20 0 9 0 123456 1000 200 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                parent: 17,
                utime: 355,
                stime: 120,
                cutime: 7,
                cstime: 3,
            })
        );
        assert_eq!(parse_stat("4242 (truncated"), None);
    }

    #[test]
    fn this_process_is_charged_for_the_work_it_does() {
        let before = CpuSample::now(None, None);
        // Spin (for at most 5 s) until the kernel has charged at least two ticks to this
        // process: a reading that stayed at zero fails below.
        let tick = 1.0 / ticks_per_second();
        let started = std::time::Instant::now();
        let mut x = 0_u64;
        while CpuSample::now(None, None).since(&before).client < 2.0 * tick
            && started.elapsed() < std::time::Duration::from_secs(5)
        {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
        let spent = CpuSample::now(None, None).since(&before);
        assert!(spent.client >= 2.0 * tick, "{spent:?}");
        assert_eq!(spent.hub, 0.0);
        assert_eq!(spent.postgres, 0.0);
        let per = spent.per_unit_ms(2);
        assert!((per.client - spent.client * 500.0).abs() < 1e-9);
        assert!((per.total() - per.client - per.waited_children).abs() < 1e-9);
    }
}
