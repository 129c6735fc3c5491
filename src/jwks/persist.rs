//! Persistence of each good key set to `cache_dir`, so a restart during an IdP outage
//! serves at once: written atomically (temp file + rename), read back only when it belongs to
//! the same provider and issuer and is within `max_stale`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::freshness::MirrorSettings;
use super::{unix_secs, KeySet, ProviderKeys};

/// Persisted form of a key set.
#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    version: u32,
    provider: String,
    issuer: String,
    fetched_at: u64,
    fresh_until: u64,
    jwks: serde_json::Value,
}

pub(crate) fn wall_clock(at: Instant) -> SystemTime {
    let now = Instant::now();
    if at >= now {
        SystemTime::now() + (at - now)
    } else {
        SystemTime::now() - (now - at)
    }
}

pub(crate) fn persist(
    path: &Path,
    keys: &ProviderKeys,
    set: &KeySet,
    fresh_until: Instant,
) -> std::io::Result<()> {
    let doc = Persisted {
        version: 1,
        provider: keys.name.clone(),
        issuer: keys.issuer.clone(),
        fetched_at: unix_secs(SystemTime::now()),
        fresh_until: unix_secs(wall_clock(fresh_until)),
        jwks: set.to_jwks(),
    };
    let text = serde_json::to_vec(&doc).map_err(std::io::Error::other)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// Loads a persisted set if it belongs to this provider and is within `max_stale`.
pub(crate) fn restore(
    path: &Path,
    keys: &ProviderKeys,
    s: &MirrorSettings,
) -> Result<Option<(KeySet, Instant)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let doc: Persisted =
        serde_json::from_slice(&bytes).map_err(|e| format!("not a key cache file: {e}"))?;
    if doc.version != 1 || doc.provider != keys.name || doc.issuer != keys.issuer {
        return Err(format!(
            "belongs to provider {:?} / issuer {:?}",
            doc.provider, doc.issuer
        ));
    }
    let now_unix = unix_secs(SystemTime::now());
    if now_unix > doc.fresh_until.saturating_add(s.max_stale.as_secs()) {
        return Ok(None);
    }
    let (set, _) = KeySet::from_document(&doc.jwks, &keys.policy).map_err(|e| e.0)?;
    if set.is_empty() {
        return Err("no usable keys".into());
    }
    let now = Instant::now();
    let fresh_until = if doc.fresh_until >= now_unix {
        now + Duration::from_secs(doc.fresh_until - now_unix)
    } else {
        now.checked_sub(Duration::from_secs(now_unix - doc.fresh_until))
            .unwrap_or(now)
    };
    Ok(Some((set, fresh_until)))
}
