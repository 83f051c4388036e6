//! A real `redis-server`, started from `PATH` on a free loopback port and stopped on drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `redis-server` with no persistence, killed when dropped.
pub struct RedisServer {
    child: Child,
    port: u16,
}

impl RedisServer {
    /// Starts one. When `redis-server` is not on `PATH` this says so loudly on stderr and
    /// returns `None`, so the caller skips; when the `CI` environment variable is set it
    /// panics instead, since CI installs Redis (`.ci/run`) and must not skip silently.
    pub fn start(what: &str) -> Option<Self> {
        let Some(binary) = find_on_path("redis-server") else {
            let message = format!(
                "SKIPPED {what}: `redis-server` is not on PATH; install it \
                 (apt-get install redis-server) to run the Redis tests"
            );
            if std::env::var_os("CI").is_some() {
                panic!("{message} (CI is set, so this is a failure)");
            }
            // Straight to the terminal: the test harness captures `eprintln!` of passing tests.
            let _ = writeln!(std::io::stderr(), "\n!!!!! {message} !!!!!\n");
            return None;
        };
        // A port that was free a moment ago can be taken before Redis binds it; try again.
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new(&binary)
                .args(["--port", &port.to_string()])
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--daemonize", "no", "--loglevel", "warning"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("redis-server is on PATH but could not be started");
            if wait_for_pong(port, &mut child) {
                return Some(Self { child, port });
            }
            let _ = child.kill();
            let _ = child.wait();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            last_error = stderr;
        }
        panic!("redis-server did not start: {last_error}");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Stops the process (`SIGSTOP`): connections stay open and the kernel still accepts
    /// new ones, but nothing is answered, as with a Redis that hangs.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server run again (`SIGCONT`); it then handles what queued up.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("`kill` could not be run");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Kills it now, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|directory| directory.join(name))
        .find(|candidate| candidate.is_file())
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free loopback port")
}

fn wait_for_pong(port: u16, child: &mut Child) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
            let mut reply = [0u8; 7];
            if stream.write_all(b"PING\r\n").is_ok()
                && stream.read_exact(&mut reply).is_ok()
                && &reply == b"+PONG\r\n"
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}
