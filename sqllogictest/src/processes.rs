//! Starting and stopping the servers the tests talk to: `sluice serve` and PostgreSQL.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tempfile::TempDir;

/// A `sluice serve` child process on loopback, killed on drop.
pub struct SluiceServer {
    child: Child,
    /// The pgwire port it listens on.
    pub port: u16,
    /// The HTTP port it listens on.
    pub http_port: u16,
    /// The line it printed after recovering its data directory.
    pub recovery: String,
    _dir: Option<TempDir>,
}

impl SluiceServer {
    /// Starts `bin serve` on free ports over a fresh data directory and waits until it says it
    /// is ready.
    pub fn start(bin: &Path) -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut server = Self::start_in(bin, &dir.path().join("data"), &[])?;
        server._dir = Some(dir);
        Ok(server)
    }

    /// Starts `bin serve` over data directory `data` (created if missing, recovered if not),
    /// with `extra` arguments, and waits until it says it is ready.
    pub fn start_in(bin: &Path, data: &Path, extra: &[&str]) -> std::io::Result<Self> {
        Self::start_with_env(bin, data, extra, &[])
    }

    /// [`SluiceServer::start_in`] with environment variables `env` set for the server.
    pub fn start_with_env(bin: &Path, data: &Path, extra: &[&str], env: &[(String, String)]) -> std::io::Result<Self> {
        let mut child = Command::new(bin)
            .args(["serve", "--pg-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display())))?;
        let stdout = child.stdout.take().ok_or_else(|| std::io::Error::other("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let mut recovery = String::new();
        let (port, http_port) = loop {
            let Some(line) = lines.next() else {
                let _ = child.kill();
                let _ = child.wait();
                return Err(std::io::Error::other("sluice exited before it was ready"));
            };
            let line = line?;
            if line.starts_with("sluice recovered ") {
                recovery = line.clone();
            }
            // "sluice serving pgwire on 127.0.0.1:P and HTTP on 127.0.0.1:Q  (connect: ...)"
            if let Some(rest) = line.strip_prefix("sluice serving pgwire on ") {
                let words: Vec<&str> = rest.split_whitespace().collect();
                let port_of = |w: Option<&&str>| w.and_then(|a| a.rsplit(':').next()).and_then(|p| p.parse::<u16>().ok());
                match (port_of(words.first()), port_of(words.get(4))) {
                    (Some(p), Some(h)) => break (p, h),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(std::io::Error::other(format!("cannot read the ports from {line:?}")));
                    }
                }
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self { child, port, http_port, recovery, _dir: None })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL (no chance to checkpoint or flush) and reaps it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGTERM (a clean shutdown) and waits for it to exit.
    pub fn stop(mut self) -> std::io::Result<std::process::ExitStatus> {
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        self.child.wait()
    }
}

impl Drop for SluiceServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throw-away PostgreSQL cluster on 127.0.0.1, stopped on drop.
///
/// PostgreSQL refuses to run as root, so when the tests run as root the cluster is created and
/// started as the `postgres` user through `runuser`.
pub struct PostgresCluster {
    bin_dir: PathBuf,
    data: TempDir,
    /// The port it listens on.
    pub port: u16,
}

fn find_postgres_bin() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    candidates.sort();
    candidates.pop()
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PostgresCluster {
    /// Starts a cluster, or returns `Ok(None)` if PostgreSQL is not installed.
    pub fn start() -> std::io::Result<Option<Self>> {
        let Some(bin_dir) = find_postgres_bin() else { return Ok(None) };
        let data = tempfile::Builder::new().prefix("sluice-pg").tempdir()?;
        let root = is_root();
        if root {
            run(Command::new("chown").arg("-R").arg("postgres").arg(data.path()))?;
        }
        let as_postgres = |program: &str| {
            if root {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(bin_dir.join(program));
                c
            } else {
                Command::new(bin_dir.join(program))
            }
        };
        let cluster = data.path().join("cluster");
        run(as_postgres("initdb")
            .arg("-D")
            .arg(&cluster)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C.UTF-8"]))?;
        let port = free_port()?;
        run(as_postgres("pg_ctl")
            .arg("-D")
            .arg(&cluster)
            .arg("-l")
            .arg(data.path().join("server.log"))
            .arg("-w")
            .arg("-o")
            .arg(format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c TimeZone=UTC",
                data.path().display()
            ))
            .arg("start"))?;
        Ok(Some(Self { bin_dir, data, port }))
    }
}

fn run(cmd: &mut Command) -> std::io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(format!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

impl Drop for PostgresCluster {
    fn drop(&mut self) {
        let cluster = self.data.path().join("cluster");
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(self.bin_dir.join("pg_ctl"));
            c
        } else {
            Command::new(self.bin_dir.join("pg_ctl"))
        };
        let _ = cmd.arg("-D").arg(cluster).args(["-m", "immediate", "stop"]).output();
    }
}

/// A Kafka-API broker (`tansu`, in-memory) on 127.0.0.1, killed on drop.
///
/// Found at `$TANSU_BIN`, else `~/.cache/tansu-0.6.0/bin/tansu` (where `scripts/test.sh` and
/// `../shared/kafka/start-broker.sh` install it). Tansu's known bug (a wrong high watermark and
/// lost records when one produce request carries several records) means every producer that
/// writes to it must send one record per batch; see `../shared/kafka-broker.md`.
pub struct KafkaBroker {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl KafkaBroker {
    /// The broker binary, if installed.
    pub fn binary() -> Option<PathBuf> {
        if let Some(bin) = std::env::var_os("TANSU_BIN") {
            return Some(PathBuf::from(bin));
        }
        let home = std::env::var_os("HOME")?;
        let bin = PathBuf::from(home).join(".cache/tansu-0.6.0/bin/tansu");
        bin.exists().then_some(bin)
    }

    /// Starts a broker on a free loopback port and waits until it accepts connections; None
    /// when no broker binary is installed.
    pub fn start() -> std::io::Result<Option<Self>> {
        let Some(bin) = Self::binary() else { return Ok(None) };
        let port = free_port()?;
        let url = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&bin)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| std::io::Error::new(e.kind(), format!("cannot start {}: {e}", bin.display())))?;
        let mut broker = Self { child, port };
        for _ in 0..120 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(broker));
            }
            if let Some(status) = broker.child.try_wait()? {
                return Err(std::io::Error::other(format!("the Kafka broker exited: {status}")));
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = broker.child.kill();
        Err(std::io::Error::other("the Kafka broker did not open its port"))
    }

    /// `host:port` for clients.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An S3-compatible server (moto's, from PyPI) on 127.0.0.1, killed on drop.
///
/// moto is installed by `scripts/test.sh`; it keeps objects in memory and checks request
/// shapes, not credentials, which is what a test of Sluice's S3 client needs.
pub struct S3Server {
    child: Child,
    /// The port it listens on.
    pub port: u16,
}

impl S3Server {
    /// Starts a server on a free loopback port and waits until it accepts connections; None
    /// when moto is not installed.
    pub fn start() -> std::io::Result<Option<Self>> {
        let installed = Command::new("python3")
            .args(["-c", "import moto.server"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return Ok(None);
        }
        let port = free_port()?;
        let child = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut server = Self { child, port };
        for _ in 0..240 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Some(server));
            }
            if let Some(status) = server.child.try_wait()? {
                return Err(std::io::Error::other(format!("the S3 server exited: {status}")));
            }
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
        let _ = server.child.kill();
        Err(std::io::Error::other("the S3 server did not open its port"))
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The `AWS_*` variables that point an S3 client at this server.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", "sluice-test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "sluice-test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs `script` with boto3 (a dependency of moto) bound to this server as `s3`, and
    /// returns what it prints.
    pub fn python(&self, script: &str) -> std::io::Result<String> {
        let program = format!(
            "import boto3, json, sys\ns3 = boto3.client('s3', endpoint_url='{}', aws_access_key_id='sluice-test', \
             aws_secret_access_key='sluice-test', region_name='us-east-1')\n{script}",
            self.endpoint()
        );
        let output = Command::new("python3").args(["-c", &program]).output()?;
        if !output.status.success() {
            return Err(std::io::Error::other(String::from_utf8_lossy(&output.stderr).into_owned()));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Creates bucket `name`.
    pub fn create_bucket(&self, name: &str) -> std::io::Result<()> {
        self.python(&format!("s3.create_bucket(Bucket='{name}')")).map(|_| ())
    }

    /// The keys under `prefix` in `bucket`, sorted.
    pub fn keys(&self, bucket: &str, prefix: &str) -> std::io::Result<Vec<String>> {
        let out = self.python(&format!(
            "keys = []\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'):\n    \
             keys += [o['Key'] for o in page.get('Contents', [])]\nprint(json.dumps(sorted(keys)))"
        ))?;
        serde_json::from_str(out.trim()).map_err(std::io::Error::other)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
