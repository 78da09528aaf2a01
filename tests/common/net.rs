//! Network faults between processes on loopback, for tests that run as root: iptables
//! `DROP` rules between loopback addresses (each process of the test listens on, and
//! connects from, its own 127.x.y.z). Every rule carries a comment naming this test
//! process and is removed when the [`Firewall`] drops, even when the test fails.

#![allow(dead_code)]

use std::net::IpAddr;
use std::process::Command;

/// iptables rules added by this test, removed on drop.
pub struct Firewall {
    tag: String,
    rules: Vec<Vec<String>>,
}

impl Firewall {
    /// `None` when iptables cannot be used here (not root, not installed): the caller says
    /// the test was skipped.
    pub fn new() -> Option<Firewall> {
        let ok = Command::new("iptables")
            .args(["-w", "-L", "OUTPUT", "-n"])
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Firewall {
            tag: format!("shardgate-test-{}", std::process::id()),
            rules: vec![],
        })
    }

    /// Drops every packet from `from` to `to` (one way: `to` still reaches `from`, but a TCP
    /// connection either side opens cannot complete its handshake or carry data one way,
    /// which is what a one-way network failure looks like to TCP).
    pub fn cut_one_way(&mut self, from: IpAddr, to: IpAddr) {
        let rule: Vec<String> = [
            "OUTPUT",
            "-s",
            &from.to_string(),
            "-d",
            &to.to_string(),
            "-m",
            "comment",
            "--comment",
            &self.tag,
            "-j",
            "DROP",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        let status = Command::new("iptables").arg("-w").arg("-I").args(&rule).status();
        assert!(status.is_ok_and(|s| s.success()), "iptables -I {rule:?} failed");
        self.rules.push(rule);
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&mut self, a: IpAddr, b: IpAddr) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Removes every rule this firewall added.
    pub fn heal(&mut self) {
        for rule in self.rules.drain(..) {
            let _ = Command::new("iptables").arg("-w").arg("-D").args(&rule).status();
        }
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        self.heal();
    }
}
