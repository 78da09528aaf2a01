//! The process tree as /proc shows it: the descendants of a process, their command lines,
//! whether one still runs, and which of them is the `shardgate node` of a given name. Std
//! only, so that the end-to-end tests include this same file (`tests/common`) instead of a
//! copy.

use std::collections::HashMap;

/// Pids of every descendant of `pid` (children, grandchildren, ...), from /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        // Fields after the command name, which is in parentheses and may contain spaces.
        let Some(rest) = stat.rfind(')').and_then(|i| stat.get(i + 2..)) else { continue };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            children.entry(ppid).or_default().push(p);
        }
    }
    let (mut out, mut stack) = (Vec::new(), vec![pid]);
    // Bounded: a pid is visited once (the parent relation is a tree).
    while let Some(p) = stack.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or(&[]) {
            if !out.contains(&c) {
                out.push(c);
                stack.push(c);
            }
        }
    }
    out
}

/// The command line of `pid`, arguments separated by spaces ("" once it is gone).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Whether `pid` exists and is not a zombie.
pub fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            stat.rfind(')').and_then(|i| stat.get(i + 2..)).and_then(|s| s.chars().next())
                != Some('Z')
        }
        Err(_) => false,
    }
}

/// The pid of the live `shardgate node --name NAME` under `root`.
pub fn node_pid(root: u32, name: &str) -> Option<u32> {
    let needle = format!(" node --name {name} ");
    descendants(root).into_iter().find(|&p| cmdline(p).contains(&needle) && pid_alive(p))
}

/// Pids of the live `shardgate node` processes under `root`.
pub fn node_pids(root: u32) -> Vec<u32> {
    descendants(root)
        .into_iter()
        .filter(|&p| cmdline(p).contains(" node --name ") && pid_alive(p))
        .collect()
}
