//! Runs the real binary with its own data dir per test.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub struct Env {
    _dir: tempfile::TempDir,
    pub data: PathBuf,
    /// The PostgreSQL database this node uses (SIPWARD_DATABASE_URL); None: SQLite in
    /// the data dir.
    pub database: Option<String>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        Self {
            _dir: dir,
            data,
            database: None,
        }
    }

    /// A node on the PostgreSQL database `url`, with its own data dir. Given `key_of`,
    /// that node's secrets key is copied in first (every node needs the same one).
    pub fn on_postgres(url: &str, key_of: Option<&Env>) -> Self {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let mut env = Self::new();
        env.database = Some(url.to_owned());
        if let Some(other) = key_of {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .recursive(true)
                .create(&env.data)
                .expect("data dir");
            let key = env.data.join("secrets.key");
            std::fs::copy(other.data.join("secrets.key"), &key).expect("copy the secrets key");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod key");
        }
        env
    }

    /// Points `command` at this node's database. A node on PostgreSQL is named after its
    /// data dir (unless `--node-name` says otherwise): nodes sharing a database need
    /// names of their own, and the host name is every test node's.
    pub fn database_env(&self, command: &mut Command) {
        match &self.database {
            Some(url) => {
                command.env("SIPWARD_DATABASE_URL", url);
                command.env("SIPWARD_NODE_NAME", self.node_name());
            }
            None => {
                command.env_remove("SIPWARD_DATABASE_URL");
            }
        };
    }

    /// This data dir's own node name (`node-` and its temp dir's letters and digits).
    pub fn node_name(&self) -> String {
        let dir = self._dir.path().file_name().unwrap_or_default();
        let word: String = dir
            .to_string_lossy()
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        format!("node-{}", word.to_ascii_lowercase())
    }

    /// A data dir created by the CLI, with `config` as its `sipward.toml`.
    pub fn with_config(config: &str) -> Self {
        let env = Self::new();
        env.ok(&["ext", "list"]);
        std::fs::write(env.data.join("sipward.toml"), config).expect("config");
        env
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.data.parent().expect("parent").join(name)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_sipward"));
        c.arg("--data")
            .arg(&self.data)
            .args(args)
            .env_remove("SIPWARD_DATA")
            .env_remove("SIPWARD_CONFIG");
        self.database_env(&mut c);
        c
    }

    /// Starts the binary without waiting (stdout and stderr piped).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sipward")
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with_stdin(args, "")
    }

    pub fn run_with_stdin(&self, args: &[&str], stdin: &str) -> Run {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sipward");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(stdin.as_bytes())
            .expect("write stdin");
        let out: Output = child.wait_with_output().expect("wait");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs and requires exit 0; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, 0,
            "sipward {args:?} failed:\n{}{}",
            r.stdout, r.stderr
        );
        r.stdout
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.ok(args);
        serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}):\n{out}"))
    }

    /// Runs and requires the exit code; returns stderr, which must be one `error:` line.
    pub fn fails(&self, args: &[&str], code: i32) -> String {
        let r = self.run(args);
        assert_eq!(
            r.code, code,
            "sipward {args:?}: expected exit {code}\nstdout: {}\nstderr: {}",
            r.stdout, r.stderr
        );
        assert!(
            r.stderr.contains("error: "),
            "{args:?}: no error sentence:\n{}",
            r.stderr
        );
        assert!(
            !r.stderr.contains("panicked"),
            "{args:?} panicked:\n{}",
            r.stderr
        );
        r.stderr
    }

    /// Everything stored, as the JSON listings show it (to prove a failed command changed nothing).
    pub fn snapshot(&self) -> Value {
        serde_json::json!({
            "ext": self.json(&["ext", "list", "--json"]),
            "gateway": self.json(&["gateway", "list", "--json"]),
            "provider": self.json(&["provider", "list", "--json"]),
        })
    }
}

pub fn rules_of(findings: &Value) -> Vec<String> {
    findings
        .as_array()
        .expect("findings array")
        .iter()
        .map(|f| f["rule"].as_str().expect("rule").to_owned())
        .collect()
}

pub fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}
