//! Signing in to the web app from a test or a benchmark as a person would: raw HTTP/1.1
//! exchanges, a cookie jar of one session cookie, accounts made with `proofline-hub user add`,
//! the second factor enrolled from the page with the key it shows. Included beside `common` by
//! the hub's tests and benchmarks that sign in (`#[path = "common/web.rs"] mod web;`).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use proofline_hub::web::accounts::totp;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::SITE;

/// One HTTP exchange: status, headers (lowercase names), body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub async fn exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> Resp {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.get(9..12))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Resp {
        status,
        headers,
        body,
    }
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub fn form(fields: &[(&str, &str)]) -> String {
    fields
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                proofline_hub::web::pages::url_encode(v).replace('/', "%2F")
            )
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// The value of `<input ... name="NAME" value="...">` or the text of `<span id="ID">`.
pub fn input(html: &str, name: &str) -> String {
    let at = html
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no input {name} in {html}"));
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

pub fn span(html: &str, id: &str) -> String {
    let at = html
        .find(&format!("id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no #{id} in {html}"));
    let rest = &html[at + id.len() + 6..];
    rest[..rest.find('<').unwrap()].to_owned()
}

/// A browser: the session cookie it holds.
#[derive(Debug, Default, Clone)]
pub struct Browser {
    pub cookie: Option<String>,
}

impl Browser {
    pub async fn go(&mut self, addr: SocketAddr, method: &str, path: &str, body: &str) -> Resp {
        let mut h = Vec::new();
        if let Some(c) = &self.cookie {
            h.push(("Cookie", format!("proofline_session={c}")));
        }
        let r = exchange(addr, method, path, &h, body).await;
        if let Some(c) = r.header("set-cookie") {
            let v = c
                .strip_prefix("proofline_session=")
                .and_then(|v| v.split(';').next())
                .unwrap_or("");
            self.cookie = (!v.is_empty()).then(|| v.to_owned());
        }
        r
    }
}

pub struct Person {
    pub name: String,
    pub password: String,
    pub secret: Option<Vec<u8>>,
    /// The last code it signed in with.
    pub last_code: String,
}

pub fn hub_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_proofline-hub"))
        .args(args)
        .output()
        .unwrap()
}

/// `proofline-hub user add` as an administrator runs it; returns the printed secret.
pub async fn add_user(cfg: &Path, name: &str, role: &str, extra: &[&str]) -> String {
    let mut args = vec![
        "user",
        "add",
        "--config",
        cfg.to_str().unwrap(),
        "--name",
        name,
        "--role",
        role,
    ];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let out = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        hub_cli(&a)
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok: applied: account"), "{stdout}");
    stdout
        .lines()
        .find_map(|l| {
            l.split_once("(shown once): ")
                .or_else(|| l.split_once("<token>): "))
        })
        .map(|(_, s)| s.trim().to_owned())
        .unwrap_or_else(|| panic!("no secret in {stdout}"))
}

pub fn code_now(p: &Person) -> String {
    let t = totp(p.secret.as_ref().unwrap(), SITE, &p.name).unwrap();
    t.generate(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
}

/// Signs in through the pages (enrolling the second factor the first time); the code used is
/// from the next time step when `fresh` (a code is good only once).
pub async fn sign_in(addr: SocketAddr, p: &mut Person) -> Browser {
    let mut b = Browser::default();
    let page = b.go(addr, "GET", "/signin", "").await;
    assert_eq!(page.status, 200);
    let csrf = input(&page.body, "csrf");
    let r = b
        .go(
            addr,
            "POST",
            "/signin",
            &form(&[
                ("csrf", &csrf),
                ("name", &p.name),
                ("password", &p.password),
                ("next", "/"),
            ]),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let to = r.header("location").unwrap().to_owned();
    let page = b.go(addr, "GET", &to, "").await;
    let csrf = input(&page.body, "csrf");
    let (action, code) = if to.starts_with("/signin/enroll") {
        let b32 = span(&page.body, "secret");
        p.secret = Some(totp_rs::Secret::Encoded(b32).to_bytes().unwrap());
        assert!(page.body.contains("<svg"), "the QR code is drawn");
        ("/signin/enroll", code_now(p))
    } else {
        ("/signin/totp", next_code(p).await)
    };
    let r = b
        .go(
            addr,
            "POST",
            action,
            &form(&[("csrf", &csrf), ("code", &code), ("next", "/")]),
        )
        .await;
    assert_eq!(r.status, 303, "{}: {}", p.name, r.body);
    p.last_code = code;
    assert_eq!(r.header("location"), Some("/"));
    b
}

/// A code from a time step this person has not used yet: the current one, or (when that is the
/// step just used) the next, waited for.
pub async fn next_code(p: &Person) -> String {
    let now = code_now(p);
    if now != p.last_code {
        return now;
    }
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    tokio::time::sleep(Duration::from_secs(30 - secs % 30) + Duration::from_millis(200)).await;
    code_now(p)
}
