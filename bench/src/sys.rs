//! Small system helpers for the benchmarks: commands, CPU pinning, counters.

use std::{path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// Runs a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    run_env(program, args, &[])
}

pub fn run_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first line of `program --version` (or `-V`), for the record.
pub fn version(program: &str, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Pins the calling thread (pid 0) or `pid` to one CPU.
pub fn pin_to_cpu(pid: i32, cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        bail!(
            "sched_setaffinity({pid}, cpu {cpu}): {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// CPU time a task has consumed, in ns (/proc/<pid>/schedstat, first field).
pub fn task_runtime_ns(pid: i32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    Ok(s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// The pid of a kernel thread whose name starts with `prefix`.
pub fn find_kthread(prefix: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()? {
        let entry = entry.ok()?;
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
            .unwrap_or_default();
        if comm.trim().starts_with(prefix) {
            return Some(pid);
        }
    }
    None
}

pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

pub fn kernel_release() -> String {
    run("uname", &["-r"]).unwrap_or_default().trim().to_string()
}

/// The installed version of a Debian package.
pub fn deb_version(package: &str) -> String {
    run("dpkg-query", &["-W", "-f", "${Version}", package])
        .map(|v| format!("{package} {v}"))
        .unwrap_or_else(|_| format!("{package} (not installed)"))
}
