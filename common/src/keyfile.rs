//! A signing key on disk (a station's or the hub's): one line in Go `sumdb/note` private key format
//! (`PRIVATE+KEY+<origin>+<key id>+<base64>`), mode 0600, never overwritten. The key name is the
//! ledger origin, so a key names the one ledger it may sign.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::note::NoteSigner;
use crate::Origin;
use anyhow::{bail, Context, Result};

/// Generates a key for `origin` and writes it to `out`; refuses to overwrite.
pub fn generate(origin: &Origin, out: &Path) -> Result<NoteSigner> {
    let signer = NoteSigner::generate(origin.as_str())?;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => {
                anyhow::anyhow!("refusing to overwrite existing key file {}", out.display())
            }
            _ => anyhow::Error::new(e).context(format!("cannot create key file {}", out.display())),
        })?;
    writeln!(f, "{}", signer.to_private_string())
        .and_then(|_| f.sync_all())
        .and_then(|_| crate::durable::sync_parent(out))
        .with_context(|| format!("cannot write key file {}", out.display()))?;
    Ok(signer)
}

/// Loads a key file and returns the signer and the origin it signs for.
pub fn load(path: &Path) -> Result<(NoteSigner, Origin)> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    if !meta.is_file() {
        bail!("key file {} is not a regular file", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read key file {}", path.display()))?;
    let signer = NoteSigner::parse(&text)
        .with_context(|| format!("key file {} is not a Proofline private key", path.display()))?;
    let origin = Origin::parse(signer.name())
        .with_context(|| format!("key file {} does not name a ledger origin", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "key file is readable by other users; chmod 600 it");
    }
    Ok((signer, origin))
}

/// Loads the key of `origin` (a station's or the hub's, as `who` says in the message): the key
/// file must hold a Proofline key made for exactly that origin.
pub fn load_for(
    path: &Path,
    origin: &Origin,
    who: &str,
) -> std::result::Result<NoteSigner, String> {
    let (signer, key_origin) = load(path).map_err(|e| format!("{e:#}"))?;
    if key_origin != *origin {
        return Err(format!(
            "the key signs for {key_origin}, this {who} is {origin}"
        ));
    }
    Ok(signer)
}
