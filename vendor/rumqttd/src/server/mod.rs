use tokio::io::{AsyncRead, AsyncWrite};

mod broker;
#[cfg(feature = "use-rustls")]
mod crl;
#[cfg(any(feature = "use-rustls", feature = "use-native-tls"))]
mod tls;

pub use broker::Broker;
#[cfg(feature = "use-rustls")]
pub use crl::{check_crl_file, CrlError, CrlSummary};

pub trait IO: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> IO for T {}
