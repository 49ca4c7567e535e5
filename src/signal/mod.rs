//! The signaling server: rooms, the room protocol, access tokens, ICE server hand-out and the
//! viewer pages. The same code runs embedded in `campeer run` and standalone in `campeer serve`.

pub mod admission;
pub mod ice;
pub mod protocol;
pub mod router;
pub mod server;
pub mod token;
pub mod web;

use crate::config::Config;
use std::io::Write;
use std::path::PathBuf;

/// Problems loading the token secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be read or created.
    #[error("token secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Too short to be a secret.
    #[error("token secret in {0} is shorter than 16 characters")]
    TooShort(String),
}

/// Where the secret lives when `server.secret-file` is not set: `$STATE_DIRECTORY/secret` under
/// systemd, `/var/lib/campeer/secret` for root, else `~/.local/state/campeer/secret`.
pub fn default_secret_path() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated: use the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        if !first.is_empty() {
            return PathBuf::from(first).join("secret");
        }
    }
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root {
        return PathBuf::from("/var/lib/campeer/secret");
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("campeer/secret")
}

/// The token secret: `server.secret`, else the secret file (created with 32 random bytes, mode
/// 0600, when missing).
pub fn load_secret(config: &Config) -> Result<Vec<u8>, SecretError> {
    if !config.server.secret.is_empty() {
        if config.server.secret.len() < 16 {
            return Err(SecretError::TooShort("server.secret".into()));
        }
        return Ok(config.server.secret.clone().into_bytes());
    }
    let path = config
        .server
        .secret_file
        .clone()
        .unwrap_or_else(default_secret_path);
    let io = |source| SecretError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let s = text.trim();
            if s.len() < 16 {
                return Err(SecretError::TooShort(path.display().to_string()));
            }
            Ok(s.as_bytes().to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(io)?;
            }
            let secret: String = (0..32)
                .map(|_| format!("{:02x}", rand::random::<u8>()))
                .collect();
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            f.write_all(secret.as_bytes()).map_err(io)?;
            tracing::info!(path = %path.display(), "created a new token secret");
            Ok(secret.into_bytes())
        }
        Err(e) => Err(io(e)),
    }
}
