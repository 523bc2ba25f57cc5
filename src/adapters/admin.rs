//! The admin page on the web chat's server (`/admin`): channel health, pending pairing
//! requests with approve/deny, approved users with revoke, live sessions with clear. The page
//! reads `/admin/api/state` and posts to `/admin/api/action`; what they show and do comes from
//! an [`AdminSource`] the daemon provides. Same access rules as the chat (token, loopback).

use serde::Deserialize;
use serde_json::{Value, json};

use crate::net::httpd::{Request, Response};

/// The admin page: HTML, CSS and JS in one file, nothing fetched from elsewhere.
const PAGE: &str = include_str!("admin.html");

/// Content-Security-Policy of the page: inline script and style only, requests to ourselves.
const PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Largest action request accepted.
const MAX_ACTION_BODY: usize = 4096;

/// What an operator can do from the page.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum AdminAction {
    Approve { channel: String, code: String },
    Deny { channel: String, code: String },
    Revoke { channel: String, user: String },
    ClearSession { key: String },
}

/// Where the admin page's data comes from and where its actions go (the daemon).
pub trait AdminSource: Send + Sync {
    /// Everything the page shows, as JSON: `service`, `channels`, `pairing`, `sessions`.
    fn state(&self) -> Value;
    /// Carry out an action; the text says what happened (or why not).
    fn act(&self, action: AdminAction) -> Result<String, String>;
}

/// Answer a request under `/admin`; `None` for paths that are not the admin's.
pub fn handle(source: &dyn AdminSource, request: &Request) -> Option<Response> {
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
    let same_origin = match (request.header("origin"), request.header("host")) {
        (Some(origin), Some(host)) => origin.split("://").nth(1) == Some(host),
        (None, _) => true,
        _ => false,
    };
    if !same_origin {
        return json_response(403, &json!({"ok": false, "message": "cross-site request refused"}));
    }
    if !request.header("content-type").is_some_and(|t| t.starts_with("application/json")) {
        return json_response(415, &json!({"ok": false, "message": "send JSON"}));
    }
    if request.body.len() > MAX_ACTION_BODY {
        return json_response(413, &json!({"ok": false, "message": "request too large"}));
    }
    let action: AdminAction = match serde_json::from_slice(&request.body) {
        Ok(action) => action,
        Err(e) => return json_response(400, &json!({"ok": false, "message": format!("not an action: {e}")})),
    };
    log::info!(target: "admin", "admin page: {action:?}");
    match source.act(action) {
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
    }

    fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Request {
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
            assert_eq!(serde_json::from_str::<AdminAction>(text).unwrap(), expected);
        }
    }
}
