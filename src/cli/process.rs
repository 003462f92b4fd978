//! The child processes of `lock` and `watch`, run as Consul runs them: through `$SHELL -c` (else
//! `/bin/sh -c`) with the arguments joined by spaces, or with `-shell=false` as they are; the
//! signals that stop Beacon are passed on to them.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use tokio::signal::unix::{Signal, SignalKind, signal};

/// How long a child has between SIGTERM and SIGKILL (Consul's `lockKillGracePeriod`).
pub const KILL_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The command for `args`: `$SHELL -c "args joined by spaces"` (Consul's `ExecScript`), or with
/// `shell` false the first argument run with the others (`ExecSubprocess`).
pub fn command(args: &[String], shell: bool) -> Result<tokio::process::Command, String> {
    if shell {
        let sh = std::env::var("SHELL")
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "/bin/sh".into());
        let mut command = tokio::process::Command::new(sh);
        command.arg("-c").arg(args.join(" "));
        Ok(command)
    } else {
        let (program, rest) = args.split_first().ok_or("need an executable to run")?;
        let mut command = tokio::process::Command::new(program);
        command.args(rest);
        Ok(command)
    }
}

/// Sends `signal` to the process `pid`.
pub fn send(pid: u32, signal: i32) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(std::io::Error::other)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the pid is our own
    // child's, which we have not reaped yet, so it names no other process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A child's exit status as a shell reports it: its exit code, or 128 + the signal that
/// killed it.
pub fn exit_code(status: ExitStatus) -> u8 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(signal)) => 128u8.wrapping_add(signal as u8),
        (None, None) => 1,
    }
}

/// SIGINT and SIGTERM, which end `lock` and `watch` (Consul's shutdown channel).
pub struct Shutdown {
    interrupt: Signal,
    terminate: Signal,
}

impl Shutdown {
    pub fn listen() -> Result<Self, String> {
        let listen = |kind| signal(kind).map_err(|e| format!("Error listening for signals: {e}"));
        Ok(Shutdown {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
        })
    }

    /// The next SIGINT or SIGTERM; returns its number.
    pub async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
        }
    }
}

/// Stops `child`: `signal` first, SIGKILL if it is still running after [`KILL_GRACE`]. Returns
/// its exit status.
pub async fn stop(child: &mut tokio::process::Child, signal: i32) -> Result<ExitStatus, String> {
    if let Some(pid) = child.id()
        && let Err(e) = send(pid, signal)
    {
        eprintln!("Warning, could not forward signal: {e}");
    }
    match tokio::time::timeout(KILL_GRACE, child.wait()).await {
        Ok(status) => status.map_err(|e| format!("Error waiting for the child: {e}")),
        Err(_) => {
            let _ = child.start_kill();
            child
                .wait()
                .await
                .map_err(|e| format!("Error waiting for the child: {e}"))
        }
    }
}
