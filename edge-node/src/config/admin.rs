//! `[admin]`: where the admin API listens and the token it asks for. Kept with the
//! configuration rather than in `admin`: the admin API sits above everything the
//! configuration is made of.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Result;
use serde::Deserialize;

/// `[admin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin API (keep it on a management network or loopback).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Bearer token required by every endpoint but /healthz.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token (first line), instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

fn default_listen() -> SocketAddr {
    "127.0.0.1:9901".parse().expect("static")
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token: None,
            token_file: None,
        }
    }
}

impl AdminSettings {
    /// The token, if the admin API is configured. Without one it does not start: an
    /// admin API nobody can authenticate to, or anybody can, is worse than none.
    pub fn token(&self) -> Result<Option<String>> {
        crate::secret::read(
            self.token.as_deref(),
            self.token_file.as_deref(),
            ("admin.token", "admin.token_file"),
            16,
        )
    }
}
