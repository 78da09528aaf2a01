//! The database's metadata as the shard manager owns it, as pure data with no IO: the
//! schema, ShardT (`Stud_id_low, Shard_id, Shard_size`), MapT (`Shard_id, Server_id,
//! Primary`) and each shard's epoch; the contract's rules for `/init`, `/add` and `/rm`
//! as functions that either return the change to make or the exact error; and the election
//! choice. The manager persists every [`CatalogEvent`] in its own log before it tells any
//! node or router, and rebuilds the catalog by replaying them.

use std::collections::{BTreeMap, BTreeSet};

use protocol::{Epoch, Lsn, Schema, ShardId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value as Json};

/// A shard's row in ShardT.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ShardRange {
    /// `Shard_id`.
    pub id: ShardId,
    /// `Stud_id_low`.
    pub low: i64,
    /// `Shard_size`.
    pub size: i64,
}

impl ShardRange {
    /// Whether `key` falls in `[low, low + size)`.
    pub fn contains(&self, key: i64) -> bool {
        key >= self.low && (key - self.low) < self.size
    }

    /// Whether the two ranges share a key.
    pub fn overlaps(&self, other: &ShardRange) -> bool {
        let (a0, a1) = (self.low as i128, self.low as i128 + self.size as i128);
        let (b0, b1) = (other.low as i128, other.low as i128 + other.size as i128);
        a0 < b1 && b0 < a1
    }
}

/// One change to the catalog, as persisted in the manager's log.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum CatalogEvent {
    /// `/init`: schema, shards, and where each shard lives.
    Init {
        /// The table schema.
        schema: Schema,
        /// ShardT.
        shards: Vec<ShardRange>,
        /// Server → its shards, in the order given.
        servers: Vec<(String, Vec<ShardId>)>,
    },
    /// `/add`: new shards and new servers with their shards.
    Add {
        /// New ShardT rows.
        shards: Vec<ShardRange>,
        /// New servers and their shards.
        servers: Vec<(String, Vec<ShardId>)>,
    },
    /// `/rm`: servers removed with every shard replica they held.
    Remove {
        /// The removed servers.
        servers: Vec<String>,
    },
    /// A shard's primary at an epoch (after an election or a membership change).
    Primary {
        /// The shard.
        shard: ShardId,
        /// The new epoch.
        epoch: Epoch,
        /// The primary's name.
        primary: String,
    },
    /// An epoch taken for an election before anyone is asked to adopt it.
    Epoch {
        /// The shard.
        shard: ShardId,
        /// The epoch.
        epoch: Epoch,
    },
    /// A shard's voter set from `epoch` on (one replica added or dropped), persisted before
    /// the primary uses it.
    Voters {
        /// The shard.
        shard: ShardId,
        /// The epoch of the change.
        epoch: Epoch,
        /// The voters, in server order.
        voters: Vec<String>,
    },
}

/// The metadata the manager owns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
pub struct Catalog {
    /// `None` until `/init`.
    pub schema: Option<Schema>,
    /// ShardT, ordered by `low`.
    pub shards: Vec<ShardRange>,
    /// Servers in the order they were added, each with its shards in the order given.
    pub servers: Vec<(String, Vec<ShardId>)>,
    /// Each shard's primary.
    pub primary: BTreeMap<ShardId, String>,
    /// Each shard's highest epoch handed out.
    pub epoch: BTreeMap<ShardId, Epoch>,
    /// Each shard's voters (see the module notes): set to the shard's replicas when the shard
    /// is created, then changed only by [`CatalogEvent::Voters`].
    pub voters: BTreeMap<ShardId, Vec<String>>,
}

/// A refused request: the contract's message (starting with `"<Error> "`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub String);

fn refuse<T>(msg: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(format!("<Error> {}", msg.into())))
}

impl Catalog {
    /// Rebuilds a catalog from its events, in order.
    pub fn replay<'a>(events: impl IntoIterator<Item = &'a CatalogEvent>) -> Catalog {
        let mut c = Catalog::default();
        for e in events {
            c.apply(e);
        }
        c
    }

    /// Applies one event (already validated when it was made).
    pub fn apply(&mut self, e: &CatalogEvent) {
        match e {
            CatalogEvent::Init { schema, shards, servers } => {
                self.schema = Some(schema.clone());
                self.shards = shards.clone();
                self.shards.sort_by_key(|s| s.low);
                self.servers = servers.clone();
                for s in shards {
                    self.voters.insert(s.id.clone(), self.replicas(&s.id));
                }
            }
            CatalogEvent::Add { shards, servers } => {
                self.shards.extend(shards.iter().cloned());
                self.shards.sort_by_key(|s| s.low);
                self.servers.extend(servers.iter().cloned());
                // New servers of existing shards start as learners: the voters stay.
                for s in shards {
                    self.voters.insert(s.id.clone(), self.replicas(&s.id));
                }
            }
            CatalogEvent::Remove { servers } => {
                self.servers.retain(|(name, _)| !servers.contains(name));
                self.primary.retain(|_, p| !servers.contains(p));
            }
            CatalogEvent::Primary { shard, epoch, primary } => {
                self.primary.insert(shard.clone(), primary.clone());
                let e = self.epoch.entry(shard.clone()).or_default();
                *e = (*e).max(*epoch);
            }
            // A new epoch has no primary until one is chosen for it: the old one is being
            // fenced, and without a majority none may be chosen at all.
            CatalogEvent::Epoch { shard, epoch } => {
                self.raise_epoch(shard, *epoch);
            }
            CatalogEvent::Voters { shard, epoch, voters } => {
                self.voters.insert(shard.clone(), voters.clone());
                self.raise_epoch(shard, *epoch);
            }
        }
    }

    fn raise_epoch(&mut self, shard: &str, epoch: Epoch) {
        let e = self.epoch.entry(shard.to_string()).or_default();
        if epoch > *e {
            *e = epoch;
            self.primary.remove(shard);
        }
    }

    /// Whether `/init` has run.
    pub fn initialized(&self) -> bool {
        self.schema.is_some()
    }

    /// The shard that holds `key`.
    pub fn shard_for(&self, key: i64) -> Option<&ShardRange> {
        let i = self.shards.partition_point(|s| s.low <= key);
        self.shards[..i].last().filter(|s| s.contains(key))
    }

    /// Shards whose range meets `[low, high]`, in key order.
    pub fn shards_in(&self, low: i64, high: i64) -> Vec<&ShardRange> {
        self.shards
            .iter()
            .filter(|s| {
                (s.low as i128) <= high as i128 && (s.low as i128 + s.size as i128) > low as i128
            })
            .collect()
    }

    /// Servers holding `shard`, in server order.
    pub fn replicas(&self, shard: &str) -> Vec<String> {
        self.servers
            .iter()
            .filter(|(_, shards)| shards.iter().any(|s| s == shard))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The voters of `shard` (empty for an unknown shard).
    pub fn voters(&self, shard: &str) -> &[String] {
        self.voters.get(shard).map_or(&[], Vec::as_slice)
    }

    /// Servers holding `shard` that are not voters yet (catching up), in server order.
    pub fn learners(&self, shard: &str) -> Vec<String> {
        let voters = self.voters(shard);
        self.replicas(shard).into_iter().filter(|r| !voters.contains(r)).collect()
    }

    /// Servers holding `shard` that routers may read from: its replicas that are voters
    /// (a learner may still miss committed rows), in server order.
    pub fn serving_replicas(&self, shard: &str) -> Vec<String> {
        let voters = self.voters(shard);
        self.replicas(shard).into_iter().filter(|r| voters.contains(r)).collect()
    }

    /// The epoch of `shard` (0 before its first election).
    pub fn epoch_of(&self, shard: &str) -> Epoch {
        self.epoch.get(shard).copied().unwrap_or(0)
    }

    /// Whether `name` is a server of the catalog.
    pub fn has_server(&self, name: &str) -> bool {
        self.servers.iter().any(|(n, _)| n == name)
    }

    /// The shards of server `name`.
    pub fn shards_of(&self, name: &str) -> Option<&[ShardId]> {
        self.servers.iter().find(|(n, _)| n == name).map(|(_, s)| s.as_slice())
    }

    /// `GET /status`: the configuration as it is now.
    pub fn status_json(&self) -> Json {
        let schema = self.schema.as_ref().map_or(Json::Null, |s| {
            json!({"columns": s.columns, "dtypes": s.dtypes.iter().map(|d| d.as_str()).collect::<Vec<_>>()})
        });
        let shards: Vec<Json> = self
            .shards
            .iter()
            .map(|s| {
                json!({"Stud_id_low": s.low, "Shard_id": s.id, "Shard_size": s.size,
                       "primary": self.primary.get(&s.id)})
            })
            .collect();
        let mut servers = serde_json::Map::new();
        for (name, sh) in &self.servers {
            servers.insert(name.clone(), json!(sh));
        }
        json!({"N": self.servers.len(), "schema": schema, "shards": shards, "servers": servers, "status": "success"})
    }

    /// Validates `/init` and returns its event. `random_name` makes names for servers the
    /// configuration asks for but does not name; `random_pick(n, k)` picks `k` distinct
    /// indices below `n` (placement of shards that no server lists).
    pub fn init(
        &self,
        body: &Json,
        random_name: &mut dyn FnMut() -> String,
        random_pick: &mut dyn FnMut(usize, usize) -> Vec<usize>,
    ) -> Result<CatalogEvent, Refusal> {
        if self.initialized() {
            return refuse("the database is already initialized; /init runs once");
        }
        let schema = protocol::json::schema_from_json(body.get("schema").unwrap_or(&Json::Null))
            .map_err(|e| Refusal(e.message))?;
        let shards = parse_shards(body.get("shards"), "shards")?;
        check_no_overlap(&shards, &[])?;
        let mut servers = parse_servers(body.get("servers"))?;
        let known: BTreeSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        for (name, sh) in &servers {
            for s in sh {
                if !known.contains(s.as_str()) {
                    return refuse(format!(
                        "server {name} names shard {s}, which is not in 'shards'"
                    ));
                }
            }
        }
        let n = match body.get("N") {
            None | Some(Json::Null) => servers.len(),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| Refusal("<Error> field 'N' must be a non-negative integer".into()))?
                as usize,
        };
        if n < servers.len() {
            return refuse(format!(
                "N ({n}) is smaller than the number of servers listed ({})",
                servers.len()
            ));
        }
        while servers.len() < n {
            let name = random_name();
            if !servers.iter().any(|(s, _)| *s == name) {
                servers.push((name, Vec::new()));
            }
        }
        // A shard that no server lists goes on random servers.
        for s in &shards {
            if servers.iter().any(|(_, sh)| sh.contains(&s.id)) {
                continue;
            }
            if servers.is_empty() {
                return refuse(format!("shard {} has no server to live on", s.id));
            }
            let k = servers.len().min(3);
            for i in random_pick(servers.len(), k) {
                servers[i].1.push(s.id.clone());
            }
        }
        Ok(CatalogEvent::Init { schema, shards, servers })
    }

    /// Validates `/add` and returns its event and the contract's success message.
    /// `Server[5]`-style names become `Server` + a random 6-digit id from `random_id`.
    pub fn add(
        &self,
        body: &Json,
        random_id: &mut dyn FnMut() -> u32,
    ) -> Result<(CatalogEvent, String), Refusal> {
        if !self.initialized() {
            return refuse("the database is not initialized; call /init first");
        }
        let n = body
            .get("n")
            .and_then(Json::as_u64)
            .ok_or_else(|| Refusal("<Error> field 'n' must be a non-negative integer".into()))?
            as usize;
        let new_shards = match body.get("new_shards") {
            None | Some(Json::Null) => Vec::new(),
            v => parse_shards(v, "new_shards")?,
        };
        let requested = parse_servers(body.get("servers"))?;
        if n > requested.len() {
            return refuse("Number of new servers (n) is greater than newly added instances");
        }
        check_no_overlap(&new_shards, &self.shards)?;
        let mut taken: BTreeSet<String> = self.servers.iter().map(|(n, _)| n.clone()).collect();
        let mut servers = Vec::new();
        for (name, sh) in requested.into_iter().take(n) {
            let name = if let Some(digits) =
                name.strip_prefix("Server[").and_then(|r| r.strip_suffix(']'))
            {
                if digits.parse::<u32>().is_err() {
                    return refuse(format!("bad server placeholder {name}"));
                }
                let mut fresh;
                loop {
                    fresh = format!("Server{}", random_id());
                    if !taken.contains(&fresh) {
                        break;
                    }
                }
                fresh
            } else {
                name
            };
            if !taken.insert(name.clone()) {
                return refuse(format!("server {name} already exists"));
            }
            for s in &sh {
                let exists =
                    self.shards.iter().any(|x| &x.id == s) || new_shards.iter().any(|x| &x.id == s);
                if !exists {
                    return refuse(format!(
                        "shard {s} of server {name} is neither an existing nor a new shard"
                    ));
                }
            }
            servers.push((name, sh));
        }
        let names: Vec<String> = servers
            .iter()
            .map(|(n, _)| format!("Server:{}", n.strip_prefix("Server").unwrap_or(n)))
            .collect();
        let message = match names.len() {
            0 => "Add no server".to_string(),
            1 => format!("Add {}", names[0]),
            k => format!("Add {} and {}", names[..k - 1].join(", "), names[k - 1]),
        };
        Ok((CatalogEvent::Add { shards: new_shards, servers }, message))
    }

    /// Validates `/rm` and returns the servers to remove (named ones first, then random
    /// ones picked with `random_pick(n, k)` among the others).
    pub fn remove(
        &self,
        body: &Json,
        random_pick: &mut dyn FnMut(usize, usize) -> Vec<usize>,
    ) -> Result<Vec<String>, Refusal> {
        let n = body
            .get("n")
            .and_then(Json::as_u64)
            .ok_or_else(|| Refusal("<Error> field 'n' must be a non-negative integer".into()))?
            as usize;
        let named: Vec<String> = match body.get("servers") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        Refusal("<Error> field 'servers' must be an array of strings".into())
                    })
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return refuse("field 'servers' must be an array of strings"),
        };
        if named.len() > n {
            return refuse("Length of server list is more than removable instances");
        }
        if n > self.servers.len() {
            return refuse(format!("cannot remove {n} servers; there are {}", self.servers.len()));
        }
        let mut out: Vec<String> = Vec::new();
        for name in named {
            if !self.servers.iter().any(|(s, _)| *s == name) {
                return refuse(format!("server {name} does not exist"));
            }
            if out.contains(&name) {
                return refuse(format!("server {name} is named twice"));
            }
            out.push(name);
        }
        let others: Vec<&String> =
            self.servers.iter().map(|(s, _)| s).filter(|s| !out.contains(s)).collect();
        for i in random_pick(others.len(), n - out.len()) {
            out.push(others[i].clone());
        }
        for s in &self.shards {
            let left = self.replicas(&s.id).into_iter().filter(|r| !out.contains(r)).count();
            if left == 0 && !self.replicas(&s.id).is_empty() {
                return refuse(format!(
                    "removing {} would remove the last replica of shard {}",
                    out.join(", "),
                    s.id
                ));
            }
            let voters_left =
                self.serving_replicas(&s.id).iter().filter(|r| !out.contains(r)).count();
            if left > 0 && voters_left == 0 {
                return refuse(format!(
                    "removing {} would leave shard {} only with replicas still catching up \
                     ({}); try again once they have caught up",
                    out.join(", "),
                    s.id,
                    self.learners(&s.id).join(", ")
                ));
            }
        }
        Ok(out)
    }
}

/// The replica to promote: the largest `(last_epoch, last_lsn)` among those that adopted the
/// new epoch (ties go to the first, in the order given).
pub fn choose_primary(adopted: &[(String, Epoch, Lsn)]) -> Option<&str> {
    let mut best: Option<&(String, Epoch, Lsn)> = None;
    for a in adopted {
        if best.is_none_or(|b| (a.1, a.2) > (b.1, b.2)) {
            best = Some(a);
        }
    }
    best.map(|b| b.0.as_str())
}

fn parse_shards(v: Option<&Json>, field: &str) -> Result<Vec<ShardRange>, Refusal> {
    let Some(Json::Array(items)) = v else {
        return refuse(format!("field '{field}' must be an array of shards"));
    };
    let mut out: Vec<ShardRange> = Vec::new();
    for item in items {
        let spec = protocol::json::shard_spec_from_json(item).map_err(|e| Refusal(e.message))?;
        let Some((low, size)) = spec.range else {
            return refuse(format!("shard {} needs Stud_id_low and Shard_size", spec.shard_id));
        };
        protocol::names::check("shard id", &spec.shard_id)
            .map_err(|e| Refusal(format!("<Error> {e}")))?;
        if out.iter().any(|s| s.id == spec.shard_id) {
            return refuse(format!("shard {} is listed twice", spec.shard_id));
        }
        out.push(ShardRange { id: spec.shard_id, low, size });
    }
    Ok(out)
}

fn parse_servers(v: Option<&Json>) -> Result<Vec<(String, Vec<ShardId>)>, Refusal> {
    let Some(Json::Object(map)) = v else {
        return refuse("field 'servers' must be an object of server names to shard lists");
    };
    let mut out = Vec::new();
    for (name, shards) in map {
        // `/add`'s `Server[5]` placeholders become `Server<6 digits>` names later.
        let placeholder = name
            .strip_prefix("Server[")
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|d| d.parse::<u32>().is_ok());
        if !placeholder {
            protocol::names::check("server name", name)
                .map_err(|e| Refusal(format!("<Error> {e}")))?;
        }
        let Some(list) = shards.as_array() else {
            return refuse(format!("shards of server {name} must be an array"));
        };
        let mut sh: Vec<ShardId> = Vec::new();
        for s in list {
            let Some(s) = s.as_str() else {
                return refuse(format!("shards of server {name} must be strings"));
            };
            if !sh.iter().any(|x| x == s) {
                sh.push(s.to_string());
            }
        }
        out.push((name.clone(), sh));
    }
    Ok(out)
}

fn check_no_overlap(new: &[ShardRange], existing: &[ShardRange]) -> Result<(), Refusal> {
    for (i, a) in new.iter().enumerate() {
        for b in new[i + 1..].iter().chain(existing) {
            if a.id == b.id {
                return refuse(format!("shard {} already exists", a.id));
            }
            if a.overlaps(b) {
                return refuse(format!("shard {} overlaps shard {}", a.id, b.id));
            }
        }
    }
    Ok(())
}

/// The contract's default configuration (its `/init` body): 4 shards of 4096 ids, 6 servers,
/// 3 replicas per shard. `shardgate up --init default` and the analyses use it.
pub fn default_config() -> Json {
    json!({"N": 6,
     "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"], "dtypes": ["Number", "String", "String"]},
     "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096},
                {"Stud_id_low": 4096, "Shard_id": "sh2", "Shard_size": 4096},
                {"Stud_id_low": 8192, "Shard_id": "sh3", "Shard_size": 4096},
                {"Stud_id_low": 12288, "Shard_id": "sh4", "Shard_size": 4096}],
     "servers": {"Server0": ["sh1", "sh2"], "Server1": ["sh3", "sh4"], "Server3": ["sh1", "sh3"],
                 "Server4": ["sh4", "sh2"], "Server5": ["sh1", "sh4"], "Server6": ["sh3", "sh2"]}})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn initialized() -> Catalog {
        let c = Catalog::default();
        let e =
            c.init(&default_config(), &mut || unreachable!(), &mut |_, _| unreachable!()).unwrap();
        Catalog::replay([&e])
    }

    #[test]
    fn init_builds_shardt_and_mapt_and_runs_once() {
        let c = initialized();
        assert_eq!(c.servers.len(), 6);
        assert_eq!(c.replicas("sh1"), ["Server0", "Server3", "Server5"]);
        assert_eq!(c.shard_for(4095).unwrap().id, "sh1");
        assert_eq!(c.shard_for(4096).unwrap().id, "sh2");
        assert!(c.shard_for(16384).is_none());
        assert!(c.shard_for(-1).is_none());
        let ids: Vec<&str> = c.shards_in(1000, 8889).iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["sh1", "sh2", "sh3"]);
        let again = c.init(&default_config(), &mut || unreachable!(), &mut |_, _| unreachable!());
        assert!(again.unwrap_err().0.starts_with("<Error> "));
        let status = c.status_json();
        assert_eq!(status["N"], 6);
        assert_eq!(status["servers"]["Server4"], json!(["sh4", "sh2"]));
        assert_eq!(
            status["shards"][1],
            json!({"Stud_id_low": 4096, "Shard_id": "sh2", "Shard_size": 4096, "primary": null})
        );
    }

    #[test]
    fn init_refuses_overlaps_unknown_shards_and_places_orphans() {
        let c = Catalog::default();
        let mut bad = default_config();
        bad["shards"][1]["Stud_id_low"] = json!(4000);
        let e = c.init(&bad, &mut || unreachable!(), &mut |_, _| unreachable!()).unwrap_err();
        assert!(e.0.contains("overlaps"), "{}", e.0);
        let mut bad = default_config();
        bad["servers"]["Server0"] = json!(["sh9"]);
        let e = c.init(&bad, &mut || unreachable!(), &mut |_, _| unreachable!()).unwrap_err();
        assert!(e.0.contains("sh9"), "{}", e.0);
        let mut orphan = default_config();
        orphan["shards"]
            .as_array_mut()
            .unwrap()
            .push(json!({"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 10}));
        orphan["N"] = json!(7);
        let mut names = vec!["Server777777".to_string()].into_iter();
        let e = c
            .init(&orphan, &mut || names.next().unwrap(), &mut |n, k| {
                (0..k).map(|i| n - 1 - i).collect()
            })
            .unwrap();
        let c = Catalog::replay([&e]);
        assert_eq!(c.servers.len(), 7);
        assert_eq!(c.replicas("sh5").len(), 3);
        assert!(c.replicas("sh5").contains(&"Server777777".to_string()));
    }

    #[test]
    fn add_follows_the_contract() {
        let c = initialized();
        let body = json!({"n": 2, "new_shards": [{"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 4096}],
                          "servers": {"Server4x": ["sh3", "sh5"], "Server[5]": ["sh2", "sh5"]}});
        let (e, msg) = c.add(&body, &mut || 58127).unwrap();
        assert_eq!(msg, "Add Server:4x and Server:58127");
        let mut c2 = c.clone();
        c2.apply(&e);
        assert_eq!(c2.servers.len(), 8);
        assert_eq!(c2.replicas("sh5"), ["Server4x", "Server58127"]);
        let too_many = json!({"n": 3, "servers": {"A": ["sh1"], "B": ["sh2"]}});
        assert_eq!(
            c.add(&too_many, &mut || 1).unwrap_err().0,
            "<Error> Number of new servers (n) is greater than newly added instances"
        );
        let overlap = json!({"n": 1, "new_shards": [{"Stud_id_low": 100, "Shard_id": "sh9", "Shard_size": 5}], "servers": {"A": ["sh9"]}});
        assert!(c.add(&overlap, &mut || 1).unwrap_err().0.contains("overlaps"));
        let unknown = json!({"n": 1, "servers": {"A": ["sh42"]}});
        assert!(c.add(&unknown, &mut || 1).unwrap_err().0.contains("sh42"));
        let dup = json!({"n": 1, "servers": {"Server0": ["sh1"]}});
        assert!(c.add(&dup, &mut || 1).unwrap_err().0.contains("Server0"));
    }

    #[test]
    fn rm_follows_the_contract_and_keeps_a_replica_of_every_shard() {
        let c = initialized();
        let too_long = json!({"n": 2, "servers": ["Server1", "Server4", "Server2"]});
        assert_eq!(
            c.remove(&too_long, &mut |_, _| vec![]).unwrap_err().0,
            "<Error> Length of server list is more than removable instances"
        );
        let out = c
            .remove(&json!({"n": 2, "servers": ["Server4"]}), &mut |_, k| (0..k).collect())
            .unwrap();
        assert_eq!(out, ["Server4", "Server0"]);
        assert!(c
            .remove(&json!({"n": 1, "servers": ["Nope"]}), &mut |_, _| vec![])
            .unwrap_err()
            .0
            .contains("Nope"));
        let last = c.remove(
            &json!({"n": 3, "servers": ["Server0", "Server3", "Server5"]}),
            &mut |_, _| vec![],
        );
        assert!(last.unwrap_err().0.contains("last replica of shard sh1"));
        let mut c2 = c.clone();
        c2.apply(&CatalogEvent::Primary {
            shard: "sh1".into(),
            epoch: 3,
            primary: "Server4".into(),
        });
        c2.apply(&CatalogEvent::Remove { servers: out });
        assert_eq!(c2.servers.len(), 4);
        assert!(!c2.primary.contains_key("sh1"), "a removed primary is no primary");
        assert_eq!(c2.epoch["sh1"], 3);
    }

    #[test]
    fn voters_follow_their_events_and_a_new_epoch_has_no_primary_yet() {
        let mut c = initialized();
        assert_eq!(c.voters("sh2"), ["Server0", "Server4", "Server6"]);
        c.apply(&CatalogEvent::Epoch { shard: "sh2".into(), epoch: 1 });
        c.apply(&CatalogEvent::Primary {
            shard: "sh2".into(),
            epoch: 1,
            primary: "Server0".into(),
        });
        let body = json!({"n": 1, "new_shards": [{"Stud_id_low": 16384, "Shard_id": "sh5", "Shard_size": 10}],
                          "servers": {"Server9": ["sh2", "sh5"]}});
        let (e, _) = c.add(&body, &mut || unreachable!()).unwrap();
        c.apply(&e);
        // A new server of an existing shard is a learner; of a new shard, a voter.
        assert_eq!(c.voters("sh2"), ["Server0", "Server4", "Server6"]);
        assert_eq!(c.learners("sh2"), ["Server9"]);
        assert_eq!(c.serving_replicas("sh2"), ["Server0", "Server4", "Server6"]);
        assert_eq!(c.voters("sh5"), ["Server9"]);
        assert_eq!(c.primary["sh2"], "Server0", "adding a learner keeps the primary");
        c.apply(&CatalogEvent::Voters {
            shard: "sh2".into(),
            epoch: 2,
            voters: vec!["Server0".into(), "Server4".into(), "Server6".into(), "Server9".into()],
        });
        assert!(c.learners("sh2").is_empty());
        assert_eq!(c.epoch_of("sh2"), 2);
        assert!(!c.primary.contains_key("sh2"));
        c.apply(&CatalogEvent::Primary {
            shard: "sh2".into(),
            epoch: 2,
            primary: "Server0".into(),
        });
        // An old epoch changes nothing.
        c.apply(&CatalogEvent::Epoch { shard: "sh2".into(), epoch: 1 });
        assert_eq!(c.primary["sh2"], "Server0");
        // Only catching-up replicas would be left: refused.
        let mut c = initialized();
        let (e, _) = c.add(&json!({"n": 1, "servers": {"Server9": ["sh1"]}}), &mut || 1).unwrap();
        c.apply(&e);
        let rm = c.remove(
            &json!({"n": 3, "servers": ["Server0", "Server3", "Server5"]}),
            &mut |_, _| vec![],
        );
        assert!(rm.unwrap_err().0.contains("only with replicas still catching up (Server9)"));
    }

    #[test]
    fn the_largest_log_wins_an_election() {
        let a = vec![("A".to_string(), 2, 10), ("B".to_string(), 3, 4), ("C".to_string(), 3, 9)];
        assert_eq!(choose_primary(&a), Some("C"));
        assert_eq!(choose_primary(&[]), None);
        let tie = vec![("A".to_string(), 1, 5), ("B".to_string(), 1, 5)];
        assert_eq!(choose_primary(&tie), Some("A"));
    }

    #[test]
    fn events_round_trip_through_the_wire_encoding() {
        let c = initialized();
        let e = c.init(&json!({}), &mut || String::new(), &mut |_, _| vec![]);
        assert!(e.is_err());
        let ev = CatalogEvent::Primary { shard: "sh1".into(), epoch: 7, primary: "Server0".into() };
        let bytes = protocol::wire::encode(&ev).unwrap();
        let back: CatalogEvent = protocol::wire::decode(&bytes).unwrap();
        assert_eq!(back, ev);
    }
}
