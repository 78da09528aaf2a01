//! Network faults between processes on loopback, for tests that run as root: iptables
//! rules (cut, lossy, reset) between loopback addresses (each process of the test listens
//! on, and connects from, its own 127.x.y.z). Every rule carries a comment naming this
//! test process and is removed when the [`Firewall`] drops, even when the test fails.
//! (Added latency with `tc netem` needs the kernel's sch_netem, which this machine lacks:
//! a lossy link gives latency through TCP's retransmissions instead.)

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

    /// Adds one rule for packets from `from` to `to`: `matches` then the `target`.
    fn add(&mut self, from: IpAddr, to: IpAddr, matches: &[&str], target: &[&str]) {
        let (from, to) = (from.to_string(), to.to_string());
        let mut rule: Vec<String> =
            ["OUTPUT", "-s", &from, "-d", &to].iter().map(|x| x.to_string()).collect();
        rule.extend(matches.iter().map(|x| x.to_string()));
        rule.extend(["-m", "comment", "--comment", &self.tag, "-j"].iter().map(|x| x.to_string()));
        rule.extend(target.iter().map(|x| x.to_string()));
        let status = Command::new("iptables").arg("-w").arg("-I").args(&rule).status();
        assert!(status.is_ok_and(|s| s.success()), "iptables -I {rule:?} failed");
        self.rules.push(rule);
    }

    /// Drops every packet from `from` to `to` (one way: `to` still reaches `from`, but a TCP
    /// connection either side opens cannot complete its handshake or carry data one way,
    /// which is what a one-way network failure looks like to TCP).
    pub fn cut_one_way(&mut self, from: IpAddr, to: IpAddr) {
        self.add(from, to, &[], &["DROP"]);
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&mut self, a: IpAddr, b: IpAddr) {
        self.cut_one_way(a, b);
        self.cut_one_way(b, a);
    }

    /// Drops each packet between `a` and `b` (both ways) with `probability`: a lossy link,
    /// where TCP's retransmissions turn into added latency (hundreds of ms per loss).
    pub fn lossy(&mut self, a: IpAddr, b: IpAddr, probability: f64) {
        let p = probability.to_string();
        for (from, to) in [(a, b), (b, a)] {
            self.add(
                from,
                to,
                &["-m", "statistic", "--mode", "random", "--probability", &p],
                &["DROP"],
            );
        }
    }

    /// Answers every TCP packet between `a` and `b` (both ways) with a reset: open
    /// connections drop, new ones are refused, until [`Firewall::heal`].
    pub fn reset(&mut self, a: IpAddr, b: IpAddr) {
        for (from, to) in [(a, b), (b, a)] {
            self.add(from, to, &["-p", "tcp"], &["REJECT", "--reject-with", "tcp-reset"]);
        }
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
