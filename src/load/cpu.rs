//! CPU time and memory of processes, from `getrusage` and `/proc`: this process's own, and a
//! server's with all of its descendants (`--server-pid`).

use std::time::Duration;

/// CPU time (user + system) of this whole process so far, all threads.
pub(crate) fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU time (utime + stime) of another process from `/proc/PID/stat`, if it can be read.
pub(crate) fn proc_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_ticks(&stat, false).map(ticks_to_duration)
}

/// CPU time of a process and every descendant (a `serve --workers` supervisor and its
/// workers): each one's utime + stime plus cutime + cstime, the time of the children it has
/// already reaped, so a worker that exits or is replaced between two samples neither vanishes
/// from the sum nor is counted twice (but for one reaped in the microseconds between reading
/// its parent and reading it). `None` only if `pid` itself cannot be read.
pub(crate) fn tree_cpu(pid: u32) -> Option<Duration> {
    let mut ticks = 0u64;
    let mut root = true;
    for p in tree(pid) {
        match std::fs::read_to_string(format!("/proc/{p}/stat"))
            .ok()
            .and_then(|s| stat_ticks(&s, true))
        {
            Some(t) => ticks = ticks.saturating_add(t),
            // A descendant gone since the listing: its time is in its parent's cutime now.
            None if !root => {}
            None => return None,
        }
        root = false;
    }
    Some(ticks_to_duration(ticks))
}

/// Resident set size of a process from `/proc/PID/status`, if it can be read.
pub(crate) fn proc_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// RSS of a process and every descendant, summed (pages the processes share, such as the
/// binary's text, count once per process, as `ps` shows them). `None` only if `pid` itself
/// cannot be read.
pub(crate) fn tree_rss(pid: u32) -> Option<u64> {
    let mut all = tree(pid).into_iter();
    let mut sum = proc_rss(all.next()?)?;
    for p in all {
        sum = sum.saturating_add(proc_rss(p).unwrap_or(0));
    }
    Some(sum)
}

/// `pid` first, then its descendants, from every thread's `/proc/PID/task/TID/children`;
/// bounded, so that a pid reused mid-walk cannot make it loop.
fn tree(pid: u32) -> Vec<u32> {
    const MAX: usize = 4096;
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() && out.len() < MAX {
        let p = out[i];
        i += 1;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let path = t.path().join("children");
            let Ok(kids) = std::fs::read_to_string(path) else {
                continue;
            };
            for k in kids
                .split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok())
            {
                if !out.contains(&k) && out.len() < MAX {
                    out.push(k);
                }
            }
        }
    }
    out
}

/// utime + stime (and with `reaped`, cutime + cstime) in clock ticks from a `/proc/PID/stat` line.
fn stat_ticks(stat: &str, reaped: bool) -> Option<u64> {
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| f.get(i)?.parse::<u64>().ok();
    let own = field(11)?.saturating_add(field(12)?);
    if !reaped {
        return Some(own);
    }
    // cutime and cstime are signed in the kernel's format; never negative in practice.
    let kid = |i: usize| f.get(i)?.parse::<i64>().ok().map(|v| v.max(0) as u64);
    Some(own.saturating_add(kid(13)?).saturating_add(kid(14)?))
}

fn ticks_to_duration(ticks: u64) -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    // Split, so that no tick count can overflow the multiplication.
    Duration::from_secs(ticks / hz) + Duration::from_nanos((ticks % hz) * 1_000_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_and_proc_cpu_and_rss_are_readable() {
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(own_cpu() > Duration::ZERO);
        assert!(proc_cpu(std::process::id()).is_some());
        assert!(proc_rss(std::process::id()).unwrap() > 0);
        assert!(proc_cpu(u32::MAX).is_none());
    }

    #[test]
    fn stat_ticks_reads_own_and_reaped_time_past_a_hostile_command_name() {
        // Fields after the name: state ppid pgrp session tty tpgid flags minflt cminflt majflt
        // cmajflt utime stime cutime cstime ...
        let line = "42 (a) b (c) R 1 42 42 0 -1 4194304 10 0 0 0 7 3 20 5 20 0 1 0 100 0 0";
        assert_eq!(stat_ticks(line, false), Some(10));
        assert_eq!(stat_ticks(line, true), Some(35));
        assert_eq!(stat_ticks("42 (x) R 1", true), None);
    }

    #[test]
    fn tree_sums_a_process_and_its_descendants() {
        let me = std::process::id();
        // A grandchild too: sh starts sleep and waits for it.
        let mut kid = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let found = loop {
            let t = tree(me);
            if t.len() >= 3 || std::time::Instant::now() > deadline {
                break t;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let rss_me = proc_rss(me).unwrap();
        let rss_tree = tree_rss(me).unwrap();
        // Only the processes this test started (other tests run beside it), sleep first.
        for p in tree(kid.id()).into_iter().rev() {
            // SAFETY: kill has no memory preconditions; these pids are this test's children.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
        }
        let _ = kid.wait();
        assert_eq!(found[0], me);
        assert!(found.contains(&kid.id()), "{found:?}");
        assert!(found.len() >= 3, "sh and its sleep: {found:?}");
        assert!(rss_tree > rss_me, "{rss_tree} > {rss_me}");
        assert!(tree_cpu(me).unwrap() >= proc_cpu(me).unwrap());
        assert!(tree_cpu(u32::MAX).is_none() && tree_rss(u32::MAX).is_none());
    }
}
