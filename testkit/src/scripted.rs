//! `scripts/stack.sh` (what `make up` runs) in a scratch folder on free ports, so a test or a
//! bench can run the whole `make up` layout next to a developer's own stack.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use anyhow::{Context as _, Result};

use crate::free_port;

fn stack_sh() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack.sh")
}

type StackEnv = Vec<(&'static str, String)>;

/// The environment of every scripted stack not yet taken down, so that a bench stopped by a
/// signal (which skips `Drop`) can still take them down: `stack.sh` detaches its services,
/// and left running they load the machine under the next measurement.
static LIVE: Mutex<Vec<StackEnv>> = Mutex::new(Vec::new());

/// Start taking down every scripted stack this process started and has not dropped yet,
/// and its scratch folder, in processes of their own that outlive this one: for a process
/// about to exit without unwinding.
pub fn take_down_scripted_in_background() {
    let live = LIVE
        .lock()
        .map(|mut l| std::mem::take(&mut *l))
        .unwrap_or_default();
    for env in live {
        let _ = Command::new("bash")
            .arg("-c")
            .arg(r#"bash "$0" down; rm -rf "$SWITCHYARD_RUN_DIR""#)
            .arg(stack_sh())
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }
}

fn run_stack_sh(env: &StackEnv, verb: &str) -> Result<Output> {
    Command::new("bash")
        .arg(stack_sh())
        .arg(verb)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .with_context(|| format!("running stack.sh {verb}"))
}

/// Seven consecutive free ports for the metrics endpoints.
fn free_metrics_base() -> Result<u16> {
    crate::free_ports(7)
}

/// One scratch `make up` stack; `down` runs when it is dropped.
pub struct ScriptedStack {
    env: StackEnv,
    run: tempfile::TempDir,
}

impl ScriptedStack {
    /// A stack whose binaries come from `bin` (a `target/<profile>` folder); not started yet.
    pub fn new(bin: &Path) -> Result<Self> {
        let run = tempfile::tempdir().context("run dir")?;
        let env = vec![
            ("SWITCHYARD_RUN_DIR", run.path().display().to_string()),
            ("SWITCHYARD_BIN", bin.display().to_string()),
            ("SWITCHYARD_BROKER_PORT", free_port()?.to_string()),
            ("SWITCHYARD_CONTROLLER_PORT", free_port()?.to_string()),
            ("SWITCHYARD_REGISTRY_PORT", free_port()?.to_string()),
            ("SWITCHYARD_GATEWAY_PORT", free_port()?.to_string()),
            ("SWITCHYARD_API_PORT", free_port()?.to_string()),
            ("SWITCHYARD_PROMETHEUS_PORT", free_port()?.to_string()),
            ("SWITCHYARD_METRICS_BASE", free_metrics_base()?.to_string()),
        ];
        if let Ok(mut live) = LIVE.lock() {
            live.push(env.clone());
        }
        Ok(ScriptedStack { env, run })
    }

    /// Run `stack.sh VERB` (up, down, status) and return what it printed.
    pub fn sh(&self, verb: &str) -> Result<Output> {
        run_stack_sh(&self.env, verb)
    }

    /// The port given to stack.sh as `name` (e.g. `SWITCHYARD_API_PORT`).
    pub fn port(&self, name: &str) -> Result<u16> {
        self.env
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse().ok())
            .with_context(|| format!("no port {name}"))
    }

    /// The scratch run folder (logs/, pids/, data/, api-token).
    pub fn run_dir(&self) -> &Path {
        self.run.path()
    }

    /// Every service with a pid file: (name, pid).
    pub fn pids(&self) -> Vec<(String, u32)> {
        std::fs::read_dir(self.run.path().join("pids"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| {
                        let name = e
                            .file_name()
                            .to_string_lossy()
                            .trim_end_matches(".pid")
                            .to_string();
                        let pid = std::fs::read_to_string(e.path())
                            .ok()?
                            .trim()
                            .parse()
                            .ok()?;
                        Some((name, pid))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for ScriptedStack {
    fn drop(&mut self) {
        let _ = self.sh("down");
        if let Ok(mut live) = LIVE.lock() {
            live.retain(|env| *env != self.env);
        }
    }
}
