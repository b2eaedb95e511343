//! One stored value and what the node keeps with it, as bytes on disk.
//!
//! `[format 1][expires u64][version u64][written u64][type len u16][type][meta len u16][meta][value]`,
//! integers little-endian, times in Unix milliseconds (`expires` 0: never).

use bytes::Bytes;

const FORMAT: u8 = 1;
const FIXED: usize = 1 + 8 + 8 + 8;

/// A value as the store answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Bytes,
    pub content_type: String,
    /// Opaque text the writer attached (`X-KV-Metadata`).
    pub metadata: Option<String>,
    /// Unix ms after which the key is gone.
    pub expires_at: Option<u64>,
    /// Changes with every write of the key (the ETag).
    pub version: u64,
    /// Unix ms of the write (Last-Modified).
    pub written_at: u64,
}

impl Entry {
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at.is_some_and(|t| t <= now_ms)
    }
}

pub fn encode(e: &Entry) -> Vec<u8> {
    let meta = e.metadata.as_deref().unwrap_or("");
    let mut out = Vec::with_capacity(FIXED + 4 + e.content_type.len() + meta.len() + e.value.len());
    out.push(FORMAT);
    out.extend_from_slice(&e.expires_at.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&e.version.to_le_bytes());
    out.extend_from_slice(&e.written_at.to_le_bytes());
    for text in [e.content_type.as_str(), meta] {
        // Both are bounded far below 64 KiB by the namespace limits and header sizes.
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    out.extend_from_slice(&e.value);
    out
}

/// What a listing shows of a record, without copying its value: expiry, metadata and
/// the value's size.
pub fn head(raw: &[u8]) -> Option<(Option<u64>, Option<String>, usize)> {
    if raw.first() != Some(&FORMAT) || raw.len() < FIXED {
        return None;
    }
    let mut at = FIXED;
    let mut text = || -> Option<&str> {
        let len = u16::from_le_bytes(raw.get(at..at + 2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(raw.get(at + 2..at + 2 + len)?).ok()?;
        at += 2 + len;
        Some(s)
    };
    text()?;
    let metadata = Some(text()?).filter(|m| !m.is_empty()).map(str::to_string);
    Some((expires_at(raw), metadata, raw.len() - at))
}

/// The expiry alone (the sweep and the index need no more).
pub fn expires_at(raw: &[u8]) -> Option<u64> {
    let t = u64::from_le_bytes(raw.get(1..9)?.try_into().ok()?);
    (t != 0).then_some(t)
}

/// `None` for bytes this version did not write (a damaged or foreign record): the key
/// reads as absent rather than as garbage.
pub fn decode(raw: &[u8]) -> Option<Entry> {
    if raw.first() != Some(&FORMAT) || raw.len() < FIXED {
        return None;
    }
    let u64_at = |at: usize| u64::from_le_bytes(raw[at..at + 8].try_into().expect("8 bytes"));
    let mut at = FIXED;
    let mut text = || -> Option<String> {
        let len = u16::from_le_bytes(raw.get(at..at + 2)?.try_into().ok()?) as usize;
        let s = std::str::from_utf8(raw.get(at + 2..at + 2 + len)?).ok()?;
        at += 2 + len;
        Some(s.to_string())
    };
    let content_type = text()?;
    let metadata = Some(text()?).filter(|m| !m.is_empty());
    let expires = u64_at(1);
    Some(Entry {
        value: Bytes::copy_from_slice(&raw[at..]),
        content_type,
        metadata,
        expires_at: (expires != 0).then_some(expires),
        version: u64_at(9),
        written_at: u64_at(17),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_what_it_did_not_write() {
        let e = Entry {
            value: Bytes::from_static(b"{\"name\":\"ada\"}"),
            content_type: "application/json".into(),
            metadata: Some("{\"v\":2}".into()),
            expires_at: Some(1_800_000_000_000),
            version: 42,
            written_at: 1_700_000_000_000,
        };
        let raw = encode(&e);
        assert_eq!(decode(&raw), Some(e.clone()));
        assert_eq!(expires_at(&raw), Some(1_800_000_000_000));
        let plain = Entry {
            metadata: None,
            expires_at: None,
            value: Bytes::new(),
            ..e
        };
        assert_eq!(decode(&encode(&plain)), Some(plain));
        for bad in [&b""[..], b"\x02", &raw[..10], &raw[..FIXED + 1]] {
            assert_eq!(decode(bad), None, "{bad:?}");
        }
    }
}
