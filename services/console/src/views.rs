//! The console's HTML: askama templates (in `templates/`, compiled into the binary and HTML-escaped by default),
//! the layout every page shares, and the two static files. No page has an inline script or style: the CSP allows
//! only this origin's files, so an injected `<script>` could not run even if escaping ever failed.

use askama::Template;
use axum::{
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
};

use crate::app::Who;

/// What the header of every page shows, and the CSRF token its forms carry.
pub struct Layout {
    /// Who is signed in (none on the sign-in and error pages).
    pub person: Option<String>,
    /// Their tenant.
    pub tenant: String,
    /// Their roles, comma-separated.
    pub roles: String,
    /// The session's CSRF token.
    pub csrf: String,
    /// Whether mutation controls are shown (the server checks again on every POST).
    pub can_manage: bool,
    /// Whether the tenants page is shown.
    pub is_owner: bool,
    /// A success message.
    pub notice: Option<String>,
}

impl Layout {
    /// The layout of a signed-in page.
    pub fn of(who: &Who, notice: Option<String>) -> Self {
        let user = &who.session.user;
        Self {
            person: Some(user.subject.clone()),
            tenant: user.tenant.clone(),
            roles: user.roles.join(", "),
            csrf: who.session.csrf.clone(),
            can_manage: who.can_manage(),
            is_owner: who.has_role(&["owner"]),
            notice,
        }
    }

    /// The layout of a page nobody is signed in to.
    pub fn anonymous() -> Self {
        Self {
            person: None,
            tenant: String::new(),
            roles: String::new(),
            csrf: String::new(),
            can_manage: false,
            is_owner: false,
            notice: None,
        }
    }
}

/// Renders a template as an HTML response (a rendering failure is a 500 that says so, not a half page).
pub fn render<T: Template>(template: &T) -> Response {
    match template.render() {
        Ok(html) => Html(html).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "rendering a console page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "rendering the page failed").into_response()
        }
    }
}

/// The sign-in page.
#[derive(Template)]
#[template(path = "login.html")]
pub struct LoginPage {
    /// The (anonymous) layout.
    pub layout: Layout,
    /// The OIDC provider's name, if one is configured.
    pub provider: Option<String>,
    /// Whether GitHub sign-in is configured.
    pub github: bool,
    /// Whether the development login form is shown.
    pub dev_login: bool,
    /// Where to go after sign-in.
    pub return_to: String,
    /// A notice (signed out, session ended).
    pub notice: Option<String>,
    /// Why the last attempt failed.
    pub error: Option<String>,
}

/// The sign-in page as a response.
pub fn login(page: LoginPage) -> Response {
    render(&page)
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    title: String,
    message: String,
}

/// An error page.
pub fn error_page(status: StatusCode, message: &str) -> Response {
    render(&ErrorPage {
        layout: Layout::anonymous(),
        status: status.as_u16(),
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        message: message.to_owned(),
    })
}

/// `GET /static/console.css`.
pub async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], include_str!("../static/console.css")).into_response()
}

/// `GET /static/console.js`.
pub async fn script() -> Response {
    ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], include_str!("../static/console.js")).into_response()
}

/// `GET /static/favicon.svg` (and `/favicon.ico`, which browsers ask for on their own).
pub async fn icon() -> Response {
    ([(header::CONTENT_TYPE, "image/svg+xml")], include_str!("../static/favicon.svg")).into_response()
}
