//! `purchase-gateway sim`: the store simulators on the command line.
//!
//! - `sim serve` starts a simulated App Store for one app of a running gateway: a fresh signing
//!   chain and App Store Connect API key, the fake App Store Server API and the control endpoints
//!   (`/sim/apple/...`) on one listener. It points the app's App Store settings at it over the admin
//!   API (pinned root, API base URL and key, Sandbox) and sends notifications to the app's
//!   notification URL. The app keeps those settings after the simulator stops. (`apple.rs`)
//! - `sim apple <action>` acts as Apple on a running simulator through its control endpoints and
//!   prints what happened: a sentence on stderr, the JSON answer on stdout. (`apple.rs`)
//! - `sim google serve` does the same for Google Play: the token endpoint, the Play Developer API,
//!   the "Google" JWKS and the controls (`/sim/play/...`), a new service account with access to the
//!   app's package, and Pub/Sub pushes signed with an OIDC token; `sim google <action>` acts as the
//!   customer and as Google. (`google.rs`)
//! - `sim stripe serve` and `sim stripe <action>`: a simulated Stripe (its API, hosted checkout
//!   pages and signed webhooks) for an app's Stripe prices. (`stripe.rs`)

mod apple;
mod google;
mod stripe;

use anyhow::{Context, bail};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value};

pub use self::{apple::AppleAction, apple::ServeArgs, google::GoogleAction, stripe::StripeAction};

#[derive(Subcommand)]
pub enum SimCommand {
    /// Start a simulated App Store for an app of a running gateway, point the app at it, and serve
    /// until Ctrl-C.
    Serve(ServeArgs),
    /// Act as Apple on a running simulator: each action changes its state and sends the gateway the
    /// notification Apple sends for it.
    Apple {
        /// The simulator, as `sim serve` printed it.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9100")]
        sim: String,
        #[command(subcommand)]
        action: AppleAction,
    },
    /// Google Play: `serve` starts a simulated Google Play for an app of a running gateway and
    /// points the app at it; every other action acts as the customer or as Google on it, pushing the
    /// Real-time developer notification Google pushes for it.
    Google {
        /// The simulator, as `sim google serve` printed it.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9101")]
        sim: String,
        #[command(subcommand)]
        action: GoogleAction,
    },
    /// Stripe: `serve` starts a simulated Stripe for an app of a running gateway and points the app
    /// at it; every other action acts as the customer or as Stripe on it, sending the events Stripe
    /// sends for it.
    Stripe {
        /// The simulator, as `sim stripe serve` printed it.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9102")]
        sim: String,
        #[command(subcommand)]
        action: StripeAction,
    },
}

/// The name clap gives a value, which is also what the control endpoints take.
fn value_name(v: &impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

pub async fn run(command: SimCommand) -> anyhow::Result<()> {
    match command {
        SimCommand::Serve(args) => apple::serve(args).await,
        SimCommand::Apple { sim, action } => apple::act(&sim, action).await,
        SimCommand::Google { sim, action } => google::run(&sim, action).await,
        SimCommand::Stripe { sim, action } => stripe::run(&sim, action).await,
    }
}

/// The gateway and app a simulator serves.
#[derive(Args)]
pub struct Target {
    /// The gateway, as the simulator reaches it.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    gateway: String,
    /// The app to point at the simulator.
    #[arg(long)]
    app: String,
    /// An admin key of the gateway.
    #[arg(long, env = "GATEWAY_BOOTSTRAP_ADMIN_KEY", hide_env_values = true)]
    admin_key: String,
}

impl Target {
    /// The gateway's admin API, and the app.
    fn open(self) -> (Gateway, String) {
        let gateway = Gateway {
            http: reqwest::Client::new(),
            base: self.gateway.trim_end_matches('/').to_owned(),
            key: self.admin_key,
        };
        (gateway, self.app)
    }
}

/// Calls a gateway's admin API (`demo` uses it too).
pub(crate) struct Gateway {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) key: String,
}

impl Gateway {
    pub(crate) async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("could not reach the gateway at {}", self.base))?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let message = body["error"]["message"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_owned);
            bail!("the gateway answered {path} with {status}: {message}");
        }
        Ok(body)
    }

    /// An app's settings for one store as the admin API shows them, less the `<secret>_set`
    /// markers, ready to be changed and PATCHed back (secrets not restated are kept).
    pub(crate) async fn store_settings(
        &self,
        app: &str,
        store: &str,
    ) -> anyhow::Result<Map<String, Value>> {
        let view = self
            .call(reqwest::Method::GET, &format!("/v1/apps/{app}"), None)
            .await?;
        Ok(view[store]
            .as_object()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| !k.ends_with("_set"))
            .collect())
    }
}

/// Binds where a simulator listens, with a hint when the address is taken.
async fn listen(addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not listen on {addr}; try --listen 127.0.0.1:0"))
}

/// Calls a running simulator's control surface (`{sim}/sim/{store}/{path}`) and answers its JSON,
/// or its error sentence. `serve` names the command that starts it, for the hint when it is not
/// reachable.
async fn control(
    sim: &str,
    store: &str,
    serve: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let base = sim.trim_end_matches('/');
    let mut req = reqwest::Client::new().request(method, format!("{base}/sim/{store}/{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.with_context(|| {
        format!("could not reach the simulator at {base}; is `purchase-gateway {serve}` running?")
    })?;
    let status = res.status();
    let answer: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["error"]["message"]
            .as_str()
            .map_or_else(|| answer.to_string(), str::to_owned);
        bail!("the simulator refused ({status}): {message}");
    }
    Ok(answer)
}

/// Waits for Ctrl-C.
async fn until_interrupted() {
    let _ = tokio::signal::ctrl_c().await;
}
