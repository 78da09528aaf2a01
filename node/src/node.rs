//! The node: its shard replicas and the handlers both doors (binary and HTTP) call.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use protocol::{
    ConfigReq, Consistency, CopyReq, DeleteReq, ErrorBody, OnceReq, ReadReq, Request, RequestId,
    Response, Schema, ShardId, UpdateReq, WriteReq,
};

use crate::error::{Error, Result};
use crate::shard::{Change, Shard, ShardMeta, ShardOptions, META_FILE};

/// Directory under the data dir that holds one directory per shard replica.
const SHARDS_DIR: &str = "shards";
/// How long a read waits for its replica to apply the LSN the caller already saw.
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// One storage server.
pub struct Node {
    name: String,
    data_dir: PathBuf,
    opts: ShardOptions,
    shards: RwLock<HashMap<ShardId, Arc<Shard>>>,
    /// Serializes `/config` calls, which create directories.
    config_lock: tokio::sync::Mutex<()>,
    /// Caps on the rows of one HTTP (or forwarded) `/write` and read answer; the binary
    /// door's own requests come from the cluster and are not capped here.
    row_limits: protocol::limits::RowLimits,
}

impl Node {
    /// Opens the node's data directory (creating it) and every shard replica in it.
    pub fn open(name: &str, data_dir: &Path, opts: ShardOptions) -> Result<Node> {
        let shards_dir = data_dir.join(SHARDS_DIR);
        wal::create_dir_all_synced(&shards_dir)?;
        let mut shards = HashMap::new();
        let entries = std::fs::read_dir(&shards_dir)
            .map_err(|e| Error::io("list shard directories", &shards_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| Error::io("list shard directories", &shards_dir, e))?;
            let dir = entry.path();
            if !dir.join(META_FILE).exists() {
                continue;
            }
            let shard = Shard::open(&dir, name, opts.clone())?;
            tracing::info!(
                shard = shard.id(),
                rows = shard.row_count(),
                unapplied = shard.unapplied(),
                "shard recovered"
            );
            shards.insert(shard.id().to_string(), Arc::new(shard));
        }
        Ok(Node {
            name: name.to_string(),
            data_dir: data_dir.to_path_buf(),
            opts,
            shards: RwLock::new(shards),
            config_lock: tokio::sync::Mutex::new(()),
            row_limits: protocol::limits::RowLimits::default(),
        })
    }

    /// The server's name (its `[ID]`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The caps on rows of the HTTP endpoints (`/write`, `/read`, `/copy`).
    pub fn row_limits(&self) -> protocol::limits::RowLimits {
        self.row_limits
    }

    /// The node with `limits` as the caps on rows of the HTTP endpoints (the defaults
    /// otherwise), set before it serves.
    pub fn with_row_limits(self, limits: protocol::limits::RowLimits) -> Node {
        Node { row_limits: limits, ..self }
    }

    /// The replica of `id`, or the contract's 400 naming it.
    pub fn shard(&self, id: &str) -> std::result::Result<Arc<Shard>, ErrorBody> {
        self.shards.read().unwrap_or_else(|e| e.into_inner()).get(id).cloned().ok_or_else(|| {
            ErrorBody::bad_request(format!("{} does not hold shard {id}", self.name))
        })
    }

    /// The schema of shard `id` (the HTTP shim needs it to parse rows).
    pub fn schema_of(&self, id: &str) -> std::result::Result<Schema, ErrorBody> {
        Ok(self.shard(id)?.meta().schema)
    }

    /// Every shard replica, for shutdown and tests.
    pub fn shards(&self) -> Vec<Arc<Shard>> {
        self.shards.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Whether this node is fit to serve: not when a shard's log failed to sync (after a
    /// failed fsync what is on disk is unknown, so the log refuses every write: PostgreSQL
    /// and etcd stop the process there). The heartbeat then fails with that reason, and the
    /// shard manager replaces the node as it does a dead one: a new primary among the
    /// others, and this process restarted on its data, its logs recovered from the disk.
    pub fn health(&self) -> std::result::Result<(), ErrorBody> {
        let mut failed: Vec<String> =
            self.shards().iter().filter(|s| s.log_failed()).map(|s| s.id().to_string()).collect();
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort();
        Err(ErrorBody::internal(format!(
            "{} is unhealthy: the log of shard {} failed to sync; restart the node to recover it",
            self.name,
            failed.join(", ")
        )))
    }

    /// Answers one request; both doors call this.
    pub async fn handle(&self, req: Request) -> std::result::Result<Response, ErrorBody> {
        match req {
            Request::Home => Ok(Response::Home { name: self.name.clone() }),
            Request::Heartbeat => self.health().map(|()| Response::Heartbeat),
            Request::Config(c) => self.configure(c).await,
            Request::Copy(c) => self.copy(c),
            Request::Read(r) => self.read(r).await,
            Request::Write(w) => self.write(w, None).await,
            Request::Update(u) => self.update(u, None).await,
            Request::Delete(d) => self.delete(d, None).await,
            // These sync `shard.json` (and a snapshot its log): off the async workers.
            Request::Adopt(r) => {
                let shard = self.shard(&r.shard)?;
                blocking(move || shard.adopt(&r)).await
            }
            Request::Promote(r) => {
                let shard = self.shard(&r.shard)?;
                blocking(move || shard.promote(&r)).await
            }
            Request::Follow(r) => {
                let shard = self.shard(&r.shard)?;
                blocking(move || shard.follow(&r)).await
            }
            Request::Append(r) => self.shard(&r.shard)?.append(r).await,
            Request::Snapshot(r) => {
                let shard = self.shard(&r.shard)?;
                blocking(move || shard.snapshot_chunk(r)).await
            }
            Request::ReplicaStatus(r) => Ok(Response::Replica(self.shard(&r.shard)?.status())),
            Request::Forward(f) => Ok(crate::http::forwarded(self, f).await),
            Request::Once(o) => self.once(o).await,
            Request::DbRead(_)
            | Request::DbWrite(_)
            | Request::DbUpdate(_)
            | Request::DbDelete(_)
            | Request::DbReadServer(_)
            | Request::DbAdmin(_) => Err(ErrorBody::bad_request(format!(
                "{} is a storage server; '{}' is a request for a router",
                self.name,
                req.name()
            ))),
        }
    }

    async fn configure(&self, c: ConfigReq) -> std::result::Result<Response, ErrorBody> {
        if let Err(m) = c.schema.validate() {
            return Err(ErrorBody::bad_request(m));
        }
        if c.shards.is_empty() {
            return Err(ErrorBody::bad_request("field 'shards' must name at least one shard"));
        }
        let _serial = self.config_lock.lock().await;
        // Check everything before changing anything.
        let mut seen = std::collections::HashSet::new();
        for spec in &c.shards {
            check_shard_id(&spec.shard_id)?;
            if !seen.insert(spec.shard_id.as_str()) {
                return Err(ErrorBody::bad_request(format!(
                    "shard {} is named twice",
                    spec.shard_id
                )));
            }
            if let Ok(existing) = self.shard(&spec.shard_id) {
                let meta = existing.meta();
                if meta.schema != c.schema {
                    return Err(ErrorBody::bad_request(format!(
                        "shard {} is already configured with another schema",
                        spec.shard_id
                    )));
                }
                if let (Some(old), Some(new)) = (meta.spec.range, spec.range) {
                    if old != new {
                        return Err(ErrorBody::bad_request(format!(
                            "shard {} already has the range Stud_id {} to {}",
                            spec.shard_id,
                            old.0,
                            old.0.saturating_add(old.1).saturating_sub(1)
                        )));
                    }
                }
            }
        }
        let new = c.shards.iter().filter(|s| self.shard(&s.shard_id).is_err()).count();
        let held = self.shards().len();
        if held + new > self.opts.max_shards {
            return Err(ErrorBody::bad_request(format!(
                "{} holds {held} shards; {new} more would pass the most one node takes ({})",
                self.name, self.opts.max_shards
            )));
        }
        for spec in &c.shards {
            if let Ok(existing) = self.shard(&spec.shard_id) {
                if let (None, Some(range)) = (existing.meta().spec.range, spec.range) {
                    let shard = existing.clone();
                    blocking(move || shard.set_range(range).map_err(internal)).await?;
                }
                continue;
            }
            let dir = self.data_dir.join(SHARDS_DIR).join(&spec.shard_id);
            let meta = ShardMeta::new(spec.clone(), c.schema.clone());
            let (opts, name) = (self.opts.clone(), self.name.clone());
            let shard =
                blocking(move || Shard::create(&dir, &name, meta, opts).map_err(internal)).await?;
            self.shards
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(spec.shard_id.clone(), Arc::new(shard));
        }
        Ok(Response::Configured {
            name: self.name.clone(),
            shards: c.shards.into_iter().map(|s| s.shard_id).collect(),
        })
    }

    fn copy(&self, c: CopyReq) -> std::result::Result<Response, ErrorBody> {
        let shards =
            c.shards.iter().map(|id| self.shard(id)).collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Response::Copy {
            shards: shards.iter().map(|s| (s.id().to_string(), s.all_rows())).collect(),
        })
    }

    async fn read(&self, r: ReadReq) -> std::result::Result<Response, ErrorBody> {
        if r.low > r.high {
            return Err(ErrorBody::bad_request(format!(
                "low ({}) is greater than high ({})",
                r.low, r.high
            )));
        }
        let shard = self.shard(&r.shard)?;
        if r.consistency == Consistency::Linearizable {
            let (rows, applied_lsn) = shard.read_linearizable(r.low, r.high).await?;
            return Ok(Response::Read { rows, applied_lsn });
        }
        if r.min_lsn > 0 {
            shard.wait_visible(r.min_lsn, READ_WAIT).await?;
        }
        let (rows, applied_lsn) = shard.read(r.low, r.high);
        Ok(Response::Read { rows, applied_lsn })
    }

    /// A change sent under a request id: applied at most once however often it comes.
    async fn once(&self, o: OnceReq) -> std::result::Result<Response, ErrorBody> {
        match *o.request {
            Request::Write(w) => self.write(w, Some(o.id)).await,
            Request::Update(u) => self.update(u, Some(o.id)).await,
            Request::Delete(d) => self.delete(d, Some(o.id)).await,
            other => Err(ErrorBody::bad_request(format!(
                "only write, update and delete are sent under a request id, not {}",
                other.name()
            ))),
        }
    }

    async fn write(
        &self,
        w: WriteReq,
        id: Option<RequestId>,
    ) -> std::result::Result<Response, ErrorBody> {
        let shard = self.shard(&w.shard)?;
        let count = w.rows.len() as u64;
        if count == 0 {
            let lsn = shard.progress().applied;
            return Ok(Response::Written { count: 0, current_idx: shard.row_count(), lsn });
        }
        let (lsn, current_idx) = shard.submit(Change::Insert(w.rows), id, None).await?;
        Ok(Response::Written { count, current_idx, lsn })
    }

    async fn update(
        &self,
        u: UpdateReq,
        id: Option<RequestId>,
    ) -> std::result::Result<Response, ErrorBody> {
        if u.key != u.row.key {
            return Err(ErrorBody::bad_request(format!(
                "data.Stud_id ({}) differs from Stud_id ({})",
                u.row.key, u.key
            )));
        }
        let shard = self.shard(&u.shard)?;
        let (lsn, _) = shard.submit(Change::Update(u.row), id, None).await?;
        Ok(Response::Updated { key: u.key, lsn })
    }

    async fn delete(
        &self,
        d: DeleteReq,
        id: Option<RequestId>,
    ) -> std::result::Result<Response, ErrorBody> {
        let shard = self.shard(&d.shard)?;
        let (lsn, _) = shard.submit(Change::Delete(d.key), id, d.only_if.as_ref()).await?;
        Ok(Response::Deleted { key: d.key, lsn })
    }

    /// Stops every shard's committer once it has made durable what was appended.
    pub fn close(&self) {
        for s in self.shards() {
            s.close();
        }
    }
}

/// Shard ids name directories: the one rule for names (`protocol::names`).
fn check_shard_id(id: &str) -> std::result::Result<(), ErrorBody> {
    protocol::names::check("shard id", id).map_err(ErrorBody::bad_request)
}

/// Runs work that may sync files on tokio's blocking threads, not on an async worker.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::result::Result<T, ErrorBody> + Send + 'static,
) -> std::result::Result<T, ErrorBody> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(ErrorBody::internal(format!("storage task failed: {e}"))),
    }
}

/// A storage error as the answer to the request that met it.
fn internal(e: crate::Error) -> ErrorBody {
    ErrorBody::internal(e.to_string())
}
