//! A plant in a test: a hub (in-process or as a process) with its embedded broker on a free
//! loopback port, and stations whose ledgers are filled with synthetic results and forwarded
//! by the real forwarder.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use proofline_agent::forward::{ForwardPlan, HubSection};
use proofline_agent::station::Metrics;
use proofline_common::mqtt::MqttSection;
use proofline_common::note::NoteSigner;
use proofline_common::record::now_micros;
use proofline_common::store::{Access, Entry, Store, StoreOptions};
use proofline_common::synth::inspection_result;
use proofline_common::writer::{spawn_writer, LedgerHandle, WriterConfig, WriterThread};
use proofline_common::Origin;
use proofline_hub::config::HubConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

pub const SITE: &str = "plant-1";

/// A free loopback port (bound and released; the broker binds it right after).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The data directory of the hub serving the API on each port, so that [`http_get`] can sign its
/// requests with that hub's local token (`accounts/local.token`, rewritten at every start).
static API_DATA: std::sync::Mutex<Vec<(u16, PathBuf)>> = std::sync::Mutex::new(Vec::new());

pub fn register_api(port: u16, data_dir: &Path) {
    let mut v = API_DATA.lock().unwrap_or_else(|p| p.into_inner());
    v.retain(|(p, _)| *p != port);
    v.push((port, data_dir.to_owned()));
}

/// The local token of the hub serving `addr`, if known and written.
pub fn api_token(addr: SocketAddr) -> Option<String> {
    let dir = API_DATA
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .find(|(p, _)| *p == addr.port())
        .map(|(_, d)| d.clone())?;
    std::fs::read_to_string(dir.join("accounts/local.token"))
        .ok()
        .map(|t| t.trim().to_owned())
}

/// Keys and directories of a plant.
pub struct Plant {
    pub dir: PathBuf,
    pub hub_key: PathBuf,
    pub hub_data: PathBuf,
    pub cosigner: String,
    pub broker_port: u16,
}

impl Plant {
    pub fn new(dir: &Path) -> Plant {
        let hub_key = dir.join("hub.key");
        let signer =
            proofline_common::keyfile::generate(&Origin::hub(SITE).unwrap(), &hub_key).unwrap();
        let hub_data = dir.join("hub");
        std::fs::create_dir_all(&hub_data).unwrap();
        Plant {
            dir: dir.to_owned(),
            hub_key,
            hub_data,
            cosigner: signer.cosignature_verifier().to_string(),
            broker_port: free_port(),
        }
    }

    /// A station key, enrolled in the hub's configuration by [`Plant::hub_toml`].
    pub fn station_key(&self, agent_id: &str) -> NoteSigner {
        let path = self.dir.join(format!("{agent_id}.key"));
        if path.exists() {
            return proofline_common::keyfile::load(&path).unwrap().0;
        }
        let origin = Origin::parse(&format!("proofline/{SITE}/{agent_id}")).unwrap();
        proofline_common::keyfile::generate(&origin, &path).unwrap()
    }

    /// Hub configuration: embedded broker (or `external`), API on `api_port` (0: any).
    pub fn hub_toml(&self, agents: &[&str], external: Option<&str>, api_port: u16) -> String {
        if api_port != 0 {
            register_api(api_port, &self.hub_data);
        }
        let mut t = format!(
            "[hub]\nsite = \"{SITE}\"\ndata_dir = \"{}\"\nkey_file = \"{}\"\n[api]\nlisten = \"127.0.0.1:{api_port}\"\n[witness]\nstale_after_secs = 5\ngap_alert_after_secs = 5\n",
            self.hub_data.display(),
            self.hub_key.display()
        );
        for a in agents {
            self.station_secret(a);
        }
        match external {
            None => t.push_str(&format!(
                "[broker]\nlisten = \"127.0.0.1:{}\"\n",
                self.broker_port
            )),
            Some(b) => {
                let secret = hub_mqtt_secret(&self.dir);
                t.push_str(&format!(
                    "[broker]\ntype = \"external\"\n[mqtt]\nbroker = \"{b}\"\nreconnect_max_ms = 1000\nusername = \"{}\"\npassword_file = \"{}\"\n",
                    proofline_hub::acl::hub_client_id(SITE),
                    secret.display()
                ));
                mosquitto_auth(&self.dir, Some(&self.hub_data));
            }
        }
        for a in agents {
            let key = self.station_key(a).verifier().to_string();
            t.push_str(&format!("[[agent]]\nagent_id = \"{a}\"\nkey = \"{key}\"\n"));
        }
        t
    }

    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.broker_port)
    }

    /// The file holding a station's broker secret, issued (its hash in the hub's data
    /// directory, as `proofline-hub agent credential` does) the first time it is asked for.
    pub fn station_secret(&self, agent_id: &str) -> PathBuf {
        let path = self.dir.join(format!("{agent_id}.secret"));
        if !path.exists() {
            let secret = proofline_hub::acl::issue_credential(&self.hub_data, agent_id).unwrap();
            proofline_hub::acl::write_secret_file(&path, &secret).unwrap();
        }
        path
    }

    pub fn hub_section(&self, broker: &str, heartbeat_secs: u64) -> HubSection {
        let mut mqtt = MqttSection::plain(broker);
        mqtt.reconnect_max_ms = 1000;
        HubSection {
            cosigner_key: self.cosigner.clone(),
            mqtt,
            batch_max_bytes: 64 * 1024,
            max_inflight_batches: 8,
            heartbeat_secs,
            ack_timeout_secs: 5,
        }
    }
}

/// A hub running in-process.
pub struct Hub {
    pub api: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Hub {
    pub async fn start(toml: &str) -> Hub {
        Hub::start_with(toml, false).await
    }

    /// A hub whose embedded broker lets anyone in anywhere, as a broker in an attacker's hands
    /// would: for the tests that the hub itself trusts nothing it did not verify.
    pub async fn start_unlocked(toml: &str) -> Hub {
        Hub::start_with(toml, true).await
    }

    async fn start_with(toml: &str, unlocked_broker: bool) -> Hub {
        if let Some(level) = std::env::var("PROOFLINE_LOG")
            .ok()
            .and_then(|l| l.parse::<tracing::Level>().ok())
        {
            let _ = tracing_subscriber::fmt()
                .with_max_level(level)
                .with_test_writer()
                .try_init();
        }
        let cfg = HubConfig::parse(toml).unwrap();
        assert!(cfg.problems().is_empty(), "{:?}", cfg.problems());
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let plan = proofline_hub::plan::HubPlan::build(&cfg).unwrap();
        let task = tokio::spawn(proofline_hub::run::run(
            plan,
            shutdown.clone(),
            proofline_hub::run::RunOptions {
                ready: Some(tx),
                unlocked_broker,
                ..Default::default()
            },
        ));
        let api = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .unwrap()
            .unwrap()
            .api;
        register_api(api.port(), &cfg.hub.data_dir);
        Hub {
            api,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// A station: its ledger writer and forwarder, fed synthetic results by the test.
pub struct Station {
    pub agent_id: String,
    pub ledger: LedgerHandle,
    pub writer: Option<WriterThread>,
    pub cosigned: tokio::sync::watch::Receiver<u64>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
    pub data: PathBuf,
}

impl Station {
    /// A station that has no broker login in `hub` gets its credential from the plant.
    pub fn start(plant: &Plant, agent_id: &str, mut hub: HubSection) -> Station {
        if hub.mqtt.username.is_none() {
            hub.mqtt.password_file = Some(plant.station_secret(agent_id));
            hub.mqtt.username = Some(agent_id.to_owned());
        }
        let signer = plant.station_key(agent_id);
        let data = plant.dir.join(agent_id);
        std::fs::create_dir_all(&data).unwrap();
        let origin = Origin::parse(&format!("proofline/{SITE}/{agent_id}")).unwrap();
        let (store, _) =
            Store::open(&data, Access::Write(origin), &StoreOptions::default()).unwrap();
        let start = store.cosigned().cloned();
        let (ledger, writer) = spawn_writer(store, WriterConfig::default()).unwrap();
        let plan = ForwardPlan::new(&hub, signer, SITE, agent_id).unwrap();
        let metrics = Arc::new(Metrics::default());
        let (tx, rx) = tokio::sync::watch::channel(start.as_ref().map_or(0, |c| c.size));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(proofline_agent::forward::run(
            plan,
            ledger.clone(),
            start,
            Arc::clone(&metrics),
            tx,
            tokio::sync::watch::channel(None).1,
            shutdown.clone(),
        ));
        Station {
            agent_id: agent_id.into(),
            ledger,
            writer: Some(writer),
            cosigned: rx,
            metrics,
            shutdown,
            task,
            data,
        }
    }

    /// Appends `n` synthetic results, `per_commit` per durable commit.
    pub async fn produce(&self, n: u64, per_commit: u64) {
        let base = self.ledger.head().size;
        let mut i = 0;
        while i < n {
            let k = per_commit.min(n - i);
            let entries = (0..k)
                .map(|j| Entry {
                    received_at: now_micros(),
                    body: inspection_result(base + i + j, 64),
                })
                .collect();
            self.ledger.append(entries).await.unwrap();
            i += k;
        }
    }

    /// Waits until the hub has cosigned the whole ledger.
    pub async fn wait_cosigned(&mut self, within: Duration) {
        let want = self.ledger.head().size;
        let ok = tokio::time::timeout(within, self.cosigned.wait_for(|s| *s >= want))
            .await
            .is_ok();
        assert!(
            ok,
            "{}: cosigned {} of {want}",
            self.agent_id,
            *self.cosigned.borrow()
        );
    }

    /// Stops the forwarder and the writer; returns the data directory.
    pub async fn stop(mut self) -> PathBuf {
        self.shutdown.cancel();
        let _ = self.task.await;
        drop(self.ledger);
        let w = self.writer.take().unwrap();
        tokio::task::spawn_blocking(move || drop(w.join()))
            .await
            .unwrap();
        self.data
    }
}

/// GET `path` from `addr`; returns status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let auth = api_token(addr)
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub async fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
}

/// Size the hub reports for `agent`.
pub async fn hub_size(api: SocketAddr, agent: &str) -> u64 {
    let v = get_json(api, "/api/v1/agents").await;
    v.as_array()
        .unwrap()
        .iter()
        .find(|a| a["agent_id"] == agent)
        .and_then(|a| a["size"].as_u64())
        .unwrap_or(0)
}

pub async fn alerts(api: SocketAddr) -> Vec<serde_json::Value> {
    get_json(api, "/api/v1/alerts")
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// Polls `f` every 100 ms until it returns true or `within` passes.
pub async fn until<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every record of the (stopped) station ledger in `data`.
pub fn station_records(data: &Path) -> Vec<proofline_common::record::Record> {
    let (store, _) = Store::open(data, Access::Read, &StoreOptions::default()).unwrap();
    let head = store.head().size;
    store
        .reader()
        .range(0..head)
        .map(|r| proofline_common::record::Record::decode(&r.unwrap().1).unwrap())
        .collect()
}

/// The codes and messages of the alarms in the (stopped) ledger in `data`.
#[allow(dead_code)]
pub fn alarms(data: &Path) -> Vec<(String, String)> {
    station_records(data)
        .into_iter()
        .filter_map(|r| match r.body() {
            proofline_common::record::Body::StationEvent(
                proofline_common::record::StationEvent::Alarm(a),
            ) => Some((a.code.clone(), a.message.clone())),
            _ => None,
        })
        .collect()
}

/// Writes a new ledger for `agent_id` in `dst` from the first `keep` records of the ledger in
/// `src`, with the receive time of record `modify` changed: what a forger with the disk and the
/// station key can make. Everything else (origin, seq, boot, bodies) is kept, so untouched
/// records before `modify` stay byte-identical.
pub fn forge(src: &Path, dst: &Path, agent_id: &str, keep: u64, modify: Option<u64>) {
    let mut originals = station_records(src);
    originals.truncate(keep as usize);
    std::fs::create_dir_all(dst).unwrap();
    let origin = Origin::parse(&format!("proofline/{SITE}/{agent_id}")).unwrap();
    let (mut out, _) = Store::open(dst, Access::Write(origin), &StoreOptions::default()).unwrap();
    assert_eq!(
        out.boot(),
        originals.first().map_or(1, |r| r.v1().boot),
        "forged ledger keeps the boot"
    );
    for r in originals {
        let r = r.v1();
        let received_at = if Some(r.seq) == modify {
            r.received_at + 1_000_000
        } else {
            r.received_at
        };
        out.append(&[Entry {
            received_at,
            body: r.body.clone(),
        }])
        .unwrap();
    }
}

/// Waits for an alert of `kind` about `agent`; returns it.
pub async fn wait_alert(
    api: SocketAddr,
    kind: &str,
    agent: &str,
    within: Duration,
) -> Option<serde_json::Value> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(a) = alerts(api).await.into_iter().find(|a| {
            // Messages from ids no station has fold into one entry, `*`, with a sample.
            a["kind"] == kind
                && (a["agent_id"] == agent
                    || (a["agent_id"] == "*"
                        && a["sample"]
                            .as_array()
                            .is_some_and(|s| s.iter().any(|x| x == agent))))
        }) {
            return Some(a);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies a directory tree (a stopped station's data: its "old disk image").
pub fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).unwrap();
        }
    }
}

/// A Mosquitto broker on a free loopback port, stopped when dropped.
pub struct Mosquitto {
    pub port: u16,
    pub conf: PathBuf,
    child: std::process::Child,
}

impl Mosquitto {
    /// Starts one, or returns None (with the reason printed) when mosquitto is not installed and
    /// PROOFLINE_REQUIRE_PEERS is not set.
    pub fn start(dir: &Path) -> Option<Mosquitto> {
        Mosquitto::start_with(dir, false)
    }

    /// A Mosquitto that lets anyone in anywhere (no ACL, anonymous clients welcome; the hub's
    /// and the stations' logins still work): a broker in an attacker's hands, for the tests that
    /// the hub and the stations trust nothing they did not verify.
    pub fn start_open(dir: &Path) -> Option<Mosquitto> {
        Mosquitto::start_with(dir, true)
    }

    fn start_with(dir: &Path, open: bool) -> Option<Mosquitto> {
        let found = std::process::Command::new("mosquitto")
            .arg("-h")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok();
        if !found {
            assert!(
                std::env::var_os("PROOFLINE_REQUIRE_PEERS").is_none(),
                "mosquitto is required (PROOFLINE_REQUIRE_PEERS is set) but not installed"
            );
            eprintln!(
                "skipped: mosquitto is not installed (CI installs it: apt-get install mosquitto)"
            );
            return None;
        }
        let port = free_port();
        let conf = dir.join("mosquitto.conf");
        // As `proofline-hub broker-config` writes it: every client authenticates, rights from
        // the ACL file (the fixture keeps the files current as stations get credentials).
        let mut auth = mosquitto_auth(dir, None);
        if open {
            auth = auth
                .lines()
                .filter(|l| !l.starts_with("acl_file") && !l.starts_with("use_username"))
                .map(|l| l.replace("allow_anonymous false", "allow_anonymous true") + "\n")
                .collect();
        }
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\npersistence false\nmax_inflight_messages 100\nmax_queued_messages 100000\n{auth}"),
        )
        .unwrap();
        let starts = mosquitto_starts(&dir.join("mosquitto.log"));
        let child = Mosquitto::spawn(&conf, dir);
        wait_mosquitto_running(&dir.join("mosquitto.log"), starts + 1);
        let ok = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            ok,
            "mosquitto did not start; see {}",
            dir.join("mosquitto.log").display()
        );
        Some(Mosquitto { port, conf, child })
    }

    pub fn spawn(conf: &Path, dir: &Path) -> std::process::Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("mosquitto.log"))
            .unwrap();
        std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    pub fn broker(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Rewrites the password and ACL files from the plant's enrollments and has Mosquitto read
    /// them again (SIGHUP), as an operator does after an enrollment change.
    pub fn reload(&self, plant: &Plant) {
        mosquitto_auth(&plant.dir, Some(&plant.hub_data));
        sighup(self.child.id());
    }
}

/// Waits until the Mosquitto logging to `log` has started `n` times ("running" logged: its
/// signal handlers are set, so a SIGHUP reloads rather than kills it).
pub fn wait_mosquitto_running(log: &Path, n: usize) {
    let ok = (0..200).any(|_| {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(" running").count() >= n {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
        false
    });
    assert!(ok, "mosquitto did not start; see {}", log.display());
}

/// Number of times the Mosquitto logging to `log` has started so far.
pub fn mosquitto_starts(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(" running")
        .count()
}

/// Sends SIGHUP to a process (Mosquitto reloads its password and ACL files).
pub fn sighup(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status();
}

/// The hub's secret at an external broker (created once per plant directory).
pub fn hub_mqtt_secret(dir: &Path) -> PathBuf {
    let path = dir.join("hub-mqtt.secret");
    if !path.exists() {
        proofline_hub::acl::write_secret_file(&path, &proofline_hub::acl::new_secret()).unwrap();
    }
    path
}

/// Writes `dir/mosquitto-auth/{passwd,acl}` for the hub and the stations with a credential in
/// `hub_data` (none yet: the hub only); returns the mosquitto.conf lines naming them.
pub fn mosquitto_auth(dir: &Path, hub_data: Option<&Path>) -> String {
    let out = dir.join("mosquitto-auth");
    std::fs::create_dir_all(&out).unwrap();
    let secret = std::fs::read_to_string(hub_mqtt_secret(dir)).unwrap();
    let stations = match hub_data {
        Some(d) => {
            let with_credentials = std::fs::read_dir(d.join("enrolled"))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_suffix(".cred")
                        .map(str::to_owned)
                })
                .collect();
            proofline_hub::acl::allowed_stations(d, SITE, &with_credentials)
        }
        None => Default::default(),
    };
    let files = proofline_hub::acl::mosquitto_files(
        SITE,
        &proofline_hub::acl::hash_secret(secret.trim()),
        &stations,
        &out.join("passwd"),
        &out.join("acl"),
        None,
    );
    std::fs::write(out.join("passwd"), files.passwords).unwrap();
    std::fs::write(out.join("acl"), files.acl).unwrap();
    files.conf
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which broker a test runs against.
pub enum Via {
    Embedded,
    Mosquitto(Mosquitto),
}

impl Via {
    /// The embedded broker, or a Mosquitto when `mosquitto` is true (None: skipped).
    pub fn new(mosquitto: bool, dir: &Path) -> Option<Via> {
        if mosquitto {
            Mosquitto::start(dir).map(Via::Mosquitto)
        } else {
            Some(Via::Embedded)
        }
    }

    /// As [`Via::new`], with a broker that lets anyone in anywhere (see
    /// [`Mosquitto::start_open`]; start the hub with [`Via::start_hub`] and `open`).
    pub fn new_open(mosquitto: bool, dir: &Path) -> Option<Via> {
        if mosquitto {
            Mosquitto::start_open(dir).map(Via::Mosquitto)
        } else {
            Some(Via::Embedded)
        }
    }

    /// Starts the hub on this broker; `open`: an embedded broker that lets anyone in anywhere.
    pub async fn start_hub(&self, toml: &str, open: bool) -> Hub {
        match self {
            Via::Embedded if open => Hub::start_unlocked(toml).await,
            _ => Hub::start(toml).await,
        }
    }

    /// What the station connects to.
    pub fn broker(&self, plant: &Plant) -> String {
        match self {
            Via::Embedded => plant.broker(),
            Via::Mosquitto(m) => m.broker(),
        }
    }

    pub fn hub_toml(&self, plant: &Plant, agents: &[&str], api_port: u16) -> String {
        match self {
            Via::Embedded => plant.hub_toml(agents, None, api_port),
            Via::Mosquitto(m) => {
                let toml = plant.hub_toml(agents, Some(&m.broker()), api_port);
                m.reload(plant);
                toml
            }
        }
    }
}
