//! The admin console (issue 27): a web server that signs people in (OIDC with PKCE, or a development login on
//! loopback), calls the mesh with the signed-in person's access token, and holds no key material.
//! - [`app`]: the routes and the guard every request passes (session, CSRF, origin);
//! - [`signin`]: OIDC discovery and code redemption, the exchange at token-service, the development login,
//!   sign-out with token revocation;
//! - [`pages`]: keys, applications, the audit trail, the overview and tenants, rendered by [`views`];
//! - [`session`]: server-side sessions behind an opaque cookie, with idle and absolute timeouts, a new id at
//!   every sign-in, and the cookie attributes a browser must honour;
//! - [`csrf`]: the per-session token every state-changing request must carry, compared in constant time;
//! - [`headers`]: the response headers of every page (a CSP without `unsafe-inline`, HSTS, nosniff, …);
//! - [`bind`]: the rule that the development login exists only on a loopback address;
//! - [`oidc`]: the browser half of an OIDC sign-in: PKCE (S256), `state` and `nonce`, the authorization URL, and
//!   the one-time, expiring record a callback must match;
//! - [`config`]: the `[console]` section of the configuration file.

pub mod app;
pub mod bind;
pub mod config;
pub mod csrf;
pub mod error;
pub mod headers;
pub mod oidc;
pub mod pages;
pub mod session;
pub mod signin;
pub mod views;
