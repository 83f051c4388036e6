//! A real PostgreSQL for the tests: started from the system's binaries on a free loopback
//! port in a temporary directory, with trust authentication, and stopped when its owner
//! drops it or the test binary ends, however it ends.
//!
//! - [`database`] gives a test a fresh, empty database on one server shared by the test
//!   binary (started on first use), or on the server `OPENMAIL_TEST_POSTGRES_URL` names
//!   (`postgres://USER@HOST:PORT/DB`, a user allowed to create databases).
//! - [`PostgresServer::start`] starts a server of the test's own, which it can stop and
//!   start again (PostgreSQL restarted mid-run).
//!
//! PostgreSQL refuses to run as root: as root, everything runs as the `postgres` user
//! (Debian's `postgresql` package creates it) through `runuser`. The binaries come from
//! `PATH` or from Debian's `/usr/lib/postgresql/<version>/bin`. Without them a test skips,
//! loudly, unless the `CI` environment variable is set: then it fails, since CI installs
//! PostgreSQL (`.ci/run`) and must not skip silently.
//!
//! Servers run with `fsync=off`: the tests check what the store does, not the disk, and
//! the machine is shared. Committed data still survives a restart of the server.
//!
//! Every server is driven by a small shell script that reads commands on its standard
//! input. The test process holds the other end of that pipe; when the process exits, even
//! by `SIGKILL`, the pipe closes, and the script stops PostgreSQL and deletes its directory.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

/// The variable that points the tests at a PostgreSQL of the user's own instead.
pub const URL_VARIABLE: &str = "OPENMAIL_TEST_POSTGRES_URL";

/// Creates the cluster, then answers `start PORT`, `stop`, `pause` and `resume` with one
/// line each (`ok` or `error: …`); on end of input it stops the server at once and deletes everything.
/// `$1` is the directory of the PostgreSQL binaries.
const CONTROL: &str = r#"
bin=$1
dir=$(mktemp -d "${TMPDIR:-/tmp}/openmail-pg.XXXXXX") || { echo "error: mktemp failed"; exit 1; }
cleanup() {
    # A paused server (a test that failed before resuming it) would never act on the stop.
    if [ -f "$dir/data/postmaster.pid" ]; then
        pid=$(head -n 1 "$dir/data/postmaster.pid")
        kill -s CONT "$pid" $(pgrep -P "$pid") 2>/dev/null
    fi
    "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1
    rm -rf "$dir"
}
trap cleanup EXIT
if ! "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1; then
    echo "error: initdb failed: $(tail -n 5 "$dir/initdb.log" | tr '\n' ' ')"
    exit 1
fi
echo "ok"
while read -r command port; do
    case $command in
    start)
        : >"$dir/log"
        if "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w -t 60 \
            -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c max_connections=300" \
            start >/dev/null 2>&1; then
            echo "ok"
        else
            echo "error: $(tail -n 5 "$dir/log" | tr '\n' ' ')"
        fi
        ;;
    stop)
        if "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1; then
            echo "ok"
        else
            echo "error: pg_ctl stop failed"
        fi
        ;;
    pause | resume)
        signal=STOP
        [ "$command" = resume ] && signal=CONT
        pid=$(head -n 1 "$dir/data/postmaster.pid")
        # The postmaster and every backend: no connection gets an answer.
        if kill -s $signal "$pid" $(pgrep -P "$pid"); then
            echo "ok"
        else
            echo "error: kill -s $signal failed"
        fi
        ;;
    *) echo "error: unknown command $command" ;;
    esac
done
"#;

/// A PostgreSQL of one test's own. Dropping it stops the server and deletes its files.
pub struct PostgresServer {
    control: Child,
    commands: Option<ChildStdin>,
    replies: BufReader<ChildStdout>,
    port: u16,
}

impl PostgresServer {
    /// Starts one, or returns `None` (after saying why on stderr) when PostgreSQL is not
    /// installed and `CI` is not set. `what` names the test, for that message.
    pub fn start(what: &str) -> Option<Self> {
        let Some(bin) = find_binaries() else {
            skip_or_fail(what);
            return None;
        };
        let mut command = if running_as_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", "sh"]);
            command
        } else {
            Command::new("sh")
        };
        let mut control = command
            .args(["-c", CONTROL, "sh"])
            .arg(&bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("sh (or runuser) could not be started");
        let commands = control.stdin.take();
        let replies = BufReader::new(control.stdout.take().expect("piped stdout"));
        let mut server = Self {
            control,
            commands,
            replies,
            port: 0,
        };
        server.expect_ok("initdb");
        // A port that was free a moment ago can be taken before PostgreSQL binds it.
        let mut last_error = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.command(&format!("start {}", server.port)) {
                Ok(()) => return Some(server),
                Err(error) => last_error = error,
            }
        }
        panic!("PostgreSQL did not start: {last_error}");
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Stops the server (a fast shutdown: connections are closed, committed data stays).
    pub fn stop(&mut self) {
        self.expect_ok("stop");
    }

    /// Starts it again, on the same port, with the same data.
    pub fn restart(&mut self) {
        let command = format!("start {}", self.port);
        self.expect_ok(&command);
    }

    /// Stops every process of the server (`SIGSTOP`): connections stay open and the kernel
    /// still accepts new ones, but nothing is answered, as with a database that hangs.
    pub fn pause(&mut self) {
        self.expect_ok("pause");
    }

    /// Lets a paused server run again (`SIGCONT`).
    pub fn resume(&mut self) {
        self.expect_ok("resume");
    }

    fn expect_ok(&mut self, command: &str) {
        let result = if command == "initdb" {
            self.reply()
        } else {
            self.command(command)
        };
        if let Err(error) = result {
            panic!("PostgreSQL `{command}` failed: {error}");
        }
    }

    fn command(&mut self, command: &str) -> Result<(), String> {
        let commands = self
            .commands
            .as_mut()
            .expect("the control script is running");
        writeln!(commands, "{command}").map_err(|error| error.to_string())?;
        commands.flush().map_err(|error| error.to_string())?;
        self.reply()
    }

    fn reply(&mut self) -> Result<(), String> {
        let mut line = String::new();
        match self.replies.read_line(&mut line) {
            Ok(0) => Err("the control script ended".to_owned()),
            Ok(_) if line.trim_end() == "ok" => Ok(()),
            Ok(_) => Err(line.trim_end().to_owned()),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        // End of input: the script stops the server and deletes its directory.
        drop(self.commands.take());
        let _ = self.control.wait();
    }
}

/// Where [`database`] creates databases: a server shared by the test binary, or the one
/// `OPENMAIL_TEST_POSTGRES_URL` names.
enum Shared {
    Own(Mutex<PostgresServer>),
    External(String),
}

static SHARED: OnceLock<Option<Shared>> = OnceLock::new();
static DATABASES: AtomicU64 = AtomicU64::new(0);

/// A fresh, empty database's URL, or `None` (after saying why on stderr) when there is no
/// PostgreSQL and `CI` is not set.
pub async fn database(what: &str) -> Option<String> {
    let shared = SHARED.get_or_init(|| match std::env::var(URL_VARIABLE) {
        Ok(url) => Some(Shared::External(url)),
        Err(_) => PostgresServer::start("the PostgreSQL tests")
            .map(|server| Shared::Own(Mutex::new(server))),
    });
    let Some(shared) = shared else {
        skip_or_fail(what);
        return None;
    };
    let admin_url = match shared {
        Shared::Own(server) => server.lock().unwrap().url("postgres"),
        Shared::External(url) => url.clone(),
    };
    let name = format!(
        "openmail_test_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    create_database(&admin_url, &name).await;
    Some(replace_database(&admin_url, &name))
}

/// Creates `name` on the server at `admin_url`.
pub async fn create_database(admin_url: &str, name: &str) {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to {admin_url}: {error}"));
    let connection = tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .unwrap_or_else(|error| panic!("CREATE DATABASE {name} failed: {error}"));
    drop(client);
    let _ = connection.await;
}

/// `url` with its database replaced by `name`.
fn replace_database(url: &str, name: &str) -> String {
    let without_query = url.split('?').next().unwrap_or(url);
    let authority_start = without_query.find("://").map_or(0, |index| index + 3);
    let base = match without_query[authority_start..].find('/') {
        Some(slash) => &without_query[..authority_start + slash],
        None => without_query,
    };
    format!("{base}/{name}")
}

fn skip_or_fail(what: &str) {
    let message = format!(
        "SKIPPED {what}: PostgreSQL is not installed; install it \
         (apt-get install postgresql) or set {URL_VARIABLE}=postgres://USER@HOST:PORT/DB \
         to run the PostgreSQL tests"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{message} (CI is set, so this is a failure)");
    }
    // Straight to the terminal: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "\n!!!!! {message} !!!!!\n");
}

/// The directory holding `initdb` and `pg_ctl`: from `PATH`, or the newest of Debian's
/// `/usr/lib/postgresql/<version>/bin`.
fn find_binaries() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .and_then(|path| std::env::split_paths(&path).find(|directory| has_binaries(directory)));
    on_path.or_else(|| {
        let versions = std::fs::read_dir("/usr/lib/postgresql").ok()?;
        versions
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version: u32 = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                has_binaries(&bin).then_some((version, bin))
            })
            .max_by_key(|(version, _)| *version)
            .map(|(_, bin)| bin)
    })
}

fn has_binaries(directory: &Path) -> bool {
    directory.join("initdb").is_file() && directory.join("pg_ctl").is_file()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free loopback port")
}
