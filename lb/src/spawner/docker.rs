//! The `docker` spawner: each node is a container of the `FROM scratch` shardgate image on a
//! Docker network, started and stopped through the engine's API ([`super::engine`], the
//! unix socket; the docker CLI is never run).
//!
//! - Node `NAME` is container `PREFIX` + `NAME` (the prefix is empty unless several
//!   deployments share one engine), with network alias `NAME`, running `shardgate node --name
//!   NAME --listen 0.0.0.0:BINARY --http 0.0.0.0:HTTP --data-dir /data`.
//! - The cluster secret is a file on the named volume [`DockerConfig::secret_volume`] (the
//!   manager's own, where it created the secret), mounted read-only into every node
//!   container at the file's directory and named by `SHARDGATE_SECRET_FILE`; the admin
//!   token, when set, is `SHARDGATE_ADMIN_TOKEN` in the container's environment. A cluster
//!   without a secret runs its nodes `--insecure`.
//! - Its data is the named volume `PROJECT_node_NAME` mounted at `/data`, so a container
//!   started again under the same name (a replacement, or the next `up`) finds its WAL; only
//!   [`Spawner::remove`] (the `/rm` of a server) deletes it.
//! - Containers and volumes carry the labels [`LABEL_PROJECT`]`=PROJECT` and
//!   [`LABEL_SERVER`]`=NAME`, so a teardown removes exactly what this spawner created
//!   (`scripts/docker-down.sh` filters on them).
//! - The node's addresses are its container's IP on the network (from the engine's
//!   inspection) and two ports: no name resolution is needed. The engine readily gives a
//!   replacement its predecessor's IP, and the manager tells a respawned node from the old
//!   one by its address (to reconfigure it, and to elect when a primary's process changed),
//!   so every container gets the next pair of ports of a range ([`DockerConfig::first_port`],
//!   [`PORT_PAIRS`] pairs, from a random start): no two containers this spawner started
//!   share an address. The spawner returns once both ports accept connections.
//!
//! Failures are found by the manager's heartbeats, as with processes: a `docker kill`ed
//! container or one cut off its network stops answering, is marked dead, and is replaced:
//! [`Spawner::kill`] removes the container (SIGKILL if it still runs) and `spawn` creates a
//! new one under the same name on the same volume.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::{json, Value as Json};
use tokio::time::Instant;

use super::engine::Engine;
use super::{NodeSecret, NodeToken, SpawnError, Spawned, Spawner, NODE_START_TIMEOUT, STOP_GRACE};

/// Label naming the deployment (project) a container or volume belongs to.
pub const LABEL_PROJECT: &str = "io.shardgate.project";
/// Label naming the server a container or volume is.
pub const LABEL_SERVER: &str = "io.shardgate.server";
/// Where a node container keeps its data (the volume's mount point).
pub const NODE_DATA_DIR: &str = "/data";
/// Interval between two probes of a starting node's ports.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// Limit on one probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Log lines of a container that failed to start quoted in the error.
const FAILED_LOG_LINES: usize = 20;
/// Most port pairs node containers cycle through (fewer when the range ends at 65535).
pub const PORT_PAIRS: u32 = 10_000;

/// How the `docker` spawner starts nodes.
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// The engine's unix socket (normally `/var/run/docker.sock`).
    pub socket: PathBuf,
    /// The image holding `/shardgate` (built by `scripts/image.sh`).
    pub image: String,
    /// The network nodes join (it must exist; compose creates it).
    pub network: String,
    /// The deployment's name: the value of [`LABEL_PROJECT`] and the volumes' prefix.
    pub project: String,
    /// Prepended to a server's name to name its container (normally empty).
    pub prefix: String,
    /// The first port of the range node containers listen on (inside the network): each
    /// container takes the next pair, HTTP shim then binary protocol.
    pub first_port: u16,
    /// `RUST_LOG` of the nodes.
    pub log_filter: String,
    /// The nodes' cluster secret: a file's path inside the containers (on
    /// [`DockerConfig::secret_volume`]), or none (`--insecure`).
    pub secret: NodeSecret,
    /// The named volume holding the secret file, mounted read-only at its directory.
    pub secret_volume: String,
    /// The admin token every node's `/config` requires, if one is set.
    pub admin_token: Option<NodeToken>,
}

impl DockerConfig {
    /// Checks what the engine would refuse later with a less clear message.
    pub fn validate(&self) -> Result<(), String> {
        if self.image.is_empty() || self.network.is_empty() {
            return Err("the docker spawner needs an image and a network".into());
        }
        if !valid_name(&self.project) {
            return Err(format!(
                "docker project {:?} is not a valid name ([a-zA-Z0-9][a-zA-Z0-9_.-]*)",
                self.project
            ));
        }
        if let NodeSecret::File(path) = &self.secret {
            let dir = path.parent().unwrap_or(std::path::Path::new("/"));
            if !path.is_absolute()
                || dir == std::path::Path::new("/")
                || dir == std::path::Path::new(NODE_DATA_DIR)
            {
                return Err(format!(
                    "the docker spawner mounts the secret's directory into each node: the \
                     secret file {} must be an absolute path below / and outside \
                     {NODE_DATA_DIR} (e.g. /secret/cluster.secret, on a volume of its own)",
                    path.display()
                ));
            }
            if !valid_name(&self.secret_volume) {
                return Err(format!(
                    "docker secret volume {:?} is not a valid name",
                    self.secret_volume
                ));
            }
        }
        if !self.prefix.is_empty() && !valid_name(&self.prefix) {
            return Err(format!("docker container prefix {:?} is not a valid name", self.prefix));
        }
        if self.first_port == 0 || self.port_pairs() < 2 {
            return Err(format!(
                "node port range from {} leaves no room for two port pairs",
                self.first_port
            ));
        }
        Ok(())
    }

    /// How many (HTTP, binary) port pairs fit from `first_port` on.
    fn port_pairs(&self) -> u32 {
        ((65536 - u32::from(self.first_port)) / 2).min(PORT_PAIRS)
    }

    /// The ports of pair `k` (mod the pairs there are): HTTP, binary.
    fn ports(&self, k: u32) -> (u16, u16) {
        let http = u32::from(self.first_port) + 2 * (k % self.port_pairs().max(1));
        // In range: first_port + 2 * pairs <= 65536.
        (http as u16, (http + 1) as u16)
    }
}

/// Whether the engine accepts `s` as a container or volume name.
fn valid_name(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// Starts nodes as containers; see the module doc.
pub struct DockerSpawner {
    cfg: DockerConfig,
    engine: Engine,
    /// Server name -> id of the container this spawner started for it.
    started: Mutex<HashMap<String, String>>,
    /// The port pair the next container takes.
    next_ports: AtomicU32,
}

impl DockerSpawner {
    /// A spawner with no containers yet (nothing is asked of the engine until a spawn).
    pub fn new(cfg: DockerConfig) -> Result<DockerSpawner, String> {
        cfg.validate()?;
        let engine = Engine::new(cfg.socket.clone());
        // A random start: a restarted manager's first containers are unlikely to get an
        // address its routers still remember from the last life.
        let start = rand::Rng::gen_range(&mut rand::thread_rng(), 0..cfg.port_pairs());
        Ok(DockerSpawner {
            cfg,
            engine,
            started: Mutex::new(HashMap::new()),
            next_ports: AtomicU32::new(start),
        })
    }

    /// The container name of server `name`.
    pub fn container_name(&self, name: &str) -> String {
        format!("{}{name}", self.cfg.prefix)
    }

    /// The volume name of server `name`.
    pub fn volume_name(&self, name: &str) -> String {
        format!("{}_node_{name}", self.cfg.project)
    }

    fn labels(&self, name: &str) -> Json {
        json!({ LABEL_PROJECT: self.cfg.project, LABEL_SERVER: name })
    }

    fn forget(&self, name: &str) -> Option<String> {
        self.started.lock().unwrap_or_else(|e| e.into_inner()).remove(name)
    }

    /// The engine's create body of node `name`'s container, listening on `(http, binary)`.
    fn container_spec(&self, name: &str, (http, binary): (u16, u16)) -> Json {
        let c = &self.cfg;
        let mut cmd = vec![
            "node".to_string(),
            "--name".into(),
            name.into(),
            "--listen".into(),
            format!("0.0.0.0:{binary}"),
            "--http".into(),
            format!("0.0.0.0:{http}"),
            "--data-dir".into(),
            NODE_DATA_DIR.into(),
        ];
        // Container logs are read as files: no colour codes in them.
        let mut env = vec![format!("RUST_LOG={}", c.log_filter), "NO_COLOR=1".to_string()];
        let mut mounts = vec![json!({
            "Type": "volume",
            "Source": self.volume_name(name),
            "Target": NODE_DATA_DIR,
        })];
        match &c.secret {
            NodeSecret::File(path) => {
                env.push(format!("SHARDGATE_SECRET_FILE={}", path.display()));
                if let Some(dir) = path.parent() {
                    mounts.push(json!({
                        "Type": "volume",
                        "Source": c.secret_volume,
                        "Target": dir.display().to_string(),
                        "ReadOnly": true,
                    }));
                }
            }
            NodeSecret::Insecure => cmd.push("--insecure".into()),
        }
        if let Some(NodeToken(token)) = &c.admin_token {
            env.push(format!("SHARDGATE_ADMIN_TOKEN={token}"));
        }
        json!({
            "Image": c.image,
            "Cmd": cmd,
            "Env": env,
            "Labels": self.labels(name),
            "ExposedPorts": { format!("{http}/tcp"): {}, format!("{binary}/tcp"): {} },
            "StopTimeout": STOP_GRACE.as_secs().max(1),
            "HostConfig": {
                "NetworkMode": c.network,
                "Mounts": mounts,
                "RestartPolicy": { "Name": "no" },
                "LogConfig": {
                    "Type": "json-file",
                    "Config": { "max-size": "10m", "max-file": "2" },
                },
            },
            "NetworkingConfig": {
                "EndpointsConfig": { c.network.clone(): { "Aliases": [name] } },
            },
        })
    }

    async fn start(&self, name: &str) -> Result<Spawned, SpawnError> {
        let err = |detail: String| SpawnError { name: name.to_string(), detail };
        if !valid_name(name) {
            return Err(err("a container name allows only [a-zA-Z0-9_.-]".into()));
        }
        let cname = self.container_name(name);
        // A name has one node: replace whatever still runs under it, ours or left over.
        self.forget(name);
        self.engine.remove_container(&cname).await.map_err(err)?;
        let volume = self.volume_name(name);
        let fresh = !self.engine.volume_exists(&volume).await.map_err(err)?;
        self.engine.create_volume(&volume, &self.labels(name)).await.map_err(err)?;
        match self.start_container(name, &cname).await {
            Ok(s) => {
                tracing::debug!(node = %name, container = %cname, addr = %s.addr, http = %s.http, "node container started");
                Ok(s)
            }
            Err(e) => {
                // A node that never ran leaves no empty volume behind; data of an earlier
                // life stays.
                if fresh {
                    if let Err(rm) = self.engine.remove_volume(&volume).await {
                        tracing::warn!(node = %name, %volume, error = %rm, "cannot remove the volume of a node that failed to start");
                    }
                }
                Err(err(e))
            }
        }
    }

    /// Creates and starts container `cname` of node `name` and waits until it listens; on
    /// failure removes the container and says why, with its last output.
    async fn start_container(&self, name: &str, cname: &str) -> Result<Spawned, String> {
        let ports = self.cfg.ports(self.next_ports.fetch_add(1, Ordering::Relaxed));
        let spec = self.container_spec(name, ports);
        let id = self.engine.create_container(cname, &spec).await.map_err(|e| {
            if e.contains("No such image") {
                format!("{e} (build it with scripts/image.sh)")
            } else {
                e
            }
        })?;
        // From here on the container exists: record it, so stop_all removes it even if the
        // start fails half-way.
        self.started.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string(), id.clone());
        let started = async {
            self.engine.start(&id).await?;
            let ip = self.container_ip(&id).await?;
            let spawned =
                Spawned { addr: SocketAddr::new(ip, ports.1), http: SocketAddr::new(ip, ports.0) };
            self.wait_listening(&id, spawned).await?;
            Ok::<Spawned, String>(spawned)
        };
        let e = match started.await {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let logs = self.engine.logs_tail(&id, FAILED_LOG_LINES).await.unwrap_or_default();
        self.forget(name);
        if let Err(rm) = self.engine.remove_container(&id).await {
            tracing::warn!(node = %name, error = %rm, "cannot remove a node container that failed to start");
        }
        let logs = logs.trim();
        Err(if logs.is_empty() { e } else { format!("{e}; its last output:\n{logs}") })
    }

    /// The container's IP on the spawner's network.
    async fn container_ip(&self, id: &str) -> Result<IpAddr, String> {
        let info = self.engine.inspect(id).await?.ok_or("the container vanished")?;
        let net = &info["NetworkSettings"]["Networks"][&self.cfg.network];
        let ip = net["IPAddress"].as_str().unwrap_or_default();
        ip.parse().map_err(|_| {
            format!("the container has no IP address on network '{}' ({ip:?})", self.cfg.network)
        })
    }

    /// Waits until both ports accept connections; fails early if the container stops.
    async fn wait_listening(&self, id: &str, s: Spawned) -> Result<(), String> {
        let deadline = Instant::now() + NODE_START_TIMEOUT;
        let mut pending: BTreeSet<SocketAddr> = [s.addr, s.http].into();
        let mut probes = 0u32;
        loop {
            for a in pending.clone() {
                let c = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(a));
                if let Ok(Ok(_)) = c.await {
                    pending.remove(&a);
                }
            }
            if pending.is_empty() {
                return Ok(());
            }
            probes += 1;
            // Every half second: a container that exited will never listen.
            if probes.is_multiple_of(10) {
                if let Some(info) = self.engine.inspect(id).await? {
                    if info["State"]["Running"].as_bool() == Some(false) {
                        return Err(format!(
                            "the container exited before listening (status {}, exit code {})",
                            info["State"]["Status"].as_str().unwrap_or("?"),
                            info["State"]["ExitCode"]
                        ));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(format!("not listening on {pending:?} within {NODE_START_TIMEOUT:?}"));
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// Stops then removes container `cname` (data kept).
    async fn stop_and_remove(&self, name: &str, cname: &str) {
        if let Err(e) = self.engine.stop(cname, STOP_GRACE).await {
            tracing::warn!(node = %name, error = %e, "cannot stop node container; removing it");
        }
        if let Err(e) = self.engine.remove_container(cname).await {
            tracing::warn!(node = %name, error = %e, "cannot remove node container");
        }
    }
}

impl Spawner for DockerSpawner {
    fn spawn<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Spawned, SpawnError>> {
        Box::pin(self.start(name))
    }

    fn kill<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.forget(name);
            // Removing by name also finds a container a crashed earlier manager left.
            if let Err(e) = self.engine.remove_container(&self.container_name(name)).await {
                tracing::warn!(node = %name, error = %e, "cannot kill node container");
            }
        })
    }

    fn remove<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.forget(name);
            self.stop_and_remove(name, &self.container_name(name)).await;
            let volume = self.volume_name(name);
            if let Err(e) = self.engine.remove_volume(&volume).await {
                tracing::warn!(node = %name, %volume, error = %e, "cannot delete the data volume of a removed node");
            }
        })
    }

    fn stop_all(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let mut names: Vec<(String, String)> = {
                let mut map = self.started.lock().unwrap_or_else(|e| e.into_inner());
                map.drain().map(|(name, _)| (self.container_name(&name), name)).collect()
            };
            // Also what an earlier life of the manager left behind under this project.
            let label = format!("{LABEL_PROJECT}={}", self.cfg.project);
            match self.engine.containers_labeled(&label).await {
                Ok(found) => {
                    for (_, cname) in found {
                        if !names.iter().any(|(c, _)| *c == cname) {
                            names.push((cname.clone(), cname));
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list node containers"),
            }
            futures::future::join_all(
                names.iter().map(|(cname, name)| self.stop_and_remove(name, cname)),
            )
            .await;
        })
    }

    fn pid(&self, _name: &str) -> Option<u32> {
        None
    }
}

impl std::fmt::Debug for DockerSpawner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.started.lock().map(|c| c.len()).unwrap_or(0);
        f.debug_struct("DockerSpawner")
            .field("socket", &self.cfg.socket)
            .field("image", &self.cfg.image)
            .field("network", &self.cfg.network)
            .field("project", &self.cfg.project)
            .field("containers", &n)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DockerConfig {
        DockerConfig {
            socket: "/var/run/docker.sock".into(),
            image: "shardgate:latest".into(),
            network: "shardgate_net".into(),
            project: "shardgate".into(),
            prefix: String::new(),
            first_port: 20000,
            log_filter: "info".into(),
            secret: NodeSecret::File("/secret/cluster.secret".into()),
            secret_volume: "shardgate_secret".into(),
            admin_token: Some(NodeToken("tok".into())),
        }
    }

    #[test]
    fn names_labels_and_command_of_a_node_container() {
        let s = DockerSpawner::new(DockerConfig { prefix: "t1-".into(), ..cfg() }).unwrap();
        assert_eq!(s.container_name("Server1"), "t1-Server1");
        assert_eq!(s.volume_name("Server1"), "shardgate_node_Server1");
        let spec = s.container_spec("Server1", (20000, 20001));
        assert_eq!(spec["Labels"][LABEL_PROJECT], "shardgate");
        assert_eq!(spec["Labels"][LABEL_SERVER], "Server1");
        let cmd: Vec<&str> =
            spec["Cmd"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(
            cmd,
            [
                "node",
                "--name",
                "Server1",
                "--listen",
                "0.0.0.0:20001",
                "--http",
                "0.0.0.0:20000",
                "--data-dir",
                "/data"
            ]
        );
        assert_eq!(spec["HostConfig"]["Mounts"][0]["Source"], "shardgate_node_Server1");
        // The secret's volume, read-only at the file's directory, and the admin token.
        let secret = &spec["HostConfig"]["Mounts"][1];
        assert_eq!(secret["Source"], "shardgate_secret");
        assert_eq!((&secret["Target"], &secret["ReadOnly"]), (&json!("/secret"), &json!(true)));
        let env: Vec<&str> =
            spec["Env"].as_array().unwrap().iter().flat_map(|v| v.as_str()).collect();
        assert!(env.contains(&"SHARDGATE_SECRET_FILE=/secret/cluster.secret"), "{env:?}");
        assert!(env.contains(&"SHARDGATE_ADMIN_TOKEN=tok"), "{env:?}");
        // Without a secret: --insecure, and no secret volume.
        let open = DockerSpawner::new(DockerConfig {
            secret: NodeSecret::Insecure,
            admin_token: None,
            ..cfg()
        })
        .unwrap();
        let spec = open.container_spec("Server1", (20000, 20001));
        assert_eq!(spec["Cmd"].as_array().unwrap().last().unwrap(), "--insecure");
        assert_eq!(spec["HostConfig"]["Mounts"].as_array().unwrap().len(), 1);
        // A secret file the spawner cannot mount alone.
        let root = DockerConfig { secret: NodeSecret::File("/cluster.secret".into()), ..cfg() };
        assert!(root.validate().unwrap_err().contains("below /"));
        let data =
            DockerConfig { secret: NodeSecret::File("/data/cluster.secret".into()), ..cfg() };
        assert!(data.validate().unwrap_err().contains("outside /data"));
        assert_eq!(spec["HostConfig"]["NetworkMode"], "shardgate_net");
        assert_eq!(
            spec["NetworkingConfig"]["EndpointsConfig"]["shardgate_net"]["Aliases"][0],
            "Server1"
        );
    }

    #[test]
    fn every_container_gets_the_next_port_pair_and_the_range_wraps() {
        let c = DockerConfig { first_port: 65530, ..cfg() };
        assert_eq!(c.port_pairs(), 3);
        assert_eq!(c.ports(0), (65530, 65531));
        assert_eq!(c.ports(2), (65534, 65535));
        assert_eq!(c.ports(3), (65530, 65531));
        assert_eq!(cfg().port_pairs(), PORT_PAIRS);
        let s = DockerSpawner::new(cfg()).unwrap();
        let a = s.cfg.ports(s.next_ports.fetch_add(1, Ordering::Relaxed));
        let b = s.cfg.ports(s.next_ports.fetch_add(1, Ordering::Relaxed));
        assert_ne!(a, b);
        assert!(a.0 >= 20000 && a.1 == a.0 + 1);
    }

    #[test]
    fn bad_settings_are_refused_up_front() {
        assert!(DockerSpawner::new(DockerConfig { project: "-x".into(), ..cfg() }).is_err());
        assert!(DockerSpawner::new(DockerConfig { prefix: "a b".into(), ..cfg() }).is_err());
        assert!(DockerSpawner::new(DockerConfig { first_port: 65533, ..cfg() }).is_err());
        assert!(DockerSpawner::new(DockerConfig { first_port: 0, ..cfg() }).is_err());
        assert!(DockerSpawner::new(DockerConfig { network: String::new(), ..cfg() }).is_err());
        assert!(valid_name("Server123") && valid_name("S.1_a-b") && !valid_name("Server[5]"));
    }

    #[tokio::test]
    async fn a_server_name_docker_refuses_fails_to_spawn_without_the_engine() {
        let s = DockerSpawner::new(DockerConfig { socket: "/nonexistent.sock".into(), ..cfg() })
            .unwrap();
        let e = s.spawn("bad name").await.unwrap_err();
        assert!(e.detail.contains("container name"), "{e}");
        let e = s.spawn("Server1").await.unwrap_err();
        assert!(e.detail.contains("/nonexistent.sock"), "{e}");
    }
}
