//! Where the development login may run. It signs people in with an application's client id and secret (the
//! bootstrap admin's, from the data directory), which is fine on a developer's machine and nowhere else: the
//! console refuses to start with it enabled unless the address it listens on is loopback (and, in
//! [`crate::config`], its public URL too), and says so in plain words. Whether cookies go without `Secure` follows
//! the public URL's scheme, which may be `http://` on a loopback host only.

use std::net::SocketAddr;

/// The development login was asked for on an address other machines can reach.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the development login is only for loopback: the console listens on {0}; bind it to 127.0.0.1 or ::1, or sign \
     in with OIDC"
)]
pub struct DevLoginNotLoopback(pub SocketAddr);

/// Whether the development login may be enabled on `listen`: only when it is a loopback address (not the
/// unspecified `0.0.0.0`/`::`, which is every address).
pub fn check_dev_login(listen: SocketAddr) -> Result<(), DevLoginNotLoopback> {
    if listen.ip().is_loopback() { Ok(()) } else { Err(DevLoginNotLoopback(listen)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_may_have_the_development_login() {
        for ok in ["127.0.0.1:7480", "[::1]:7480", "127.10.0.1:80"] {
            assert!(check_dev_login(ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for refused in ["0.0.0.0:7480", "[::]:7480", "10.0.0.5:7480", "192.168.1.2:443", "[2001:db8::1]:443"] {
            let err = check_dev_login(refused.parse().unwrap()).unwrap_err();
            assert!(err.to_string().contains("only for loopback"), "{err}");
        }
    }
}
