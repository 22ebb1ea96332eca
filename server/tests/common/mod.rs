//! Helpers for the tests that launch the real `memoryrouter` binary: start it on a free
//! loopback port, read the port from its `listening on` line, talk HTTP/1.1 to it with a
//! tiny blocking client, and stop it with a signal.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_memoryrouter");

pub struct Binary {
    pub child: Child,
    pub addr: String,
    pub stdout: BufReader<ChildStdout>,
}

impl Binary {
    /// `memoryrouter serve --listen 127.0.0.1:0 --data-dir DIR` plus `extra` arguments;
    /// returns once it has printed its address and answered `/readyz`.
    pub fn serve(dir: &Path, extra: &[&str]) -> Binary {
        Binary::serve_with_env(dir, extra, &[])
    }

    /// [`Binary::serve`] with `env` set for the server process (`MEMORYROUTER_*` settings).
    pub fn serve_with_env(dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Binary {
        let mut command = Command::new(BIN);
        command.envs(env.iter().copied());
        Self::start(command, dir, extra)
    }

    /// `serve` under the given umask (set by `sh` before it execs the binary).
    pub fn serve_with_umask(dir: &Path, umask: &str) -> Binary {
        let mut sh = Command::new("sh");
        sh.args(["-c", &format!("umask {umask}; exec \"$0\" \"$@\""), BIN]);
        Self::start(sh, dir, &[])
    }

    fn start(mut command: Command, dir: &Path, extra: &[&str]) -> Binary {
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .args(extra)
            .env("MEMORYROUTER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn memoryrouter");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        let addr = loop {
            line.clear();
            assert!(
                stdout.read_line(&mut line).expect("read stdout") > 0,
                "exited before listening"
            );
            if let Some(addr) = line.trim().strip_prefix("listening on http://") {
                break addr.to_owned();
            }
        };
        let binary = Binary {
            child,
            addr,
            stdout,
        };
        let (status, body) = binary.request("GET", "/readyz", None, "").expect("readyz");
        assert_eq!(status, 200, "{body}");
        binary
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> std::io::Result<(u16, String)> {
        request(&self.addr, method, path, key, body)
    }

    /// SIGTERM (through kill(1), so the tests need no `unsafe`), then waits for the exit;
    /// returns the status and the rest of stdout.
    pub fn terminate(mut self) -> (ExitStatus, String) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -TERM failed");
        let status = self.child.wait().expect("wait");
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        (status, rest)
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(mut self) {
        self.child.kill().expect("SIGKILL");
        let _ = self.child.wait();
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        // A failing test must not leave a server running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String)> {
    request_with_head(addr, method, path, key, body).map(|(status, _, body)| (status, body))
}

/// [`request`], also returning the response head (status line and headers) as text.
pub fn request_with_head(
    addr: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut stream = TcpStream::connect(addr)?;
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response: {response:?}")))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .map(|(h, b)| (h.to_owned(), b.to_owned()))
        .unwrap_or_default();
    Ok((status, head, body))
}

pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Runs a CLI command to completion; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(BIN)
        .args(args)
        .env("MEMORYROUTER_LOG", "warn")
        .output()
        .expect("run memoryrouter");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn admin_key(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("admin.key"))
        .expect("admin.key")
        .trim()
        .to_owned()
}

pub fn mint(binary: &Binary, admin: &str, name: &str) -> (String, String) {
    let (status, body) = binary
        .request(
            "POST",
            "/v1/keys",
            Some(admin),
            &format!("{{\"name\":\"{name}\"}}"),
        )
        .expect("mint");
    assert_eq!(status, 201, "{body}");
    let v = json(&body);
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

/// For loopback fakes: reads one HTTP/1.1 request from `stream` (the head and the body its
/// Content-Length announces) and returns its bytes.
pub fn read_request(stream: &mut TcpStream) -> Vec<u8> {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
        if let Some(end) = text.find("\r\n\r\n") {
            let length: usize = text
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if request.len() >= end + 4 + length {
                break;
            }
        }
    }
    request
}
