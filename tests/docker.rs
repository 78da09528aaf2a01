//! The Docker deployment end to end (issue 9), on the machine's Docker engine: the image
//! (`scripts/image.sh`), the compose stack (`docker-compose.yml`: manager + router, nodes
//! started by the manager's docker spawner), the contract's stage-1 and stage-2 examples
//! through the published port, a `docker kill`ed node replaced under its name, a primary cut
//! off its network (`docker network disconnect`) replaced by an election with no
//! acknowledged write lost, and a teardown that leaves no container, network or volume.
//!
//! Runs only when `docker info` succeeds (and `docker-compose` exists); otherwise it says
//! so on stderr and passes. `SHARDGATE_DOCKER_TEST=0` skips it too. Every run uses its own
//! compose project (`sgtest<pid>`), container prefix and free host ports, so it never
//! touches a deployment of `make up`; a guard tears the stack down even when the test fails.

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value as Json};

use common::{poll, try_http};

/// The image the test builds and runs.
const IMAGE: &str = "shardgate:latest";
/// Limit on the stack's first answer to `/rep` (the manager starts 3 node containers).
const STACK_READY: Duration = Duration::from_secs(90);
/// Limit on a replacement or an election to show.
const FAILOVER: Duration = Duration::from_secs(60);
/// Limit on one request through the router.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A line on the real stderr, shown even when the test harness captures output.
fn say(msg: &str) {
    let _ = writeln!(std::io::stderr().lock(), "docker test: {msg}");
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a command to completion; its stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String, String> {
    let what = format!("{cmd:?}");
    let out: Output = cmd.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn docker(args: &[&str]) -> Result<String, String> {
    run(Command::new("docker").args(args))
}

/// Why the test cannot run here, if it cannot.
fn skip_reason() -> Option<String> {
    if std::env::var("SHARDGATE_DOCKER_TEST").is_ok_and(|v| v == "0") {
        return Some("SHARDGATE_DOCKER_TEST=0".into());
    }
    if let Err(e) = docker(&["info", "--format", "{{.ServerVersion}}"]) {
        return Some(format!("`docker info` failed, no Docker engine here ({})", e.trim()));
    }
    if let Err(e) = run(Command::new("docker-compose").arg("version")) {
        return Some(format!("`docker-compose version` failed ({})", e.trim()));
    }
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// One compose deployment of the test; torn down (volumes included) on drop.
struct Stack {
    project: String,
    prefix: String,
    http: SocketAddr,
    binary_port: u16,
    down: bool,
}

impl Stack {
    fn compose(&self) -> Command {
        let mut c = Command::new("docker-compose");
        c.current_dir(repo())
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .env("SHARDGATE_PROJECT", &self.project)
            .env("SHARDGATE_IMAGE", IMAGE)
            .env("SHARDGATE_PREFIX", &self.prefix)
            .env("SHARDGATE_SERVERS", "3")
            .env("SHARDGATE_HTTP_PORT", self.http.port().to_string())
            .env("SHARDGATE_BINARY_PORT", self.binary_port.to_string())
            .env("RUST_LOG", "info");
        c
    }

    fn up() -> Stack {
        let project = format!("sgtest{}", std::process::id());
        let stack = Stack {
            prefix: format!("{project}-"),
            http: SocketAddr::from(([127, 0, 0, 1], free_port())),
            binary_port: free_port(),
            project,
            down: false,
        };
        // A stack of an earlier run with this pid (killed before its guard ran) goes first.
        if let Err(e) = stack.teardown() {
            say(&format!("cleaning up before the start: {e}"));
        }
        if let Err(e) = run(stack.compose().args(["up", "-d"])) {
            panic!("docker-compose up: {e}");
        }
        stack
    }

    fn network(&self) -> String {
        format!("{}_net", self.project)
    }

    fn container(&self, server: &str) -> String {
        format!("{}{server}", self.prefix)
    }

    /// Id and running state of `server`'s container, if there is one.
    fn container_state(&self, server: &str) -> Option<(String, bool)> {
        let out =
            docker(&["inspect", "--format", "{{.Id}} {{.State.Running}}", &self.container(server)])
                .ok()?;
        let mut words = out.split_whitespace();
        Some((words.next()?.to_string(), words.next()? == "true"))
    }

    /// Names of the node containers labelled with the project.
    fn node_containers(&self) -> Vec<String> {
        let label = format!("label=io.shardgate.project={}", self.project);
        let out = docker(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]);
        let mut names: Vec<String> =
            out.unwrap_or_default().lines().map(|l| l.trim().to_string()).collect();
        names.sort();
        names
    }

    /// What is left of the deployment: containers, networks, volumes.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for label in [
            format!("label=io.shardgate.project={}", self.project),
            format!("label=com.docker.compose.project={}", self.project),
        ] {
            for (kind, list) in [
                ("container", docker(&["ps", "-aq", "--filter", &label])),
                ("network", docker(&["network", "ls", "-q", "--filter", &label])),
                ("volume", docker(&["volume", "ls", "-q", "--filter", &label])),
            ] {
                match list {
                    Ok(ids) => left.extend(ids.split_whitespace().map(|i| format!("{kind} {i}"))),
                    Err(e) => left.push(format!("cannot list {kind}s: {e}")),
                }
            }
        }
        let named = format!("name={}_", self.project);
        if let Ok(ids) = docker(&["network", "ls", "-q", "--filter", &named]) {
            left.extend(ids.split_whitespace().map(|i| format!("network {i}")));
        }
        if let Ok(ids) = docker(&["volume", "ls", "-q", "--filter", &named]) {
            left.extend(ids.split_whitespace().map(|i| format!("volume {i}")));
        }
        left.sort();
        left.dedup();
        left
    }

    /// `scripts/docker-down.sh --volumes` for this project.
    fn teardown(&self) -> Result<(), String> {
        run(Command::new(repo().join("scripts/docker-down.sh"))
            .arg("--volumes")
            .env("SHARDGATE_PROJECT", &self.project)
            .env("SHARDGATE_IMAGE", IMAGE)
            .env("SHARDGATE_HTTP_PORT", self.http.port().to_string())
            .env("SHARDGATE_BINARY_PORT", self.binary_port.to_string()))
        .map(drop)
    }

    /// Tears down and checks that nothing is left.
    fn down(mut self) {
        self.down = true;
        if let Err(e) = self.teardown() {
            panic!("teardown: {e}");
        }
        let left = self.leftovers();
        assert!(left.is_empty(), "left behind after the teardown: {left:?}");
    }

    fn dump_logs(&self) {
        if let Ok(out) = run(self.compose().args(["logs", "--no-color", "--tail", "60"])) {
            say(&format!("logs of the manager and router:\n{out}"));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if self.down {
            return;
        }
        if std::thread::panicking() {
            self.dump_logs();
        }
        if let Err(e) = self.teardown() {
            say(&format!("teardown failed: {e}"));
        }
        let left = self.leftovers();
        if !left.is_empty() {
            say(&format!("left behind after the teardown: {left:?}"));
        }
    }
}

/// One request through the router (a fresh connection), bounded.
async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Json>,
) -> Result<(u16, Json), String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, try_http(addr, method, path, body)).await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(format!("{method} {path}: {e}")),
        Err(_) => Err(format!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// [`call`] that must answer `status` with exactly `want`.
async fn expect(addr: SocketAddr, method: &str, path: &str, body: Option<Json>, want: Json) {
    let status = if want["status"] == "failure" { 400 } else { 200 };
    let got = call(addr, method, path, body).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got, (status, want), "{method} {path}");
}

/// The contract's error answer.
fn failure(message: &str) -> Json {
    json!({"message": format!("<Error> {message}"), "status": "failure"})
}

/// A database endpoint's success answer.
fn success(message: &str) -> Json {
    json!({"message": message, "status": "success"})
}

fn rep(names: &[&str]) -> Json {
    json!({"message": {"N": names.len(), "replicas": names}, "status": "successful"})
}

fn ids_of(rows: &Json) -> Vec<i64> {
    rows.as_array()
        .map(|a| a.iter().filter_map(|r| r["Stud_id"].as_i64()).collect())
        .unwrap_or_default()
}

/// The primary of `shard` in `/status`.
async fn primary_of(addr: SocketAddr, shard: &str) -> Option<String> {
    let (_, status) = call(addr, "GET", "/status", None).await.ok()?;
    let shards = status["shards"].as_array()?;
    let s = shards.iter().find(|s| s["Shard_id"] == shard)?;
    s["primary"].as_str().map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_deployment_end_to_end() {
    if let Some(why) = skip_reason() {
        common::cannot_run(&format!("{why}; nothing was run"));
        return;
    }
    let started = Instant::now();
    let step = |what: &str| say(&format!("{:>6.1}s {what}", started.elapsed().as_secs_f64()));

    step("building the image (scripts/image.sh)");
    if let Err(e) = run(Command::new(repo().join("scripts/image.sh")).env("IMAGE", IMAGE)) {
        panic!("scripts/image.sh: {e}");
    }
    step("docker-compose up");
    let stack = Stack::up();
    let lb = stack.http;

    // Stage 1 (the contract's examples).
    let ready = poll(STACK_READY, || async {
        let (s, body) = call(lb, "GET", "/rep", None).await.ok()?;
        (s == 200 && body == rep(&["Server1", "Server2", "Server3"])).then_some(())
    })
    .await;
    assert!(ready.is_some(), "the router did not list Server1..3 within {STACK_READY:?}");
    step("stack up; stage 1");
    assert_eq!(
        stack.node_containers(),
        ["Server1", "Server2", "Server3"].map(|s| stack.container(s)),
        "node containers are named after their servers"
    );
    let (s, home) = call(lb, "GET", "/home", None).await.unwrap_or_else(|e| panic!("{e}"));
    let msg = home["message"].as_str().unwrap_or_default();
    assert!(s == 200 && msg.starts_with("Hello from Server: Server"), "{home}");
    expect(
        lb,
        "POST",
        "/add",
        Some(json!({"n": 4, "hostnames": ["S5", "S4", "S10", "S11"]})),
        rep(&["Server1", "Server2", "Server3", "S5", "S4", "S10", "S11"]),
    )
    .await;
    assert_eq!(stack.node_containers().len(), 7, "{:?}", stack.node_containers());
    expect(
        lb,
        "POST",
        "/add",
        Some(json!({"n": 2, "hostnames": ["S6", "S7", "S8", "S9"]})),
        failure("Length of hostname list is more than newly added instances"),
    )
    .await;
    let (s, body) = call(lb, "DELETE", "/rm", Some(json!({"n": 3, "hostnames": ["S5", "S4"]})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((s, body["message"]["N"].clone()), (200, json!(4)), "{body}");
    let left: Vec<String> = body["message"]["replicas"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    assert!(!left.iter().any(|n| n == "S5" || n == "S4"), "{body}");
    let mut want: Vec<String> = left.iter().map(|n| stack.container(n)).collect();
    want.sort();
    assert_eq!(stack.node_containers(), want, "removed servers' containers are gone");
    expect(
        lb,
        "DELETE",
        "/rm",
        Some(json!({"n": 1, "hostnames": ["S10", "S11"]})),
        failure("Length of hostname list is more than removable instances"),
    )
    .await;
    expect(
        lb,
        "GET",
        "/other",
        None,
        failure("'/other' endpoint does not exist in server replicas"),
    )
    .await;

    // `docker kill` of a node: replaced under the same name.
    let victim = left.first().cloned().expect("a replica is left");
    step(&format!("docker kill of {victim}"));
    let (old_id, _) = stack.container_state(&victim).expect("the victim's container");
    docker(&["kill", &stack.container(&victim)]).unwrap_or_else(|e| panic!("{e}"));
    let replaced = poll(FAILOVER, || async {
        let (id, running) = stack.container_state(&victim)?;
        (id != old_id && running).then_some(())
    })
    .await;
    assert!(replaced.is_some(), "{victim}'s container was not replaced within {FAILOVER:?}");
    let listed = poll(FAILOVER, || async {
        let (_, body) = call(lb, "GET", "/rep", None).await.ok()?;
        let names = body["message"]["replicas"].as_array()?.clone();
        names.iter().any(|n| *n == *victim).then_some(())
    })
    .await;
    assert!(listed.is_some(), "the router does not list the replaced {victim}");
    step(&format!("{victim} replaced; stage 2"));

    // Stage 2 (the contract's default configuration and its session in the README).
    let config = json!({"N": 6,
        "schema": {"columns": ["Stud_id", "Stud_name", "Stud_marks"],
                   "dtypes": ["Number", "String", "String"]},
        "shards": [{"Stud_id_low": 0, "Shard_id": "sh1", "Shard_size": 4096},
                   {"Stud_id_low": 4096, "Shard_id": "sh2", "Shard_size": 4096},
                   {"Stud_id_low": 8192, "Shard_id": "sh3", "Shard_size": 4096},
                   {"Stud_id_low": 12288, "Shard_id": "sh4", "Shard_size": 4096}],
        "servers": {"Server0": ["sh1", "sh2"], "Server1": ["sh3", "sh4"],
                    "Server3": ["sh1", "sh3"], "Server4": ["sh4", "sh2"],
                    "Server5": ["sh1", "sh4"], "Server6": ["sh3", "sh2"]}});
    expect(lb, "POST", "/init", Some(config.clone()), success("Configured Database")).await;
    for s in ["Server0", "Server4", "Server5", "Server6"] {
        assert!(
            stack.container_state(s).is_some_and(|(_, running)| running),
            "/init started no container for {s}"
        );
    }
    let (s, status) = call(lb, "GET", "/status", None).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s, 200, "{status}");
    assert_eq!(status["N"], 6);
    assert_eq!(status["schema"], config["schema"]);
    assert_eq!(status["servers"], config["servers"]);
    for shard in status["shards"].as_array().expect("shards") {
        assert!(shard["primary"].is_string(), "{shard}");
    }
    expect(
        lb,
        "POST",
        "/write",
        Some(json!({"data": [{"Stud_id": 1000, "Stud_name": "A", "Stud_marks": 50},
                             {"Stud_id": 2255, "Stud_name": "B", "Stud_marks": 27},
                             {"Stud_id": 8889, "Stud_name": "C", "Stud_marks": 70}]})),
        success("3 Data entries added"),
    )
    .await;
    expect(
        lb,
        "POST",
        "/read",
        Some(json!({"Stud_id": {"low": 1000, "high": 8889}})),
        json!({"shards_queried": ["sh1", "sh2", "sh3"],
               "data": [{"Stud_id": 1000, "Stud_name": "A", "Stud_marks": 50},
                        {"Stud_id": 2255, "Stud_name": "B", "Stud_marks": 27},
                        {"Stud_id": 8889, "Stud_name": "C", "Stud_marks": 70}],
               "status": "success"}),
    )
    .await;
    expect(
        lb,
        "PUT",
        "/update",
        Some(json!({"Stud_id": "2255",
                    "data": {"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 30}})),
        success("Data entry for Stud_id: 2255 updated"),
    )
    .await;
    expect(
        lb,
        "DELETE",
        "/del",
        Some(json!({"Stud_id": 8889})),
        success("Data entry with Stud_id:8889 removed from all replicas"),
    )
    .await;
    expect(
        lb,
        "GET",
        "/read/Server0",
        None,
        json!({"sh1": [{"Stud_id": 1000, "Stud_name": "A", "Stud_marks": 50},
                       {"Stud_id": 2255, "Stud_name": "GHI", "Stud_marks": 30}],
               "sh2": [], "status": "success"}),
    )
    .await;
    expect(
        lb,
        "POST",
        "/write",
        Some(json!({"data": [{"Stud_id": 99999, "Stud_name": "X", "Stud_marks": 1}]})),
        failure("Stud_id 99999 is outside every shard's range (row 0)"),
    )
    .await;

    // A primary cut off its network: a new primary is elected; no acknowledged write lost.
    let old_primary = primary_of(lb, "sh1").await.expect("sh1 has a primary");
    step(&format!("docker network disconnect of {old_primary} (primary of sh1) under writes"));
    let acked: Arc<Mutex<Vec<i64>>> = Arc::new(Mutex::new(vec![1000, 2255]));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            // One row per request, ids never reused: an id whose write got no answer may or
            // may not be there, and only acknowledged ones are checked.
            let mut id = 3000;
            while !stop.load(Ordering::Relaxed) && id < 4096 {
                let row = json!({"data": [{"Stud_id": id, "Stud_name": "W", "Stud_marks": 1}]});
                if let Ok((200, _)) = call(lb, "POST", "/write", Some(row)).await {
                    acked.lock().unwrap_or_else(|e| e.into_inner()).push(id);
                }
                id += 1;
            }
        })
    };
    let count = || acked.lock().unwrap_or_else(|e| e.into_inner()).len();
    let before = count();
    assert!(
        poll(FAILOVER, || async { (count() >= before + 10).then_some(()) }).await.is_some(),
        "no write acknowledged before the disconnect"
    );
    let (old_id, _) = stack.container_state(&old_primary).expect("the primary's container");
    docker(&["network", "disconnect", &stack.network(), &stack.container(&old_primary)])
        .unwrap_or_else(|e| panic!("{e}"));
    let cut = Instant::now();
    let new_primary =
        poll(FAILOVER, || async { primary_of(lb, "sh1").await.filter(|p| *p != old_primary) })
            .await
            .unwrap_or_else(|| panic!("no new primary of sh1 within {FAILOVER:?}"));
    step(&format!(
        "{new_primary} elected primary of sh1 {:.1}s after the disconnect",
        cut.elapsed().as_secs_f64()
    ));
    let at_election = count();
    assert!(
        poll(FAILOVER, || async { (count() >= at_election + 10).then_some(()) }).await.is_some(),
        "no write acknowledged after the election"
    );
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("the writer task");
    let acked: Vec<i64> = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (s, read) = call(lb, "POST", "/read", Some(json!({"Stud_id": {"low": 0, "high": 4095}})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s, 200, "{read}");
    let got = ids_of(&read["data"]);
    let lost: Vec<&i64> = acked.iter().filter(|id| !got.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?} ({} acknowledged)", acked.len());

    // The cut-off container was replaced under its name, on its volume, and catches up.
    let back = poll(FAILOVER, || async {
        let (id, running) = stack.container_state(&old_primary)?;
        if id == old_id || !running {
            return None;
        }
        let (s, body) = call(lb, "GET", &format!("/read/{old_primary}"), None).await.ok()?;
        let has = ids_of(&body["sh1"]);
        (s == 200 && acked.iter().all(|id| has.contains(id))).then_some(())
    })
    .await;
    assert!(back.is_some(), "{old_primary} was not replaced or did not catch up on sh1");
    step(&format!(
        "{} acknowledged writes all there; {old_primary} back as a replica; tearing down",
        acked.len()
    ));

    stack.down();
    step("done: no container, network or volume left");
}
