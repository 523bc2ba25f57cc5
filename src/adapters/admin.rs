//! The admin page on the web chat's server (`/admin`): channel health, pending pairing
//! requests with approve/deny, approved users with revoke, live sessions with clear. The page
//! reads `/admin/api/state` and posts to `/admin/api/action`; what they show and do comes from
//! an [`AdminSource`] the daemon provides.
//!
//! Access: its own credential, the admin token of [`crate::admin_token`], checked here for
//! every admin path. The chat's `token` does not grant it, nor does a loopback address.
//! `?admin_token=` sets the `tether_admin` cookie (HttpOnly, SameSite=Strict, Path=/admin)
//! and redirects to the fixed path `/admin`; the cookie or `Authorization: Bearer <admin
//! token>` works after that.

use serde_json::{Value, json};

use crate::net::httpd::{Request, Response, constant_time_eq};

/// The admin page: HTML, CSS and JS in one file, nothing fetched from elsewhere.
const PAGE: &str = include_str!("admin.html");

/// Content-Security-Policy of the page: inline script and style only, requests to ourselves.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Largest action request accepted.
const MAX_ACTION_BODY: usize = 4096;

const ADMIN_COOKIE: &str = "tether_admin";

/// What an operator can do from the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAction {
    Approve { channel: String, code: String },
    Deny { channel: String, code: String },
    Revoke { channel: String, user: String },
    ClearSession { key: String },
}

impl AdminAction {
    /// Read a request body: `{"action": "approve", "channel": …, "code": …}` and the like (other
    /// keys are ignored). By hand from a JSON value, with serde's wording for what is wrong: the
    /// derived parser of a tagged enum costs 11 KB of code.
    pub fn from_json(body: &[u8]) -> Result<AdminAction, String> {
        let value: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
        let field = |name: &str| match value.get(name) {
            Some(Value::String(text)) => Ok(text.clone()),
            Some(other) => Err(format!("invalid type: {other}, expected a string for `{name}`")),
            None => Err(format!("missing field `{name}`")),
        };
        Ok(match field("action")?.as_str() {
            "approve" => AdminAction::Approve { channel: field("channel")?, code: field("code")? },
            "deny" => AdminAction::Deny { channel: field("channel")?, code: field("code")? },
            "revoke" => AdminAction::Revoke { channel: field("channel")?, user: field("user")? },
            "clear_session" => AdminAction::ClearSession { key: field("key")? },
            other => {
                return Err(format!(
                    "unknown variant `{other}`, expected one of `approve`, `deny`, `revoke`, `clear_session`"
                ));
            }
        })
    }
}

/// Where the admin page's data comes from and where its actions go (the daemon).
pub trait AdminSource: Send + Sync {
    /// Everything the page shows, as JSON: `service`, `channels`, `pairing`, `sessions`, `loops`.
    fn state(&self) -> Value;
    /// Carry out an action; the text says what happened (or why not).
    fn act(&self, action: AdminAction) -> Result<String, String>;
    /// [`AdminSource::act`] for the client at `client` (its address), for the audit log.
    fn act_from(&self, action: AdminAction, client: &str) -> Result<String, String> {
        let _ = client;
        self.act(action)
    }
    /// The admin credential; `None` when there is none (then the admin page is refused).
    fn admin_token(&self) -> Option<String>;
}

/// `/admin` and everything under it.
pub fn is_admin_path(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// The admin credential rule (module docs): `None` lets the request through, else the answer
/// (a 303 that stores the token in a cookie, or a 401).
pub fn check_access(request: &Request, admin_token: Option<&str>) -> Option<Response> {
    let Some(token) = admin_token.filter(|t| !t.is_empty()) else {
        return Some(Response::text(403, "The admin page is off: tether has no admin token (see the log for why).\n"));
    };
    if let Some(offered) = request.query_param(crate::admin_token::QUERY) {
        if !constant_time_eq(offered.as_bytes(), token.as_bytes()) {
            return Some(unauthorized());
        }
        // A fixed path: whatever the request named, the redirect stays on this server.
        return Some(Response::redirect("/admin").header(
            "Set-Cookie",
            &format!("{ADMIN_COOKIE}={token}; Path=/admin; Max-Age=31536000; HttpOnly; SameSite=Strict"),
        ));
    }
    let by_cookie = request.cookie(ADMIN_COOKIE).is_some_and(|c| constant_time_eq(c.as_bytes(), token.as_bytes()));
    let by_header = request
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
    if by_cookie || by_header { None } else { Some(unauthorized()) }
}

fn unauthorized() -> Response {
    Response::text(
        401,
        "The admin page needs the admin token (not the chat's). Run `tether admin-url` on the \
         machine tether runs on and open the address it prints.\n",
    )
}

/// Answer a request under `/admin`, admin token first; `None` for paths that are not the
/// admin's.
pub fn handle(source: &dyn AdminSource, request: &Request) -> Option<Response> {
    if !is_admin_path(&request.path) {
        return None;
    }
    if let Some(refused) = check_access(request, source.admin_token().as_deref()) {
        return Some(refused);
    }
    let response = match (request.method.as_str(), request.path.as_str()) {
        ("GET" | "HEAD", "/admin" | "/admin/") => Response::html(200, PAGE)
            .header("Content-Security-Policy", PAGE_CSP)
            .header("Cache-Control", "no-store")
            .header("Referrer-Policy", "no-referrer")
            .header("X-Frame-Options", "DENY"),
        ("GET", "/admin/api/state") => json_response(200, &source.state()),
        ("POST", "/admin/api/action") => act(source, request),
        (_, "/admin" | "/admin/" | "/admin/api/state" | "/admin/api/action") => {
            Response::text(405, "method not allowed\n")
        }
        (_, path) if path.starts_with("/admin/") => Response::text(404, "not found\n"),
        _ => return None,
    };
    Some(response)
}

fn act(source: &dyn AdminSource, request: &Request) -> Response {
    // A page elsewhere cannot post here: cross-site requests carry another Origin (or a form
    // content type, which a JSON body rules out).
    if !request.is_same_origin() {
        return json_response(403, &json!({"ok": false, "message": "cross-site request refused"}));
    }
    if !request.header("content-type").is_some_and(|t| t.starts_with("application/json")) {
        return json_response(415, &json!({"ok": false, "message": "send JSON"}));
    }
    if request.body.len() > MAX_ACTION_BODY {
        return json_response(413, &json!({"ok": false, "message": "request too large"}));
    }
    let action = match AdminAction::from_json(&request.body) {
        Ok(action) => action,
        Err(e) => return json_response(400, &json!({"ok": false, "message": format!("not an action: {e}")})),
    };
    log::info!(target: "admin", "admin page: {action:?}");
    let client = request.peer.map_or_else(|| "unknown address".to_string(), |peer| peer.ip().to_string());
    match source.act_from(action, &client) {
        Ok(message) => json_response(200, &json!({"ok": true, "message": message})),
        Err(message) => json_response(409, &json!({"ok": false, "message": message})),
    }
}

fn json_response(status: u16, value: &Value) -> Response {
    let mut response =
        Response::new(status).header("Content-Type", "application/json").header("Cache-Control", "no-store");
    response.body = value.to_string().into_bytes();
    response
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Fake {
        done: Mutex<Vec<AdminAction>>,
    }

    impl AdminSource for Fake {
        fn state(&self) -> Value {
            json!({"channels": [{"name": "phone", "connected": true}]})
        }
        fn act(&self, action: AdminAction) -> Result<String, String> {
            let refused = matches!(&action, AdminAction::Approve { code, .. } if code == "NOPE0000");
            self.done.lock().unwrap().push(action);
            if refused { Err("No pending request found for code \"NOPE0000\".".into()) } else { Ok("done".into()) }
        }
        fn admin_token(&self) -> Option<String> {
            Some(ADMIN.into())
        }
    }

    const ADMIN: &str = "0123456789abcdef0123456789abcdef";
    const BEARER: (&str, &str) = ("Authorization", "Bearer 0123456789abcdef0123456789abcdef");

    /// A request carrying the admin token.
    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut with_token = headers.to_vec();
        with_token.push(BEARER);
        bare_request(method, path, &with_token, body)
    }

    fn bare_request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8787\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut request = crate::net::httpd::parse_head(head.as_bytes()).unwrap();
        request.body = body.as_bytes().to_vec();
        request
    }

    fn status(response: &Option<Response>) -> u16 {
        response.as_ref().map_or(0, |r| r.status)
    }

    #[test]
    fn routes_table() {
        let fake = Fake::default();
        let json = [("Content-Type", "application/json")];
        let approve = r#"{"action":"approve","channel":"phone","code":"ABCD2345"}"#;
        let cases: Vec<(Request, u16)> = vec![
            (request("GET", "/admin", &[], ""), 200),
            (request("GET", "/admin/api/state", &[], ""), 200),
            (request("POST", "/admin/api/action", &json, approve), 200),
            (
                request(
                    "POST",
                    "/admin/api/action",
                    &json,
                    r#"{"action":"approve","channel":"phone","code":"NOPE0000"}"#,
                ),
                409,
            ),
            (request("POST", "/admin/api/action", &json, r#"{"action":"format_disk"}"#), 400),
            (request("POST", "/admin/api/action", &[], approve), 415),
            (
                request(
                    "POST",
                    "/admin/api/action",
                    &[("Content-Type", "application/json"), ("Origin", "http://evil.example")],
                    approve,
                ),
                403,
            ),
            (
                request(
                    "POST",
                    "/admin/api/action",
                    &[("Content-Type", "application/json"), ("Origin", "http://127.0.0.1:8787")],
                    approve,
                ),
                200,
            ),
            (request("DELETE", "/admin", &[], ""), 405),
            (request("GET", "/admin/nothing", &[], ""), 404),
        ];
        for (req, expected) in cases {
            let label = format!("{} {}", req.method, req.path);
            assert_eq!(status(&handle(&fake, &req)), expected, "{label}");
        }
        assert_eq!(status(&handle(&fake, &request("GET", "/", &[], ""))), 0, "not the admin's path");
        let done = fake.done.lock().unwrap();
        assert_eq!(done[0], AdminAction::Approve { channel: "phone".into(), code: "ABCD2345".into() });
        assert_eq!(done.len(), 3, "refused requests never reach the source: {done:?}");
    }

    #[test]
    fn admin_needs_its_own_token() {
        let fake = Fake::default();
        let json = ("Content-Type", "application/json");
        let approve = r#"{"action":"approve","channel":"phone","code":"ABCD2345"}"#;
        let chat_token = ("Authorization", "Bearer the-chat-token");
        let wrong_cookie = ("Cookie", "tether_admin=0123456789abcdef0123456789abcdeX");
        let right_cookie = ("Cookie", "tether_admin=0123456789abcdef0123456789abcdef; tether_token=x");
        let cases: Vec<(Request, u16)> = vec![
            // No credential, the chat's token, a wrong cookie: refused, for reading and acting.
            (bare_request("GET", "/admin", &[], ""), 401),
            (bare_request("GET", "/admin/api/state", &[], ""), 401),
            (bare_request("POST", "/admin/api/action", &[json], approve), 401),
            (bare_request("GET", "/admin/api/state", &[chat_token], ""), 401),
            (bare_request("POST", "/admin/api/action", &[json, chat_token], approve), 401),
            (bare_request("GET", "/admin/api/state", &[wrong_cookie], ""), 401),
            (bare_request("GET", "/admin/nothing", &[], ""), 401),
            (bare_request("GET", "/admin?admin_token=nope", &[], ""), 401),
            // The right cookie, the right bearer.
            (bare_request("GET", "/admin/api/state", &[right_cookie], ""), 200),
            (bare_request("POST", "/admin/api/action", &[json, right_cookie], approve), 200),
            (bare_request("GET", "/admin/api/state", &[BEARER], ""), 200),
        ];
        for (req, expected) in cases {
            let label = format!("{} {} {:?}", req.method, req.path, req.header("authorization"));
            assert_eq!(status(&handle(&fake, &req)), expected, "{label}");
        }
        assert_eq!(fake.done.lock().unwrap().len(), 1, "only the admin's action was carried out");

        // The token in the URL becomes a cookie for /admin, and the redirect is a fixed path.
        for path in [
            "/admin?admin_token=0123456789abcdef0123456789abcdef",
            "/admin//evil.example?admin_token=0123456789abcdef0123456789abcdef",
            "/admin/\\evil.example?admin_token=0123456789abcdef0123456789abcdef",
        ] {
            let response = handle(&fake, &bare_request("GET", path, &[], "")).unwrap();
            assert_eq!(response.status, 303, "{path}");
            let header = |name: &str| {
                response.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())
            };
            assert_eq!(header("Location").as_deref(), Some("/admin"), "{path}");
            let cookie = header("Set-Cookie").unwrap();
            assert!(cookie.starts_with("tether_admin=0123456789abcdef0123456789abcdef;"), "{cookie}");
            assert!(
                cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/admin")
            );
        }

        struct NoToken;
        impl AdminSource for NoToken {
            fn state(&self) -> Value {
                json!({})
            }
            fn act(&self, _: AdminAction) -> Result<String, String> {
                Ok("done".into())
            }
            fn admin_token(&self) -> Option<String> {
                None
            }
        }
        assert_eq!(status(&handle(&NoToken, &request("GET", "/admin/api/state", &[], ""))), 403);
    }

    #[test]
    fn actions_parse_from_json() {
        let cases = [
            (
                r#"{"action":"deny","channel":"c","code":"X"}"#,
                AdminAction::Deny { channel: "c".into(), code: "X".into() },
            ),
            (
                r#"{"action":"revoke","channel":"c","user":"7"}"#,
                AdminAction::Revoke { channel: "c".into(), user: "7".into() },
            ),
            (r#"{"action":"clear_session","key":"c:1:1"}"#, AdminAction::ClearSession { key: "c:1:1".into() }),
        ];
        for (text, expected) in cases {
            assert_eq!(AdminAction::from_json(text.as_bytes()).unwrap(), expected);
        }
        let refused = [
            (r#"{"channel":"c"}"#, "missing field `action`"),
            (r#"{"action":"approve","channel":"c"}"#, "missing field `code`"),
            (r#"{"action":"approve","channel":1,"code":"X"}"#, "invalid type: 1, expected a string for `channel`"),
            (r#"{"action":"reboot"}"#, "unknown variant `reboot`, expected one of"),
            ("[1]", "missing field `action`"),
        ];
        for (text, wanted) in refused {
            let error = AdminAction::from_json(text.as_bytes()).unwrap_err();
            assert!(error.starts_with(wanted), "{text}: {error}");
        }
        assert!(AdminAction::from_json(b"{").unwrap_err().contains("EOF"));
    }
}
