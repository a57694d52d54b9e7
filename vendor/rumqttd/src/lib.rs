// Vendored dependency (see PROOFLINE.md): its own code style is not linted here.
#![allow(warnings, clippy::all)]
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::{collections::HashMap, path::Path};

use serde::{Deserialize, Serialize};
use tracing_subscriber::{
    filter::EnvFilter,
    fmt::{
        format::{Format, Pretty},
        Layer,
    },
    layer::Layered,
    reload::Handle,
    Registry,
};

pub use link::alerts;
pub use link::local;
pub use link::meters;
pub use router::{Alert, IncomingMeter, Meter, Notification, OutgoingMeter};
use segments::Storage;
pub use server::Broker;
#[cfg(feature = "use-rustls")]
pub use server::{check_crl_file, CrlError, CrlSummary};

use self::router::shared_subs::Strategy;

mod limits;
mod link;
pub mod protocol;
mod router;
mod segments;
mod server;

pub type ConnectionId = usize;
pub type RouterId = usize;
pub type NodeId = usize;
pub type Topic = String;
pub type Filter = String;
pub type TopicId = usize;
pub type Offset = (u64, u64);
pub type Cursor = (u64, u64);

pub type ClientId = String;
pub type AuthUser = String;
pub type AuthPass = String;
pub type AuthHandler = Arc<dyn Fn(ClientId, AuthUser, AuthPass) -> bool + Send + Sync + 'static>;

/// Who a connection is, as far as the broker knows at CONNECT: the client id it asked for, the
/// username it sent, and the names of its verified TLS client certificate (subject CN and DNS
/// SANs; empty on a listener without client certificates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub client_id: String,
    pub username: Option<String>,
    pub cert_names: Vec<String>,
}

/// What a client asks to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// PUBLISH to a topic (also asked at CONNECT for the will topic).
    Publish,
    /// SUBSCRIBE to a filter.
    Subscribe,
}

/// Authentication and topic authorization for a listener. When set in
/// [`ConnectionSettings::authorizer`] it replaces `auth` and `external_auth`: every CONNECT is
/// asked to [`Authorizer::connect`] (a client without username and password too, so a TLS
/// client certificate can be the credential), the will topic and every PUBLISH topic and
/// SUBSCRIBE filter are asked to [`Authorizer::allow`] with the connection's identity, at the
/// time of each packet (so a change of rights applies to connected clients too). A refused
/// will refuses the CONNECT, a refused PUBLISH disconnects the client (MQTT 3.1.1 §3.3.5), a
/// refused SUBSCRIBE filter gets the failure return code (0x80) in the SUBACK.
pub trait Authorizer: Send + Sync + 'static {
    fn connect(&self, identity: &Identity, password: Option<&str>) -> bool;
    fn allow(&self, identity: &Identity, access: Access, topic: &str) -> bool;
}

/// A connection's identity bound to the authorizer that judges it.
#[derive(Clone)]
pub struct Authorization {
    pub identity: Identity,
    pub authorizer: Arc<dyn Authorizer>,
}

impl Authorization {
    pub fn allow(&self, access: Access, topic: &str) -> bool {
        self.authorizer.allow(&self.identity, access, topic)
    }
}

impl fmt::Debug for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authorization")
            .field("identity", &self.identity)
            .finish()
    }
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct Config {
    pub id: usize,
    pub router: RouterConfig,
    pub v4: Option<HashMap<String, ServerSettings>>,
    pub v5: Option<HashMap<String, ServerSettings>>,
    pub ws: Option<HashMap<String, ServerSettings>>,
    pub cluster: Option<ClusterSettings>,
    pub console: Option<ConsoleSettings>,
    pub bridge: Option<BridgeConfig>,
    pub prometheus: Option<PrometheusSetting>,
    pub metrics: Option<HashMap<MetricType, MetricSettings>>,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct PrometheusSetting {
    #[deprecated(note = "Use listen instead")]
    port: Option<u16>,
    listen: Option<SocketAddr>,
    // How frequently to update metrics
    interval: u64,
}

// TODO: Change names without _ until config-rs issue is resolved
// https://github.com/mehcode/config-rs/issues/369
#[derive(Debug, Serialize, Deserialize, Clone)]
#[serde(untagged)]
pub enum TlsConfig {
    Rustls {
        capath: Option<String>,
        certpath: String,
        keypath: String,
        /// Certificate revocation lists for the client certificates (PEM or DER), issued by
        /// the CA in `capath`. Re-read when the file changes; while it is unusable or past its
        /// `nextUpdate`, new TLS connections are refused, and connected clients whose
        /// certificate it revokes are disconnected.
        #[serde(default)]
        crlpath: Option<String>,
    },
    NativeTls {
        pkcs12path: String,
        pkcs12pass: String,
    },
}

impl TlsConfig {
    // Returns true only if all of the file paths inside `TlsConfig` actually exists on file system.
    // NOTE: This doesn't verify if certificate files are in required format or not.
    pub fn validate_paths(&self) -> bool {
        match self {
            TlsConfig::Rustls {
                capath,
                certpath,
                keypath,
                crlpath,
            } => {
                let ca = capath.is_none() || capath.as_ref().is_some_and(|v| Path::new(v).exists());
                let crl =
                    crlpath.is_none() || crlpath.as_ref().is_some_and(|v| Path::new(v).exists());

                ca && crl && [certpath, keypath].iter().all(|v| Path::new(v).exists())
            }
            TlsConfig::NativeTls { pkcs12path, .. } => Path::new(pkcs12path).exists(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct ServerSettings {
    pub name: String,
    pub listen: SocketAddr,
    pub tls: Option<TlsConfig>,
    pub next_connection_delay_ms: u64,
    pub connections: ConnectionSettings,
    /// Most connections open on this listener at once, counted from `accept()` (so the ones
    /// still in the TLS handshake or before CONNECT count too); more are closed at once.
    #[serde(default)]
    pub max_connections: Option<usize>,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct BridgeConfig {
    pub name: String,
    pub addr: String,
    pub qos: u8,
    pub sub_path: Filter,
    pub reconnection_delay: u64,
    pub ping_delay: u64,
    pub connections: ConnectionSettings,
    #[serde(default)]
    pub transport: Transport,
}

#[derive(Serialize, Deserialize, Clone)]
pub struct ConnectionSettings {
    pub connection_timeout_ms: u16,
    pub max_payload_size: usize,
    pub max_inflight_count: usize,
    pub auth: Option<HashMap<String, String>>,
    #[serde(skip)]
    pub external_auth: Option<AuthHandler>,
    #[serde(default)]
    pub dynamic_filters: bool,
    /// Most connections open at once from one source address; more are closed at once.
    #[serde(default)]
    pub max_connections_per_ip: Option<usize>,
    /// Longest client id accepted in CONNECT, in bytes (longer ones are refused).
    #[serde(default)]
    pub max_client_id_len: Option<usize>,
    /// Longest keep-alive accepted in CONNECT, in seconds (longer ones are refused, as
    /// MQTT 3.1.1 cannot tell a client to use a shorter one). A keep-alive of 0 (none) is
    /// always refused.
    #[serde(default)]
    pub max_keep_alive_secs: Option<u16>,
    /// Authentication and topic authorization (see [`Authorizer`]); replaces `auth` and
    /// `external_auth` when set.
    #[serde(skip)]
    pub authorizer: Option<Arc<dyn Authorizer>>,
}

impl fmt::Debug for ConnectionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionSettings")
            .field("connection_timeout_ms", &self.connection_timeout_ms)
            .field("max_payload_size", &self.max_payload_size)
            .field("max_inflight_count", &self.max_inflight_count)
            .field("auth", &self.auth)
            .field("external_auth", &self.external_auth.is_some())
            .field("dynamic_filters", &self.dynamic_filters)
            .field("max_connections_per_ip", &self.max_connections_per_ip)
            .field("max_client_id_len", &self.max_client_id_len)
            .field("max_keep_alive_secs", &self.max_keep_alive_secs)
            .field("authorizer", &self.authorizer.is_some())
            .finish()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterSettings {
    /// Id with which this node connects to other nodes of the mesh
    pub node_id: NodeId,
    /// Address on which this broker is listening for mesh connections
    pub listen: String,
    /// Address of clusters that this node has to initiate connection
    pub seniors: Vec<(ConnectionId, String)>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct RouterConfig {
    pub max_connections: usize,
    pub max_outgoing_packet_count: u64,
    pub max_segment_size: usize,
    pub max_segment_count: usize,
    pub custom_segment: Option<HashMap<String, SegmentConfig>>,
    pub initialized_filters: Option<Vec<Filter>>,
    // defaults to Round Robin
    #[serde(default)]
    pub shared_subscriptions_strategy: Strategy,
    /// When set, a retained PUBLISH is kept only if its topic matches one of these filters;
    /// on other topics it is forwarded as a normal message and not kept.
    #[serde(default)]
    pub retained_topic_filters: Option<Vec<Filter>>,
    /// Most retained messages kept; a new retained topic beyond it is not kept.
    #[serde(default)]
    pub max_retained_messages: Option<usize>,
    /// Most bytes (topic + payload) of retained messages kept; a retained message that would
    /// exceed it is not kept.
    #[serde(default)]
    pub max_retained_bytes: Option<usize>,
    /// Most disconnected clients whose session state (or, for clean sessions, connection
    /// events) is kept for their return; the oldest are dropped beyond it.
    #[serde(default)]
    pub max_saved_sessions: Option<usize>,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct SegmentConfig {
    pub max_segment_size: usize,
    pub max_segment_count: usize,
}

type ReloadHandle = Handle<EnvFilter, Layered<Layer<Registry, Pretty, Format<Pretty>>, Registry>>;

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ConsoleSettings {
    pub listen: String,
    #[serde(skip)]
    filter_handle: Option<ReloadHandle>,
}

impl ConsoleSettings {
    pub fn set_filter_reload_handle(&mut self, handle: ReloadHandle) {
        self.filter_handle.replace(handle);
    }
}

#[derive(Debug, Serialize, Deserialize, Clone, Default)]
pub enum Transport {
    #[serde(rename = "tcp")]
    #[default]
    Tcp,
    #[serde(rename = "tls")]
    Tls {
        ca: PathBuf,
        client_auth: Option<ClientAuth>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientAuth {
    certs: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Serialize, Deserialize, Clone, Hash, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MetricType {
    Meters,
    Alerts,
}

#[derive(Debug, Serialize, Deserialize, Clone)]
pub struct MetricSettings {
    push_interval: u64,
}
