//! The admin console (issue 27): a web server that signs people in (OIDC with PKCE, or a development login on
//! loopback), calls the mesh with the signed-in person's access token, and holds no key material. This crate has
//! its security core so far, each piece tested on its own before any page relies on it:
//! - [`session`]: server-side sessions behind an opaque cookie, with idle and absolute timeouts, a new id at
//!   every sign-in, and the cookie attributes a browser must honour;
//! - [`csrf`]: the per-session token every state-changing request must carry, compared in constant time;
//! - [`headers`]: the response headers of every page (a CSP without `unsafe-inline`, HSTS, nosniff, …);
//! - [`bind`]: the rule that the development login exists only on a loopback address;
//! - [`oidc`]: the browser half of an OIDC sign-in: PKCE (S256), `state` and `nonce`, the authorization URL, and
//!   the one-time, expiring record a callback must match.

pub mod bind;
pub mod csrf;
pub mod headers;
pub mod oidc;
pub mod session;
