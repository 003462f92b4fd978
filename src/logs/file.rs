//! Consul's `log_file`: the log written to a file that is rotated when it would pass
//! `log_rotate_bytes` or has been open for `log_rotate_duration`, keeping
//! `log_rotate_max_files` rotated files (Consul's `logging/logfile.go`): the active file keeps
//! its name, a rotated one is renamed `<name>-<unix nanoseconds>.log`.
//!
//! Hand-written because no maintained crate rotates on both size and age with Consul's
//! retention: `file-rotate` rotates on one of them, `tracing-appender` on clock periods only.
//! Each event is written whole (it is collected first), so a rotation never splits a line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogConfig;

/// A `tracing_subscriber` writer appending to the rotated log file; cheap to clone.
#[derive(Clone)]
pub struct LogFile {
    inner: Arc<Mutex<Active>>,
}

struct Active {
    path: PathBuf,
    file: File,
    /// Bytes in the active file.
    written: u64,
    opened: Instant,
    config: LogConfig,
}

impl LogFile {
    /// Opens (appending to) `config.file`, creating its directory. Errors: the directory or
    /// file cannot be created or opened.
    pub fn open(config: &LogConfig, path: &Path) -> std::io::Result<LogFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(LogFile {
            inner: Arc::new(Mutex::new(Active {
                path: path.to_path_buf(),
                file,
                written,
                opened: Instant::now(),
                config: config.clone(),
            })),
        })
    }
}

impl Active {
    fn write_line(&mut self, line: &[u8]) -> std::io::Result<()> {
        let too_big = self.config.rotate_bytes > 0
            && self.written > 0
            && self.written + line.len() as u64 > self.config.rotate_bytes;
        let too_old = self.opened.elapsed() >= self.config.rotate_duration;
        if too_big || too_old {
            // A rotation that fails (the file moved or deleted under us, a full directory)
            // must not stop file logging: say so once per attempt on stderr and go on with a
            // fresh file at the same name; the next rotation is due after a full period.
            if let Err(e) = self.rotate() {
                eprintln!(
                    "warning: rotating the log file {}: {e}",
                    self.path.display()
                );
                if let Ok(file) = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                {
                    self.file = file;
                }
                self.written = 0;
                self.opened = Instant::now();
            }
        }
        self.file.write_all(line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let rotated = sibling(&self.path, &nanos.to_string());
        std::fs::rename(&self.path, &rotated)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.written = 0;
        self.opened = Instant::now();
        if let Err(e) = self.prune() {
            eprintln!(
                "warning: removing old log files beside {}: {e}",
                self.path.display()
            );
        }
        Ok(())
    }

    /// Deletes the oldest rotated files beyond `rotate_max_files` (0 keeps all).
    fn prune(&self) -> std::io::Result<()> {
        let keep = match self.config.rotate_max_files {
            0 => return Ok(()),
            -1 => 0,
            n => n as usize,
        };
        let mut rotated = rotated_files(&self.path)?;
        rotated.sort();
        let excess = rotated.len().saturating_sub(keep);
        for (_, path) in rotated.into_iter().take(excess) {
            std::fs::remove_file(path)?;
        }
        Ok(())
    }
}

/// `dir/name.log` → `dir/name-<suffix>.log`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().unwrap_or_default().to_string_lossy();
    path.with_file_name(format!("{stem}-{suffix}.{ext}"))
}

/// The rotated files of `path`, with their timestamps.
fn rotated_files(path: &Path) -> std::io::Result<Vec<(u128, PathBuf)>> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let ext = path.extension().unwrap_or_default().to_string_lossy();
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let stamp = name
            .strip_prefix(&format!("{stem}-"))
            .and_then(|rest| rest.strip_suffix(&format!(".{ext}")))
            .and_then(|digits| digits.parse::<u128>().ok());
        if let Some(stamp) = stamp {
            found.push((stamp, entry.path()));
        }
    }
    Ok(found)
}

/// One event's bytes, written to the file when the formatter is done with it.
pub struct Event {
    file: LogFile,
    bytes: Vec<u8>,
}

impl Write for Event {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.bytes.is_empty() {
            return;
        }
        let mut active = self.file.inner.lock().unwrap_or_else(|e| e.into_inner());
        // A full disk must not stop the agent; stderr still has the line.
        let _ = active.write_line(&self.bytes);
    }
}

impl<'a> MakeWriter<'a> for LogFile {
    type Writer = Event;

    fn make_writer(&'a self) -> Event {
        Event {
            file: self.clone(),
            bytes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(bytes: u64, max_files: i64) -> LogConfig {
        LogConfig {
            json: false,
            file: None,
            rotate_bytes: bytes,
            rotate_duration: Duration::from_secs(3600),
            rotate_max_files: max_files,
        }
    }

    fn log(file: &LogFile, line: &str) {
        let mut event = file.make_writer();
        event.write_all(line.as_bytes()).unwrap();
    }

    #[test]
    fn rotates_before_passing_the_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beacon.log");
        let file = LogFile::open(&config(25, 2), &path).unwrap();
        for i in 0..5 {
            log(&file, &format!("line {i} of twenty\n"));
        }
        let active = std::fs::read_to_string(&path).unwrap();
        assert_eq!(active, "line 4 of twenty\n");
        let mut rotated = rotated_files(&path).unwrap();
        rotated.sort();
        assert_eq!(rotated.len(), 2, "only the newest 2 are kept");
        let newest = std::fs::read_to_string(&rotated[1].1).unwrap();
        assert_eq!(newest, "line 3 of twenty\n", "a line is never split");
    }

    #[test]
    fn a_rotation_that_fails_does_not_stop_file_logging() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beacon.log");
        let file = LogFile::open(&config(10, 0), &path).unwrap();
        log(&file, "first line\n");
        // Moved away by someone else: the rename of the next rotation fails.
        std::fs::remove_file(&path).unwrap();
        log(&file, "second\n");
        log(&file, "third\n");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("second") || text.contains("third"),
            "{text:?}"
        );
        assert!(
            rotated_files(&path).unwrap().len() <= 1,
            "no rotation storm"
        );
    }

    #[test]
    fn rotates_when_old_and_minus_one_keeps_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("beacon.log");
        let mut c = config(0, -1);
        c.rotate_duration = Duration::ZERO;
        let file = LogFile::open(&c, &path).unwrap();
        log(&file, "a\n");
        log(&file, "b\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "b\n");
        assert!(rotated_files(&path).unwrap().is_empty());
    }
}
