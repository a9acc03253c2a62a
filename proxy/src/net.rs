//! Sockets below every engine: how a proxy leg to the upstream is bound.

use std::net::{IpAddr, SocketAddr};

/// For connections the datapath redirected: dial from the client pod's own
/// address (`IP_TRANSPARENT`), with a mark that tells the datapath the
/// packets were already enforced (FROM_PROXY + the sender's identity).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamBind {
    pub source: IpAddr,
    pub mark: u32,
}

impl UpstreamBind {
    pub fn connect(self, address: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(address), socket2::Type::STREAM, None)?;
        socket.set_ip_transparent(true)?;
        socket.set_mark(self.mark)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::new(self.source, 0).into())?;
        Ok(tokio::net::TcpSocket::from_std_stream(socket.into()))
    }
}
