use crate::limits::{Backoff, ConnectionLimits, LogLimiter};
use crate::link::alerts::{self};
use crate::link::console::ConsoleLink;
use crate::link::network::{Network, N};
use crate::link::remote::{self, mqtt_connect, RemoteLink};
use crate::link::{bridge, timer};
use crate::local::LinkBuilder;
use crate::protocol::v4::V4;
use crate::protocol::v5::V5;
use crate::protocol::{Packet, Protocol};
#[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
use crate::server::tls::{self, TLSAcceptor};
use crate::{meters, ConnectionSettings, Meter};
use flume::{RecvError, SendError, Sender};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use tracing::{error, field, info, warn, Instrument};

#[cfg(feature = "websocket")]
use async_tungstenite::tokio::accept_hdr_async;
#[cfg(feature = "websocket")]
use async_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
#[cfg(feature = "websocket")]
use async_tungstenite::tungstenite::http::HeaderValue;
#[cfg(feature = "websocket")]
use ws_stream_tungstenite::WsStream;

use metrics::register_gauge;
use metrics_exporter_prometheus::PrometheusBuilder;
use std::time::Duration;
use std::{io, thread};

use crate::link::console;
use crate::link::local::{self, LinkRx, LinkTx};
use crate::router::{Event, Router};
use crate::{Config, ConnectionId, ServerSettings};
use tokio::net::TcpListener;
use tokio::time::error::Elapsed;
use tokio::{task, time};

#[derive(Debug, thiserror::Error)]
#[error("Acceptor error")]
pub enum Error {
    #[error("I/O {0}")]
    Io(#[from] io::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
    #[error("Certs error = {0}")]
    Certs(#[from] tls::Error),
    #[cfg(feature = "use-rustls")]
    #[error("Certificate revocation list: {0}")]
    Crl(#[from] crate::server::crl::CrlError),
    #[error("Accept error = {0}")]
    Accept(String),
    #[error("Remote error = {0}")]
    Remote(#[from] remote::Error),
    #[error("Invalid configuration")]
    Config(String),
}

pub struct Broker {
    config: Arc<Config>,
    router_tx: Sender<(ConnectionId, Event)>,
}

impl Broker {
    pub fn new(config: Config) -> Broker {
        let config = Arc::new(config);
        let router_config = config.router.clone();
        let router: Router = Router::new(config.id, router_config);

        // Setup cluster if cluster settings are configured.
        match config.cluster.clone() {
            Some(_cluster_config) => {
                // let node_id = cluster_config.node_id;
                // let listen = cluster_config.listen;
                // let seniors = cluster_config.seniors;
                // let mut cluster = RemoteCluster::new(node_id, &listen, seniors);
                // Broker::setup_remote_cluster(&mut router, node_id, &mut cluster);

                // Start router first and then cluster in the background
                let router_tx = router.spawn();
                // cluster.spawn();
                Broker { config, router_tx }
            }
            None => {
                let router_tx = router.spawn();
                Broker { config, router_tx }
            }
        }
    }

    // pub fn new_local_cluster(
    //     config: Config,
    //     node_id: NodeId,
    //     seniors: Vec<(NodeId, Sender<ReplicationData>)>,
    // ) -> (Broker, Sender<ReplicationData>) {
    //     let config = Arc::new(config);
    //     let router_config = config.router.clone();

    //     let mut router = Router::new(config.id, router_config);
    //     let (mut cluster, tx) = LocalCluster::new(node_id, seniors);
    //     Broker::setup_local_cluster(&mut router, node_id, &mut cluster);

    //     // Start router first and then cluster in the background
    //     let router_tx = router.spawn();
    //     cluster.spawn();

    //     (Broker { config, router_tx }, tx)
    // }

    // fn setup_remote_cluster(router: &mut Router, node_id: NodeId, cluster: &mut RemoteCluster) {
    //     // Retrieve pre-configured list of router <-> replica link from router
    //     // and add the link to cluster
    //     let nodes: Vec<NodeId> = (0..MAX_NODES).filter(|v| *v != node_id).collect();
    //     for node_id in nodes {
    //         let link = router.get_replica_handle(node_id);
    //         cluster.add_replica_router_handle(node_id, link);
    //     }
    // }

    // fn setup_local_cluster(router: &mut Router, node_id: NodeId, cluster: &mut LocalCluster) {
    //     // Retrieve pre-configured list of router <-> replica link from router
    //     // and add the link to cluster
    //     let nodes: Vec<NodeId> = (0..MAX_NODES).filter(|v| *v != node_id).collect();
    //     for node_id in nodes {
    //         let link = router.get_replica_handle(node_id);
    //         cluster.add_replica_router_handle(node_id, link);
    //     }
    // }

    // Link to get meters
    pub fn meters(&self) -> Result<meters::MetersLink, meters::LinkError> {
        let link = meters::MetersLink::new(self.router_tx.clone())?;
        Ok(link)
    }

    // Link to get alerts
    pub fn alerts(&self) -> Result<alerts::AlertsLink, alerts::LinkError> {
        let link = alerts::AlertsLink::new(self.router_tx.clone())?;
        Ok(link)
    }

    pub fn link(&self, client_id: &str) -> Result<(LinkTx, LinkRx), local::LinkError> {
        // Register this connection with the router. Router replies with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex. max connection limit).
        let (link_tx, link_rx, _ack) =
            LinkBuilder::new(client_id, self.router_tx.clone()).build()?;
        Ok((link_tx, link_rx))
    }

    /// Proofline patch: runs the v4 servers until `stop` says true, then drops them (their
    /// listeners and every connection) and stops the router thread, so a broker can be stopped
    /// and started again in the same process. If a server stops by itself (its listener cannot
    /// be bound, say), the others are stopped too and the error is returned: the caller never
    /// keeps running with a broker that serves part of its listeners. Metrics, bridge, console
    /// and v5/websocket servers are not started here.
    pub fn run_until(&mut self, stop: tokio::sync::watch::Receiver<bool>) -> Result<(), Error> {
        let Some(v4_config) = self.config.v4.clone() else {
            return Err(Error::Config(
                "run_until serves [v4.x] servers only".to_string(),
            ));
        };
        // Set by the first server that ends by itself; tells the others to stop.
        let (failed_tx, failed_rx) = tokio::sync::watch::channel(None::<String>);
        let failed_tx = Arc::new(failed_tx);
        let mut handles = Vec::new();
        for (_, config) in v4_config {
            let server_thread = thread::Builder::new().name(config.name.clone());
            let name = config.name.clone();
            let mut server = Server::new(config, self.router_tx.clone(), V4);
            let mut stop = stop.clone();
            let mut failed = failed_rx.clone();
            let failed_tx = failed_tx.clone();
            let handle = server_thread.spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                let runtime = match runtime {
                    Ok(r) => r,
                    Err(e) => {
                        error!(error=?e, "cannot start the server's runtime");
                        failed_tx.send_replace(Some(format!("{name}: no runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async {
                    tokio::select! {
                        r = server.start(LinkType::Remote) => {
                            let why = match r {
                                Ok(()) => "stopped".to_string(),
                                Err(e) => e.to_string(),
                            };
                            error!(server = name, error = why, "Server error - V4");
                            failed_tx.send_replace(Some(format!("{name}: {why}")));
                        }
                        _ = stop.wait_for(|s| *s) => {}
                        _ = failed.wait_for(|f| f.is_some()) => {}
                    }
                });
                // Dropping the runtime drops the listener and every connection task.
            })?;
            handles.push(handle);
        }
        for handle in handles {
            let _ = handle.join();
        }
        let _ = self.router_tx.send((0, Event::Shutdown));
        let failed = failed_rx.borrow().clone();
        match failed {
            Some(why) => Err(Error::Accept(why)),
            None => Ok(()),
        }
    }

    #[tracing::instrument(skip(self))]
    pub fn start(&mut self) -> Result<(), Error> {
        if self.config.v4.is_none()
            && self.config.v5.is_none()
            && (cfg!(not(feature = "websocket")) || self.config.ws.is_none())
        {
            return Err(Error::Config(
                "Atleast one server config must be specified, \
                consider adding either of [v4.x]/[v5.x] or [ws.x] (if enabled) in config file."
                    .to_string(),
            ));
        }

        // we don't know which servers (v4/v5/ws) user will spawn
        // so we collect handles for all of the spawned servers
        let mut server_thread_handles = Vec::new();

        if let Some(metrics_config) = self.config.metrics.clone() {
            let timer_thread = thread::Builder::new().name("timer".to_owned());
            let router_tx = self.router_tx.clone();
            timer_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();

                runtime.block_on(async move {
                    timer::start(metrics_config, router_tx).await;
                });
            })?;
        }

        // Spawn bridge in a separate thread.
        if let Some(bridge_config) = self.config.bridge.clone() {
            let bridge_thread = thread::Builder::new().name(bridge_config.name.clone());
            let router_tx = self.router_tx.clone();
            bridge_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();

                runtime.block_on(async move {
                    if let Err(e) = bridge::start(bridge_config, router_tx, V4).await {
                        error!(error=?e, "Bridge Link error");
                    };
                });
            })?;
        }

        // Spawn servers in a separate thread.
        if let Some(v4_config) = &self.config.v4 {
            for (_, config) in v4_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                let mut server = Server::new(config, self.router_tx.clone(), V4);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Remote).await {
                            error!(error=?e, "Server error - V4");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        if let Some(v5_config) = &self.config.v5 {
            for (_, config) in v5_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                let mut server = Server::new(config, self.router_tx.clone(), V5);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Remote).await {
                            error!(error=?e, "Server error - V5");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        #[cfg(not(feature = "websocket"))]
        if self.config.ws.is_some() {
            warn!("websocket feature is disabled, [ws] config will be ignored.");
        }

        #[cfg(feature = "websocket")]
        if let Some(ws_config) = &self.config.ws {
            for (_, config) in ws_config.clone() {
                let server_thread = thread::Builder::new().name(config.name.clone());
                //TODO: Add support for V5 procotol with websockets. Registered in config or on ServerSettings
                let mut server = Server::new(config, self.router_tx.clone(), V4);
                let handle = server_thread.spawn(move || {
                    let mut runtime = tokio::runtime::Builder::new_current_thread();
                    let runtime = runtime.enable_all().build().unwrap();

                    runtime.block_on(async {
                        if let Err(e) = server.start(LinkType::Websocket).await {
                            error!(error=?e, "Server error - WS");
                        }
                    });
                })?;
                server_thread_handles.push(handle)
            }
        }

        if let Some(prometheus_setting) = &self.config.prometheus {
            let timeout = prometheus_setting.interval;
            // If port is specified use it instead of listen.
            // NOTE: This means listen is ignored when `port` is specified.
            // `port` will be removed in future release in favour of `listen`
            let addr = {
                #[allow(deprecated)]
                match prometheus_setting.port {
                    Some(port) => SocketAddr::new("127.0.0.1".parse().unwrap(), port),
                    None => prometheus_setting.listen.unwrap_or(SocketAddr::new(
                        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                        9042,
                    )),
                }
            };
            let metrics_thread = thread::Builder::new().name("Metrics".to_owned());
            let meter_link = self.meters().unwrap();
            metrics_thread.spawn(move || {
                let builder = PrometheusBuilder::new().with_http_listener(addr);
                builder.install().unwrap();

                let total_publishes = register_gauge!("metrics.router.total_publishes");
                let total_connections = register_gauge!("metrics.router.total_connections");
                let failed_publishes = register_gauge!("metrics.router.failed_publishes");
                loop {
                    if let Ok(metrics) = meter_link.recv() {
                        for m in metrics {
                            match m {
                                Meter::Router(_, ref r) => {
                                    total_connections.set(r.total_connections as f64);
                                    total_publishes.set(r.total_publishes as f64);
                                    failed_publishes.set(r.failed_publishes as f64);
                                }
                                _ => continue,
                            }
                        }
                    }

                    std::thread::sleep(Duration::from_secs(timeout));
                }
            })?;
        }

        if let Some(console) = self.config.console.clone() {
            let console_link = ConsoleLink::new(console, self.router_tx.clone());

            let console_link = Arc::new(console_link);
            let console_thread = thread::Builder::new().name("Console".to_string());
            console_thread.spawn(move || {
                let mut runtime = tokio::runtime::Builder::new_current_thread();
                let runtime = runtime.enable_all().build().unwrap();
                runtime.block_on(console::start(console_link));
            })?;
        }

        // in ideal case, where server doesn't crash, join() will never resolve
        // we still try to join threads so that we don't return from function
        // unless everything crashes.
        server_thread_handles.into_iter().for_each(|handle| {
            // join() might panic in case the thread panics
            // we just ignore it
            let _ = handle.join();
        });

        Ok(())
    }
}

#[derive(Copy, Clone)]
pub enum LinkType {
    #[cfg(feature = "websocket")]
    Websocket,
    Remote,
}

#[derive(PartialEq)]
enum AwaitingWill {
    Cancel,
    Fire,
}

struct Server<P> {
    config: ServerSettings,
    router_tx: Sender<(ConnectionId, Event)>,
    protocol: P,
    awaiting_will_handler: Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>,
}

impl<P: Protocol + Clone + Send + 'static> Server<P> {
    pub fn new(
        config: ServerSettings,
        router_tx: Sender<(ConnectionId, Event)>,
        protocol: P,
    ) -> Server<P> {
        Server {
            config,
            router_tx,
            protocol,
            awaiting_will_handler: Arc::new(Mutex::new(HashMap::default())),
        }
    }

    async fn start(&mut self, link_type: LinkType) -> Result<(), Error> {
        let listener = TcpListener::bind(&self.config.listen).await?;
        let delay = Duration::from_millis(self.config.next_connection_delay_ms);
        let mut count: usize = 0;

        let config = Arc::new(self.config.connections.clone());
        let limits = ConnectionLimits::new(
            self.config.max_connections,
            self.config.connections.max_connections_per_ip,
        );
        // Failing accept() calls (out of file descriptors, EMFILE) are retried after a
        // growing delay: the pending connection stays in the backlog, so an immediate retry
        // fails again at once, in a loop at full CPU with a log line each time.
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_secs(1));
        // The listener's CRLs, shared by its connections; it does not start without them.
        #[cfg(feature = "use-rustls")]
        let crls = match &self.config.tls {
            Some(crate::TlsConfig::Rustls {
                capath,
                crlpath: Some(crlpath),
                ..
            }) => {
                let Some(capath) = capath else {
                    return Err(crate::server::crl::CrlError {
                        path: crlpath.clone(),
                        problem: "crlpath needs capath, the CA of the client certificates".into(),
                    }
                    .into());
                };
                Some(crate::server::crl::ClientCrls::open(crlpath, capath)?)
            }
            _ => None,
        };
        info!(
            config = self.config.name,
            listen_addr = self.config.listen.to_string(),
            "Listening for remote connections",
        );
        loop {
            // Await new network connection.
            let (stream, addr) = match listener.accept().await {
                Ok((s, r)) => {
                    backoff.succeeded();
                    (s, r)
                }
                Err(e) => {
                    let wait = backoff.failed();
                    if let Some(suppressed) = ACCEPT_ERROR_LOG.check() {
                        error!(error=?e, suppressed, retry_in_ms = wait.as_millis() as u64, "Unable to accept socket.");
                    }
                    time::sleep(wait).await;
                    continue;
                }
            };

            let admission = match limits.admit(addr.ip()) {
                Ok(a) => a,
                Err(refusal) => {
                    if let Some(suppressed) = REFUSED_LOG.check() {
                        warn!(name=?self.config.name, ?addr, ?refusal, suppressed, "Connection refused: too many open connections");
                    }
                    drop(stream);
                    continue;
                }
            };

            // Patched for Proofline: no Nagle delay on acks and small publishes (see PROOFLINE.md).
            let _ = stream.set_nodelay(true);

            info!(name=?self.config.name, ?addr, count, "accept");

            let config = config.clone();
            let router_tx = self.router_tx.clone();
            count += 1;

            let protocol = self.protocol.clone();
            let will_handlers = self.awaiting_will_handler.clone();
            let tls = self.config.tls.clone();
            #[cfg(feature = "use-rustls")]
            let crls = crls.clone();
            // The TLS (and websocket) handshake runs in the connection's own task, under the
            // connection timeout: a peer that stalls in it holds only its own connection, never
            // the accept loop.
            task::spawn(
                async move {
                    let _admission = admission;
                    let timeout = Duration::from_millis(config.connection_timeout_ms.into());
                    let handshake = async {
                        // The acceptor is made for each connection, so renewed certificate
                        // files take effect without a restart.
                        #[cfg(feature = "use-rustls")]
                        if let Some(tls) = &tls {
                            let (peer, network) =
                                TLSAcceptor::new(tls, crls.as_deref())?.accept(stream).await?;
                            // The connected client is checked against later CRLs too.
                            let revoked = match (crls, peer.cert_id) {
                                (Some(crls), Some(id)) => Some(Box::new(move || crls.is_revoked(&id))
                                    as remote::RevocationCheck),
                                _ => None,
                            };
                            return Ok::<_, Error>((network, peer.tenant_id, peer.cert_names, revoked));
                        }
                        #[cfg(all(feature = "use-native-tls", not(feature = "use-rustls")))]
                        if let Some(tls) = &tls {
                            let (peer, network) = TLSAcceptor::new(tls)?.accept(stream).await?;
                            return Ok::<_, Error>((network, peer.tenant_id, peer.cert_names, None));
                        }
                        #[cfg(not(any(feature = "use-rustls", feature = "use-native-tls")))]
                        let _ = tls;
                        Ok::<_, Error>((Box::new(stream) as Box<dyn N>, None, Vec::new(), None))
                    };
                    let (network, tenant_id, cert_names, revoked) = match time::timeout(timeout, handshake).await {
                        Ok(Ok(o)) => o,
                        Ok(Err(e)) => {
                            if let Some(suppressed) = HANDSHAKE_LOG.check() {
                                warn!(error=?e, ?addr, suppressed, "Tls accept error");
                            }
                            return;
                        }
                        Err(_) => {
                            if let Some(suppressed) = HANDSHAKE_LOG.check() {
                                warn!(?addr, suppressed, "Tls handshake timed out");
                            }
                            return;
                        }
                    };
                    tracing::Span::current().record("tenant_id", field::debug(&tenant_id));
                    let network: Box<dyn N> = match link_type {
                        #[cfg(feature = "websocket")]
                        LinkType::Websocket => {
                            match time::timeout(timeout, accept_hdr_async(network, WSCallback))
                                .await
                            {
                                Ok(Ok(s)) => Box::new(WsStream::new(s)),
                                Ok(Err(e)) => {
                                    error!(error=?e, "Websocket failed handshake");
                                    return;
                                }
                                Err(_) => {
                                    error!("Websocket handshake timed out");
                                    return;
                                }
                            }
                        }
                        LinkType::Remote => network,
                    };
                    remote(
                        config,
                        tenant_id,
                        cert_names,
                        revoked,
                        router_tx,
                        network,
                        protocol,
                        will_handlers,
                    )
                    .await
                }
                .instrument(tracing::error_span!(
                    "remote_link",
                    tenant_id = field::Empty,
                    client_id = field::Empty,
                    connection_id = field::Empty,
                )),
            );

            time::sleep(delay).await;
        }
    }
}

static ACCEPT_ERROR_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static REFUSED_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static HANDSHAKE_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static CONNECT_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));
static DISCONNECT_LOG: LogLimiter = LogLimiter::new(Duration::from_secs(1));

/// Configures the Websocket connection to indicate the correct protocol
/// by adding the "sec-websocket-protocol" with value of "mqtt" to the response header
#[cfg(feature = "websocket")]
struct WSCallback;
#[cfg(feature = "websocket")]
impl Callback for WSCallback {
    fn on_request(
        self,
        _request: &Request,
        mut response: Response,
    ) -> Result<Response, ErrorResponse> {
        response
            .headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
        Ok(response)
    }
}

/// A new network connection should wait for a mqtt connect packet. This should be handled
/// asynchronously to avoid blocking other new connections while this connection is
/// waiting for mqtt connect packet. Also this honours connection wait time as per config to prevent
/// denial of service attacks (rogue clients which only establish network connections without
/// sending a mqtt connection packet to make the server reach its concurrent connection limit).
async fn remote<P: Protocol>(
    config: Arc<ConnectionSettings>,
    tenant_id: Option<String>,
    cert_names: Vec<String>,
    revoked: Option<remote::RevocationCheck>,
    router_tx: Sender<(ConnectionId, Event)>,
    stream: Box<dyn N>,
    protocol: P,
    will_handlers: Arc<Mutex<HashMap<String, Sender<AwaitingWill>>>>,
) {
    let mut network = Network::new(
        stream,
        config.max_payload_size,
        config.max_inflight_count,
        protocol,
    );

    let dynamic_filters = config.dynamic_filters;

    let (connect_packet, authorization) = match mqtt_connect(config, &mut network, cert_names).await
    {
        Ok(p) => p,
        Err(e) => {
            if let Some(suppressed) = CONNECT_LOG.check() {
                warn!(error=?e, suppressed, "Error while handling MQTT connect packet");
            }
            return;
        }
    };

    let (mut client_id, clean_session) = match &connect_packet {
        Packet::Connect(ref connect, _, _, _, _) => {
            (connect.client_id.clone(), connect.clean_session)
        }
        _ => unreachable!(),
    };

    if let Some(tenant_id) = &tenant_id {
        // client_id is set to "tenant_id.client_id"
        // this is to make sure we are consistent,
        // as Connection uses this format of client_id
        client_id = format!("{tenant_id}.{client_id}");
    }

    // Patched for Proofline (upstream bytebeamio/rumqtt#1062, fix proposed in PR #1066): take
    // the sender out before sending so the guard is not held, and do not unwrap the send. The
    // previous connection's will task may be gone (its link failed to start); unwrapping then
    // panicked with the lock held, poisoning it for every later CONNECT on the listener.
    let previous = will_handlers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&client_id);
    if let Some(sender) = previous {
        let awaiting_will = if clean_session {
            AwaitingWill::Fire
        } else {
            AwaitingWill::Cancel
        };
        let _ = sender.try_send(awaiting_will);
    }

    let (will_tx, will_rx) = flume::bounded::<AwaitingWill>(1);
    will_handlers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(client_id.clone(), will_tx);

    // Start the link
    let mut link = match RemoteLink::new(
        router_tx.clone(),
        tenant_id.clone(),
        network,
        connect_packet,
        dynamic_filters,
        authorization,
    )
    .await
    {
        Ok(l) => l,
        Err(e) => {
            if let Some(suppressed) = CONNECT_LOG.check() {
                warn!(error=?e, suppressed, "Remote link error");
            }
            return;
        }
    };

    if let Some(revoked) = revoked {
        link.watch_revocation(revoked);
    }
    let connection_id = link.connection_id;
    let will_delay_interval = link.will_delay_interval;
    let mut send_disconnect = true;
    let mut cert_revoked = false;

    match link.start().await {
        // Connection got closed. This shouldn't usually happen.
        Ok(_) => error!("connection-stop"),
        // No need to send a disconnect message when disconnection
        // originated internally in the router.
        Err(remote::Error::Link(e)) => {
            error!(error=?e, "router-drop");
            send_disconnect = false;
        }
        // Once per revoked certificate: a revoked certificate cannot connect again.
        Err(remote::Error::CertificateRevoked) => {
            warn!(%client_id, "Client certificate revoked: disconnected");
            cert_revoked = true;
        }
        // Any other error (the peer went away, broke the protocol, went silent): a peer can
        // cause these at will, so they are logged at a bounded rate.
        Err(e) => {
            if let Some(suppressed) = DISCONNECT_LOG.check() {
                warn!(error=?e, suppressed, "Disconnected!!");
            }
        }
    };

    if send_disconnect {
        let disconnect = Event::Disconnect;
        let message = (connection_id, disconnect);
        router_tx.send(message).ok();
    }

    // this is important to stop the connection
    drop(link);

    let publish_will = match tokio::time::timeout(
        Duration::from_secs(will_delay_interval as u64),
        will_rx.recv_async(),
    )
    .await
    {
        Ok(w) => w.is_ok_and(|k| k == AwaitingWill::Fire),
        Err(_) => {
            // no need to keep the sender after timeout
            will_handlers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&client_id);
            // as will delay interval has passed, publish the will message
            true
        }
    };

    // Nothing more from a client whose certificate was revoked, its will included.
    if publish_will && !cert_revoked {
        let message = Event::PublishWill((client_id, tenant_id));
        // is this connection_id really correct at this point?
        // as we have disconnected already, some other connection
        // might be using this connection ID!
        // It won't matter in this case as we don't use it
        // but might affect logs?
        router_tx.send((connection_id, message)).ok();
    }
}
