//! The stage-1 membership rules as plain functions: which names an `/add` starts, which
//! replicas an `/rm` removes, and every error of the contract with its exact message. No IO;
//! the manager calls these under its admin lock and then does what they decided.

use std::collections::HashSet;

use protocol::ErrorBody;
use rand::seq::SliceRandom;
use rand::Rng;

/// `/add` with more hostnames than `n` (the contract's exact message).
pub const ADD_TOO_MANY_HOSTNAMES: &str =
    "<Error> Length of hostname list is more than newly added instances";
/// `/rm` with more hostnames than `n` (the contract's exact message).
pub const RM_TOO_MANY_HOSTNAMES: &str =
    "<Error> Length of hostname list is more than removable instances";
/// Smallest and largest random 6-digit number (server ids, random names, request ids).
pub const SIX_DIGITS: std::ops::RangeInclusive<u64> = 100_000..=999_999;

/// Checks a hostname by the one rule for names (`protocol::names`: it names the replica's
/// data directory and goes on its command line).
pub fn validate_hostname(name: &str) -> Result<(), ErrorBody> {
    protocol::names::check("hostname", name).map_err(ErrorBody::bad_request)
}

/// The names an `/add` of `n` replicas starts, in order: `hostnames` first, then random
/// `Server<6 digits>` names for the rest. `existing` are the names in use; at most
/// `max_replicas` may exist afterwards. Nothing is decided unless every rule holds.
pub fn plan_add(
    existing: &[String],
    n: u64,
    hostnames: &[String],
    max_replicas: usize,
    rng: &mut impl Rng,
) -> Result<Vec<String>, ErrorBody> {
    if hostnames.len() as u64 > n {
        return Err(ErrorBody::bad_request(ADD_TOO_MANY_HOSTNAMES));
    }
    let room = max_replicas.saturating_sub(existing.len()) as u64;
    if n > room {
        return Err(ErrorBody::bad_request(format!(
            "Cannot add {n} replicas; at most {max_replicas} may run and {} do",
            existing.len()
        )));
    }
    let mut used: HashSet<&str> = existing.iter().map(String::as_str).collect();
    for name in hostnames {
        validate_hostname(name)?;
        if existing.iter().any(|e| e == name) {
            return Err(ErrorBody::bad_request(format!("Hostname '{name}' is already in use")));
        }
        if !used.insert(name) {
            return Err(ErrorBody::bad_request(format!(
                "Hostname '{name}' appears more than once"
            )));
        }
    }
    let mut names: Vec<String> = hostnames.to_vec();
    while (names.len() as u64) < n {
        let name = format!("Server{}", rng.gen_range(SIX_DIGITS));
        if !used.contains(name.as_str()) && !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// The names an `/rm` of `n` replicas removes: `hostnames` first, then random others.
/// `existing` are the names in use. Nothing is decided unless every rule holds.
pub fn plan_remove(
    existing: &[String],
    n: u64,
    hostnames: &[String],
    rng: &mut impl Rng,
) -> Result<Vec<String>, ErrorBody> {
    if hostnames.len() as u64 > n {
        return Err(ErrorBody::bad_request(RM_TOO_MANY_HOSTNAMES));
    }
    if n > existing.len() as u64 {
        return Err(ErrorBody::bad_request(format!(
            "Cannot remove {n} replicas; there are only {}",
            existing.len()
        )));
    }
    let mut chosen: Vec<String> = Vec::with_capacity(n as usize);
    for name in hostnames {
        if !existing.contains(name) {
            return Err(ErrorBody::bad_request(format!("Hostname '{name}' is not a replica")));
        }
        if chosen.contains(name) {
            return Err(ErrorBody::bad_request(format!(
                "Hostname '{name}' appears more than once"
            )));
        }
        chosen.push(name.clone());
    }
    let mut rest: Vec<&String> = existing.iter().filter(|e| !chosen.contains(e)).collect();
    rest.shuffle(rng);
    let extra = n as usize - chosen.len();
    chosen.extend(rest.into_iter().take(extra).cloned());
    Ok(chosen)
}

/// A random 6-digit server id not in `used`.
pub fn fresh_id(used: &HashSet<u64>, rng: &mut impl Rng) -> u64 {
    loop {
        let id = rng.gen_range(SIX_DIGITS);
        if !used.contains(&id) {
            return id;
        }
    }
}

/// The names `up` starts with: `Server1..ServerN`.
pub fn initial_names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("Server{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn add_takes_the_hostnames_then_random_names() {
        let existing = names(&["Server1", "Server2", "Server3"]);
        let got = plan_add(&existing, 4, &names(&["S5", "S4", "S10", "S11"]), 100, &mut rng());
        assert_eq!(got.unwrap(), names(&["S5", "S4", "S10", "S11"]));
        let got = plan_add(&existing, 3, &names(&["S5"]), 100, &mut rng()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], "S5");
        for random in &got[1..] {
            let digits = random.strip_prefix("Server").unwrap();
            assert_eq!(digits.len(), 6, "{random}");
            assert!(!existing.contains(random));
        }
        assert_ne!(got[1], got[2]);
        assert!(plan_add(&existing, 0, &[], 100, &mut rng()).unwrap().is_empty());
    }

    #[test]
    fn add_with_more_hostnames_than_n_is_the_contract_error() {
        let e = plan_add(&[], 2, &names(&["S6", "S7", "S8", "S9"]), 100, &mut rng()).unwrap_err();
        assert_eq!(e.message, ADD_TOO_MANY_HOSTNAMES);
        assert_eq!(e.http_status(), 400);
    }

    #[test]
    fn add_refuses_a_used_repeated_or_invalid_hostname() {
        let existing = names(&["Server1", "S5"]);
        let e = plan_add(&existing, 2, &names(&["S4", "S5"]), 100, &mut rng()).unwrap_err();
        assert_eq!(e.message, "<Error> Hostname 'S5' is already in use");
        let e = plan_add(&existing, 2, &names(&["S4", "S4"]), 100, &mut rng()).unwrap_err();
        assert_eq!(e.message, "<Error> Hostname 'S4' appears more than once");
        for bad in ["", "a b", "../x", "..", "x/y", "-h", ".hidden", &"x".repeat(65)] {
            let e = plan_add(&existing, 1, &names(&[bad]), 100, &mut rng()).unwrap_err();
            assert!(e.message.contains("invalid hostname"), "{bad:?}: {}", e.message);
        }
    }

    #[test]
    fn add_respects_the_replica_limit() {
        let existing = names(&["A", "B"]);
        assert_eq!(plan_add(&existing, 2, &[], 4, &mut rng()).unwrap().len(), 2);
        let e = plan_add(&existing, 3, &[], 4, &mut rng()).unwrap_err();
        assert_eq!(e.message, "<Error> Cannot add 3 replicas; at most 4 may run and 2 do");
    }

    #[test]
    fn rm_takes_the_hostnames_then_random_others() {
        let existing = names(&["Server1", "Server2", "Server3", "S5", "S4", "S10", "S11"]);
        let got = plan_remove(&existing, 3, &names(&["S5", "S4"]), &mut rng()).unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!(&got[..2], &names(&["S5", "S4"])[..]);
        assert!(existing.contains(&got[2]) && !["S5", "S4"].contains(&got[2].as_str()));
        // Over many draws every other replica gets picked: the extra ones are random.
        let mut seen = HashSet::new();
        let mut r = rng();
        for _ in 0..200 {
            seen.insert(plan_remove(&existing, 1, &[], &mut r).unwrap()[0].clone());
        }
        assert_eq!(seen.len(), existing.len());
        assert_eq!(plan_remove(&existing, 7, &[], &mut rng()).unwrap().len(), 7);
    }

    #[test]
    fn rm_errors_name_what_is_wrong() {
        let existing = names(&["Server1", "Server2", "S10", "S11"]);
        let e = plan_remove(&existing, 1, &names(&["S10", "S11"]), &mut rng()).unwrap_err();
        assert_eq!(e.message, RM_TOO_MANY_HOSTNAMES);
        let e = plan_remove(&existing, 2, &names(&["S99"]), &mut rng()).unwrap_err();
        assert_eq!(e.message, "<Error> Hostname 'S99' is not a replica");
        let e = plan_remove(&existing, 5, &[], &mut rng()).unwrap_err();
        assert_eq!(e.message, "<Error> Cannot remove 5 replicas; there are only 4");
        let e = plan_remove(&existing, 2, &names(&["S10", "S10"]), &mut rng()).unwrap_err();
        assert_eq!(e.message, "<Error> Hostname 'S10' appears more than once");
        assert!([e].iter().all(|e| e.http_status() == 400));
    }

    #[test]
    fn ids_are_six_digits_and_fresh() {
        let mut used = HashSet::new();
        let mut r = rng();
        for _ in 0..1000 {
            let id = fresh_id(&used, &mut r);
            assert!(SIX_DIGITS.contains(&id));
            assert!(used.insert(id));
        }
        assert_eq!(initial_names(3), names(&["Server1", "Server2", "Server3"]));
        assert!(initial_names(0).is_empty());
    }
}
