//! The client side of the gateway's `/admin` API, for `steedos-wasm
//! deploy`, `upgrade`, `remove` and `ps` against a running host.
//!
//! It speaks to the host only over HTTP, as any client would: it must not
//! reach the broker, the app or any other module of a host in this process.

use std::path::Path;

use anyhow::{Context, bail};
use serde_json::Value;

/// A running host's `/admin` API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl AdminClient {
    /// The admin API at `base` (`http://127.0.0.1:3000`), with a bearer token.
    pub fn new(base: &str, token: Option<String>) -> Self {
        AdminClient {
            base: base.trim_end_matches('/').to_string(),
            token,
            http: reqwest::Client::new(),
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request
            .send()
            .await
            .with_context(|| format!("cannot reach the host at {}", self.base))?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        match status.as_u16() {
            401 => bail!(
                "the host refused the admin token ({message}); pass --token or set STEEDOS_ADMIN_TOKEN"
            ),
            404 if body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("admin API is off")) =>
            {
                bail!("{message}")
            }
            _ => bail!("{status}: {message}"),
        }
    }

    /// Deploys (or upgrades) `name` to the component file at `component`.
    pub async fn deploy(
        &self,
        name: &str,
        component: &Path,
        settings: &[(String, String)],
    ) -> anyhow::Result<String> {
        let bytes = tokio::fs::read(component)
            .await
            .with_context(|| format!("cannot read {}", component.display()))?;
        let url = format!("{}/admin/packages/{name}", self.base);
        let body = self
            .send(self.http.put(url).query(settings).body(bytes))
            .await?;
        Ok(body["ok"].as_str().unwrap_or_default().to_string())
    }

    /// Removes `name`.
    pub async fn remove(&self, name: &str) -> anyhow::Result<String> {
        let body = self
            .send(
                self.http
                    .delete(format!("{}/admin/packages/{name}", self.base)),
            )
            .await?;
        Ok(body["ok"].as_str().unwrap_or_default().to_string())
    }

    /// Every package with its state.
    pub async fn packages(&self) -> anyhow::Result<Vec<Value>> {
        let body = self
            .send(self.http.get(format!("{}/admin/packages", self.base)))
            .await?;
        Ok(body["packages"].as_array().cloned().unwrap_or_default())
    }
}
