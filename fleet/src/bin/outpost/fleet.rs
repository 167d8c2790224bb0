//! Talking to the fleet's API: base URL and token from flags or the environment, errors shown as the API gave them.

use anyhow::{Context as _, bail};
use clap::Args;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[derive(Debug, Args)]
pub struct FleetArgs {
    /// The fleet's base URL.
    #[arg(long, env = "OUTPOST_FLEET_URL", default_value = "http://127.0.0.1:8080")]
    pub fleet: String,
    /// An API token (the admin token is in the fleet's `<state_dir>/admin.token`).
    #[arg(long, env = "OUTPOST_TOKEN", hide_env_values = true)]
    pub token: String,
    /// A CA certificate (PEM) to trust for an HTTPS fleet, besides the system roots.
    #[arg(long, env = "OUTPOST_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

pub struct Fleet {
    base: String,
    token: String,
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Fleet {
    pub fn new(args: &FleetArgs) -> anyhow::Result<Fleet> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let mut builder = reqwest::Client::builder().timeout(std::time::Duration::from_secs(60));
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).with_context(|| format!("{}", path.display()))?;
            builder = builder.tls_certs_merge(certs);
        }
        let client = builder.build()?;
        Ok(Fleet { base: args.fleet.trim_end_matches('/').to_string(), token: args.token.clone(), runtime, client })
    }

    fn send<T: DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> anyhow::Result<T> {
        let bytes = self.send_bytes(request)?;
        serde_json::from_slice(&bytes).context("the fleet's answer is not what this CLI expects")
    }

    /// Sends a request built inside the runtime's context (for bodies that stream from files); `path` is under the
    /// base URL.
    pub fn send_built<T: DeserializeOwned>(
        &self,
        build: impl FnOnce(&reqwest::Client, String) -> anyhow::Result<reqwest::RequestBuilder>,
        path: &str,
    ) -> anyhow::Result<T> {
        let request = {
            let _context = self.runtime.enter();
            build(&self.client, format!("{}{path}", self.base))?
        };
        self.send(request)
    }

    /// `DELETE`, expecting an empty success.
    pub fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send_bytes(self.client.delete(format!("{}{path}", self.base))).map(|_| ())
    }

    fn send_bytes(&self, request: reqwest::RequestBuilder) -> anyhow::Result<bytes::Bytes> {
        self.runtime.block_on(async {
            let response =
                request.bearer_auth(&self.token).send().await.with_context(|| format!("reaching {}", self.base))?;
            let status = response.status();
            let bytes = response.bytes().await?;
            if !status.is_success() {
                let error = serde_json::from_slice::<serde_json::Value>(&bytes).ok();
                let message = error
                    .as_ref()
                    .and_then(|v| v["error"]["message"].as_str())
                    .map(|m| match error.as_ref().and_then(|v| v["error"]["code"].as_str()) {
                        Some(code) => format!("{m} [{code}]"),
                        None => m.to_string(),
                    })
                    .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
                bail!("the fleet answered {status}: {message}");
            }
            Ok(bytes)
        })
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        self.send(self.client.get(format!("{}{path}", self.base)))
    }

    pub fn post<T: DeserializeOwned, B: Serialize>(&self, path: &str, body: &B) -> anyhow::Result<T> {
        self.send(self.client.post(format!("{}{path}", self.base)).json(body))
    }
}
