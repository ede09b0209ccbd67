//! PostgreSQL clusters of a test's own: `initdb` into a temporary directory on a free port
//! (so that stopping one disturbs no other test), and streaming replicas of them
//! (`pg_basebackup -R`).

use std::path::PathBuf;
use std::process::Command;

/// A PostgreSQL cluster in a temporary directory, stopped and removed on drop.
pub struct Cluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl Cluster {
    /// `None` (loudly) when PostgreSQL's server programs are not installed; in CI that
    /// fails instead.
    pub fn start() -> Option<Cluster> {
        if Command::new("initdb").arg("--version").output().is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "initdb must be installed in CI: the cluster tests may not be skipped"
            );
            eprintln!("*** SKIPPED: initdb is not installed ***");
            return None;
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let cluster = Cluster { dir, port };
        // PostgreSQL refuses to run as root: then the cluster belongs to `postgres`.
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path()));
        }
        run(cluster
            .command("initdb")
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-D"])
            .arg(cluster.data()));
        cluster.pg_ctl("start");
        Some(cluster)
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// A command run as the cluster's owner.
    pub fn command(&self, program: &str) -> Command {
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--", program]);
            command
        } else {
            Command::new(program)
        }
    }

    pub fn pg_ctl(&self, action: &str) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        run(self
            .command("pg_ctl")
            .args(["-D"])
            .arg(self.data())
            .args(["-o", &options, "-m", "fast", "-w", "-l"])
            .arg(self.dir.path().join("log"))
            .arg(action));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D"])
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn run(command: &mut Command) {
    let output = command.output().expect("runs");
    assert!(output.status.success(), "{command:?}: {output:?}");
}

impl Cluster {
    /// A streaming replica of this cluster (`pg_basebackup -R`), started on a port of its own.
    pub fn replica(&self) -> Cluster {
        let replica = Cluster {
            dir: tempfile::tempdir().expect("temp dir"),
            port: free_port(),
        };
        if is_root() {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(replica.dir.path()));
        }
        run(replica
            .command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
                "-X",
                "stream",
                "-R",
                "-p",
            ])
            .arg(self.port.to_string())
            .arg("-D")
            .arg(replica.data()));
        replica.pg_ctl("start");
        replica
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
