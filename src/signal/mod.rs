//! The signaling server: rooms, the room protocol, access tokens, ICE server hand-out and the
//! viewer pages. The same code runs embedded in `campeer run` and standalone in `campeer serve`.

pub mod admission;
pub mod host;
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
    /// Others than its owner may read or change the file (or it is not a regular file).
    #[error(
        "token secret file {path} {why}; make it a regular file only its owner can read (chmod 600)"
    )]
    Unsafe {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// No safe default place for the secret file.
    #[error(
        "no place for the token secret: neither STATE_DIRECTORY, XDG_STATE_HOME nor HOME is set; set server.secret-file"
    )]
    NoPlace,
}

/// Where the secret lives when `server.secret-file` is not set: `$STATE_DIRECTORY/secret` under
/// systemd, `/var/lib/campeer/secret` for root, else `~/.local/state/campeer/secret`. `None`
/// when none of these applies (never a shared directory such as /tmp, where anyone could
/// plant a known secret first).
pub fn default_secret_path() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated: use the first.
        let first = dir
            .to_string_lossy()
            .split(':')
            .next()
            .unwrap_or("")
            .to_owned();
        if !first.is_empty() {
            return Some(PathBuf::from(first).join("secret"));
        }
    }
    use std::os::unix::fs::MetadataExt;
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root {
        return Some(PathBuf::from("/var/lib/campeer/secret"));
    }
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })?;
    Some(base.join("campeer/secret"))
}

/// Refuse a secret file that others may read or change: a symlink, a non-regular file, or one
/// with group or other permission bits.
fn check_secret_file(path: &std::path::Path) -> Result<(), SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let unsafe_because = |why: String| SecretError::Unsafe {
        path: path.to_owned(),
        why,
    };
    let meta = std::fs::symlink_metadata(path).map_err(|source| SecretError::Io {
        path: path.to_owned(),
        source,
    })?;
    if !meta.file_type().is_file() {
        return Err(unsafe_because("is not a regular file".into()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(unsafe_because(format!(
            "has mode {mode:03o}: group or others may read or change it"
        )));
    }
    Ok(())
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
    let path = match config.server.secret_file.clone() {
        Some(p) => p,
        None => default_secret_path().ok_or(SecretError::NoPlace)?,
    };
    let io = |source| SecretError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::symlink_metadata(&path) {
        Ok(_) => check_secret_file(&path)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
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
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .map_err(io)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config_with(path: &std::path::Path) -> Config {
        let mut c = Config::default();
        c.server.secret_file = Some(path.to_owned());
        c
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("campeer-secret-{tag}-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn a_new_secret_is_private() {
        let d = temp_dir("new");
        let path = d.join("state/secret");
        let s = load_secret(&config_with(&path)).expect("created");
        assert_eq!(s.len(), 64);
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p).expect("exists").permissions().mode() & 0o777
        };
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&d.join("state")), 0o700);
        assert_eq!(load_secret(&config_with(&path)).expect("read again"), s);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_secret_others_may_read_or_swap_is_refused() {
        let d = temp_dir("unsafe");
        let open = d.join("open");
        std::fs::write(&open, "0123456789abcdef0123").expect("write");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = load_secret(&config_with(&open)).unwrap_err();
        assert!(matches!(err, SecretError::Unsafe { .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
        let link = d.join("link");
        std::os::unix::fs::symlink(&open, &link).expect("symlink");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let err = load_secret(&config_with(&link)).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        load_secret(&config_with(&open)).expect("0600 is fine");
        let _ = std::fs::remove_dir_all(d);
    }
}
