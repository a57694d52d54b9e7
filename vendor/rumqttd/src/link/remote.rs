use crate::link::local::{LinkError, LinkRx, LinkTx};
use crate::link::network;
use crate::link::network::Network;
use crate::local::LinkBuilder;
use crate::protocol::{Connect, Login, Packet, Protocol};
use crate::router::{Event, Notification};
use crate::{Access, Authorization, ConnectionId, ConnectionSettings, Identity};

use flume::{RecvError, SendError, Sender, TrySendError};
use std::cmp::min;
use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::error::Elapsed;
use tokio::{select, time};
use tracing::{trace, Span};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O")]
    Io(#[from] io::Error),
    #[error("Zero keep alive")]
    ZeroKeepAlive,
    #[error("Keep alive of {0} s is longer than the {1} s allowed")]
    KeepAliveTooLong(u16, u16),
    #[error("Client id of {0} bytes is longer than the {1} allowed")]
    ClientIdTooLong(usize, usize),
    #[error("Invalid will topic")]
    InvalidWillTopic,
    #[error("Nothing received for 1.5 times the keep alive")]
    KeepAliveTimeout,
    #[error("Not connect packet")]
    NotConnectPacket(Packet),
    #[error("Network {0}")]
    Network(#[from] network::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Got new session, disconnecting old one")]
    SessionEnd,
    #[error("Persistent session requires valid client id")]
    InvalidClientId,
    #[error("Unexpected router message")]
    NotConnectionAck,
    #[error("ConnAck error {0}")]
    ConnectionAck(String),
    #[error("Authentication error")]
    InvalidAuth,
    #[error("Will topic not authorized")]
    WillNotAuthorized,
    #[error("Client certificate revoked")]
    CertificateRevoked,
    #[error("Channel try send error")]
    TrySend(#[from] TrySendError<(ConnectionId, Event)>),
    #[error("Link error = {0}")]
    Link(#[from] LinkError),
}

/// Whether the client certificate a connection was accepted with has been revoked since.
pub(crate) type RevocationCheck = Box<dyn Fn() -> bool + Send + Sync>;

/// How often a connected client's certificate is checked for revocation.
const REVOCATION_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Orchestrates between Router and Network.
pub struct RemoteLink<P> {
    connect: Connect,
    pub(crate) connection_id: ConnectionId,
    network: Network<P>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    notifications: VecDeque<Notification>,
    pub(crate) will_delay_interval: u32,
    revoked: Option<RevocationCheck>,
}

impl<P: Protocol> RemoteLink<P> {
    pub async fn new(
        router_tx: Sender<(ConnectionId, Event)>,
        tenant_id: Option<String>,
        mut network: Network<P>,
        connect_packet: Packet,
        dynamic_filters: bool,
        authorization: Option<Authorization>,
    ) -> Result<RemoteLink<P>, Error> {
        let Packet::Connect(connect, props, lastwill, lastwill_props, _) = connect_packet else {
            return Err(Error::NotConnectPacket(connect_packet));
        };

        // Register this connection with the router. Router replys with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex max connection limit)
        let client_id = &connect.client_id;
        let clean_session = connect.clean_session;

        let topic_alias_max = props.as_ref().and_then(|p| p.topic_alias_max);
        let session_expiry = props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);

        let delay_interval = lastwill_props
            .as_ref()
            .and_then(|f| f.delay_interval)
            .unwrap_or(0);

        // The Server delays publishing the Client’s Will Message until
        // the Will Delay Interval has passed or the Session ends, whichever happens first
        let will_delay_interval = min(session_expiry, delay_interval);

        let (link_tx, link_rx, notification) = LinkBuilder::new(client_id, router_tx)
            .tenant_id(tenant_id)
            .clean_session(clean_session)
            .last_will(lastwill)
            .last_will_properties(lastwill_props)
            .dynamic_filters(dynamic_filters)
            .topic_alias_max(topic_alias_max.unwrap_or(0))
            .authorization(authorization)
            .build()?;

        let id = link_rx.id();
        Span::current().record("connection_id", id);

        if let Some(packet) = notification.into() {
            network.write(packet).await?;
        }

        Ok(RemoteLink {
            connect,
            connection_id: id,
            network,
            link_tx,
            link_rx,
            notifications: VecDeque::with_capacity(100),
            will_delay_interval,
            revoked: None,
        })
    }

    /// Closes the link once `revoked` says the client's certificate is revoked (checked at
    /// the start and every [`REVOCATION_CHECK_EVERY`]).
    pub(crate) fn watch_revocation(&mut self, revoked: RevocationCheck) {
        self.revoked = Some(revoked);
    }

    pub async fn start(&mut self) -> Result<(), Error> {
        self.network.set_keepalive(self.connect.keep_alive);
        let mut revocation_check = time::interval(REVOCATION_CHECK_EVERY);
        revocation_check.set_missed_tick_behavior(time::MissedTickBehavior::Delay);

        // Note:
        // Shouldn't result in bounded queue deadlocks because of blocking n/w send
        loop {
            let keepalive = self.network.keepalive_deadline();
            select! {
                // A client that sends nothing (not even PINGREQ) for 1.5 keep alive periods
                // is gone (MQTT-3.1.2-24); receiving data does not keep it alive.
                _ = time::sleep_until(keepalive.unwrap_or_else(time::Instant::now)), if keepalive.is_some() => {
                    return Err(Error::KeepAliveTimeout);
                }
                _ = revocation_check.tick(), if self.revoked.is_some() => {
                    if self.revoked.as_ref().is_some_and(|revoked| revoked()) {
                        return Err(Error::CertificateRevoked);
                    }
                }
                o = self.network.read() => {
                    let packet = o?;
                    let len = {
                        let mut buffer = self.link_tx.buffer();
                        buffer.push_back(packet);
                        self.network.readv(&mut buffer)?;
                        buffer.len()
                    };

                    trace!("Packets read from network, count = {}", len);
                    self.link_tx.notify().await?;
                }
                // Receive from router when previous when state isn't in collision
                // due to previously received data request
                o = self.link_rx.exchange(&mut self.notifications) => {
                    o?;
                    let mut packets = VecDeque::new();
                    let mut unscheduled = false;

                    for notif in self.notifications.drain(..) {
                        if let Some(packet) = notif.into() {
                            packets.push_back(packet);
                        } else {
                            unscheduled = true;
                        }

                    }
                    self.network.writev(packets).await?;
                    if unscheduled {
                        self.link_rx.wake().await?;
                    }
                }
            }
        }
    }
}

/// Read MQTT connect packet from network and verify it.
/// authentication and checks are done here. With an [`crate::Authorizer`], the connection's
/// identity bound to it is returned, for the router to judge each PUBLISH and SUBSCRIBE.
pub async fn mqtt_connect<P>(
    config: Arc<ConnectionSettings>,
    network: &mut Network<P>,
    cert_names: Vec<String>,
) -> Result<(Packet, Option<Authorization>), Error>
where
    P: Protocol,
{
    // Wait for MQTT connect packet and error out if it's not received in time to prevent
    // DOS attacks by filling total connections that the server can handle with idle open
    // connections which results in server rejecting new connections
    let connection_timeout_ms = config.connection_timeout_ms.into();
    let packet = time::timeout(Duration::from_millis(connection_timeout_ms), async {
        let packet = network.read().await?;
        Ok::<_, network::Error>(packet)
    })
    .await??;

    let (connect, _props, will, login) = match packet {
        Packet::Connect(ref connect, ref props, ref will, _, ref login) => {
            (connect, props, will, login)
        }
        packet => return Err(Error::NotConnectPacket(packet)),
    };

    // A client id is kept by the router (connection map, sessions, wills): bound it.
    if let Some(max) = config.max_client_id_len {
        if connect.client_id.len() > max {
            return Err(Error::ClientIdTooLong(connect.client_id.len(), max));
        }
    }

    // The will is published by the router later: refuse a topic it would refuse then.
    if let Some(will) = will {
        if !std::str::from_utf8(&will.topic).is_ok_and(crate::protocol::valid_topic) {
            return Err(Error::InvalidWillTopic);
        }
    }

    let authorization = match &config.authorizer {
        Some(authorizer) => {
            let identity = Identity {
                client_id: connect.client_id.clone(),
                username: login.as_ref().map(|l| l.username.clone()),
                cert_names,
            };
            let password = login.as_ref().map(|l| l.password.as_str());
            if !authorizer.connect(&identity, password) {
                return Err(Error::InvalidAuth);
            }
            let authorization = Authorization {
                identity,
                authorizer: authorizer.clone(),
            };
            // The router publishes the will for the client later: it needs the same right.
            if let Some(will) = will {
                let topic = std::str::from_utf8(&will.topic).unwrap_or_default();
                if !authorization.allow(Access::Publish, topic) {
                    return Err(Error::WillNotAuthorized);
                }
            }
            Some(authorization)
        }
        None => {
            handle_auth(config.clone(), login.as_ref(), &connect.client_id)?;
            None
        }
    };

    // When keep_alive feature is disabled client can live forever, which is not good in
    // distributed broker context so currenlty we don't allow it.
    if connect.keep_alive == 0 {
        return Err(Error::ZeroKeepAlive);
    }
    if let Some(max) = config.max_keep_alive_secs {
        if connect.keep_alive > max {
            return Err(Error::KeepAliveTooLong(connect.keep_alive, max));
        }
    }

    // Register this connection with the router. Router replys with ack which if ok will
    // start the link. Router can sometimes reject the connection (ex max connection limit)
    let empty_client_id = connect.client_id.is_empty();
    let clean_session = connect.clean_session;

    if cfg!(feature = "allow-duplicate-clientid") {
        if !clean_session && empty_client_id {
            return Err(Error::InvalidClientId);
        }
    } else if empty_client_id {
        return Err(Error::InvalidClientId);
    }

    // Ok((connect, props, lastwill, lastwill_props))
    Ok((packet, authorization))
}

fn handle_auth(
    config: Arc<ConnectionSettings>,
    login: Option<&Login>,
    client_id: &str,
) -> Result<(), Error> {
    if config.auth.is_none() && config.external_auth.is_none() {
        return Ok(());
    }

    // if authentication is configured and connect packet doesn't have login details
    // return an error
    let Some(login) = login else {
        return Err(Error::InvalidAuth);
    };

    let username = &login.username;
    let password = &login.password;

    if let Some(auth) = &config.external_auth {
        if !auth(
            client_id.to_owned(),
            username.to_owned(),
            password.to_owned(),
        ) {
            return Err(Error::InvalidAuth);
        }

        return Ok(());
    }

    if let Some(pairs) = &config.auth {
        let static_auth_verified = pairs
            .iter()
            .any(|(user, pass)| (user, pass) == (username, password));

        if !static_auth_verified {
            return Err(Error::InvalidAuth);
        }

        return Ok(());
    }

    Err(Error::InvalidAuth)
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use crate::{protocol::Login, ConnectionSettings};

    use super::handle_auth;

    fn config() -> ConnectionSettings {
        ConnectionSettings {
            connection_timeout_ms: 0,
            max_payload_size: 0,
            max_inflight_count: 0,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
            max_connections_per_ip: None,
            max_client_id_len: None,
            max_keep_alive_secs: None,
            authorizer: None,
        }
    }

    fn login() -> Login {
        Login {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }
    }

    #[test]
    fn no_login_no_auth() {
        let cfg = Arc::new(config());
        let r = handle_auth(cfg, None, "");
        assert!(r.is_ok());
    }

    #[test]
    fn some_login_no_auth() {
        let cfg = Arc::new(config());
        let login = login();
        let r = handle_auth(cfg, Some(&login), "");
        assert!(r.is_ok());
    }

    #[test]
    fn login_matches_static_auth() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert(login.username.clone(), login.password.clone());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "");
        assert!(r.is_ok());
    }

    #[test]
    fn login_fails_static_no_external() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "");
        assert!(r.is_err());
    }

    #[test]
    fn login_fails_static_matches_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| -> bool { true };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.external_auth = Some(Arc::new(dynamic));

        let r = handle_auth(Arc::new(cfg), Some(&login), "");
        assert!(r.is_ok());
    }

    #[test]
    fn login_fails_static_fails_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| -> bool { false };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.external_auth = Some(Arc::new(dynamic));

        let r = handle_auth(Arc::new(cfg), Some(&login), "");
        assert!(r.is_err());
    }

    #[test]
    fn external_auth_clousre_or_fnptr_type_check_or_fail_compile() {
        let closure = |_: String, _: String, _: String| -> bool { false };
        fn fnptr(_: String, _: String, _: String) -> bool {
            true
        }

        let mut cfg = config();
        cfg.external_auth = Some(Arc::new(closure));
        cfg.external_auth = Some(Arc::new(fnptr));
    }
}
