//! A scripted Modbus TCP device: the test writes its registers and reads back what the agent
//! wrote, to drive each result-ready pattern step by step. One register may be read-to-clear
//! (a self-clearing "result ready" flag). Holding and input registers are one table.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::net::TcpListener;
use tokio_modbus::prelude::{ExceptionCode, Request, Response};
use tokio_modbus::server::tcp::Server;

const REGISTERS: usize = 256;

#[derive(Debug)]
struct Regs {
    regs: Vec<u16>,
    read_to_clear: Option<usize>,
    /// Never answer (a hung device or a cut cable).
    stalled: bool,
    /// Reads covering this register are refused with this exception.
    refuse: Option<(usize, ExceptionCode)>,
}

/// A running scripted device on 127.0.0.1; it stops with the runtime.
#[derive(Debug, Clone)]
pub struct RegisterDevice {
    pub addr: SocketAddr,
    state: Arc<Mutex<Regs>>,
}

impl RegisterDevice {
    /// Starts a device with 256 registers, all 0. A read that covers `read_to_clear` returns
    /// its value and then sets it to 0.
    pub async fn start(read_to_clear: Option<u16>) -> std::io::Result<RegisterDevice> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(Regs {
            regs: vec![0; REGISTERS],
            read_to_clear: read_to_clear.map(usize::from),
            stalled: false,
            refuse: None,
        }));
        let service = Service(Arc::clone(&state));
        tokio::spawn(async move {
            let on_connected = |stream, _addr| {
                let service = service.clone();
                async move { Ok(Some((service, stream))) }
            };
            let _ = Server::new(listener).serve(&on_connected, |_err| {}).await;
        });
        Ok(RegisterDevice { addr, state })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Regs) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Writes `values` from register `at` on.
    pub fn set(&self, at: u16, values: &[u16]) {
        let at = usize::from(at);
        self.with(|r| r.regs[at..at + values.len()].copy_from_slice(values));
    }

    /// Stops answering (requests time out at the agent) or answers again.
    pub fn set_stalled(&self, stalled: bool) {
        self.with(|r| r.stalled = stalled);
    }

    /// Refuses reads that cover register `at` with `code` (`None`: answers them again).
    pub fn refuse_reads(&self, at: u16, code: Option<ExceptionCode>) {
        self.with(|r| r.refuse = code.map(|c| (usize::from(at), c)));
    }

    /// The value of register `at`.
    pub fn get(&self, at: u16) -> u16 {
        self.with(|r| r.regs[usize::from(at)])
    }
}

#[derive(Debug, Clone)]
struct Service(Arc<Mutex<Regs>>);

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if s.stalled {
            return Box::pin(std::future::pending());
        }
        let mut read = |addr: u16, cnt: u16| {
            let (a, c) = (usize::from(addr), usize::from(cnt));
            if let Some((_, code)) = s.refuse.filter(|(r, _)| (a..a + c).contains(r)) {
                return Err(code);
            }
            let v = s
                .regs
                .get(a..a + c)
                .map(<[u16]>::to_vec)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            if let Some(f) = s.read_to_clear.filter(|f| (a..a + c).contains(f)) {
                s.regs[f] = 0;
            }
            Ok(v)
        };
        let r = match req {
            Request::ReadHoldingRegisters(addr, cnt) => {
                read(addr, cnt).map(Response::ReadHoldingRegisters)
            }
            Request::ReadInputRegisters(addr, cnt) => {
                read(addr, cnt).map(Response::ReadInputRegisters)
            }
            Request::WriteSingleRegister(addr, value) => match s.regs.get_mut(usize::from(addr)) {
                Some(r) => {
                    *r = value;
                    Ok(Response::WriteSingleRegister(addr, value))
                }
                None => Err(ExceptionCode::IllegalDataAddress),
            },
            _ => Err(ExceptionCode::IllegalFunction),
        };
        Box::pin(std::future::ready(r))
    }
}
