//! `purchase-gateway`: parse the command line, start telemetry, dispatch.

use std::{
    io::Write,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use gateway::{
    config::{Config, redact_url},
    db::Db,
    model::{KeyKind, Scope},
    service,
};
use gateway_core::{AppId, SystemClock};
use tokio_util::sync::CancellationToken;

mod demo;
mod sim;

#[derive(Parser)]
#[command(
    name = "purchase-gateway",
    version,
    about = "Sell digital access on the App Store, Google Play and the web through one pipeline."
)]
struct Cli {
    /// A TOML configuration file; GATEWAY_* environment variables override it.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole story (a course bought on iOS and on Android, refunds, a subscription) against
    /// the built-in store simulators, on a fresh database, then keep serving: the quickest way to see
    /// the gateway work.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
    },
    /// The store simulators for a running gateway: a simulated App Store (`sim serve`) and the
    /// client that acts as Apple on it (`sim apple buy|renew|refund|...`); a simulated Google Play
    /// (`sim google serve`) and its actions (`sim google buy|subscribe|refund|...`).
    Sim {
        #[command(subcommand)]
        command: sim::SimCommand,
    },
    /// Serve the API (migrations run first).
    Serve,
    /// Apply database migrations and exit.
    Migrate,
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Import or export an app's catalog as CSV.
    Products {
        #[command(subcommand)]
        command: ProductsCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// List every key (never the keys themselves): admin keys and every app's.
    List,
    /// Revoke a key at once, by its id (`key_...`), admin keys included.
    Revoke { id: String },
    /// Create a key and print it as the last line of output (it is shown only once).
    Create {
        /// An admin key: every call, every app.
        #[arg(long, conflicts_with_all = ["app", "publishable"])]
        admin: bool,
        /// The app the key belongs to.
        #[arg(long)]
        app: Option<String>,
        /// A publishable key (for apps) instead of a secret one.
        #[arg(long)]
        publishable: bool,
        /// Scopes of a secret app key: catalog, customers, purchases, refunds, read.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ProductsCommand {
    /// Import a CSV file into an app's catalog, all or nothing.
    Import {
        /// The CSV file.
        file: PathBuf,
        #[arg(long)]
        app: String,
    },
    /// Print an app's catalog as CSV (or write it to --output).
    Export {
        #[arg(long)]
        app: String,
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

/// mimalloc: a request allocates and frees many small buffers across threads, which glibc's
/// allocator serves at about twice the cost.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = dispatch(cli).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    if let Command::Demo { listen } = cli.command {
        // The demo needs no configuration: it makes its own.
        return demo::run(listen).await;
    }
    if let Command::Sim { command } = cli.command {
        // The simulator talks to a gateway over HTTP; it needs no configuration of its own.
        return sim::run(command).await;
    }
    let config = Config::load(cli.config.as_deref())?;
    gateway::telemetry::init_logs(&config);
    for name in gateway::config::ignored_env() {
        tracing::warn!(variable = %name, "ignoring an environment variable that is not a setting");
    }
    match cli.command {
        Command::Demo { .. } | Command::Sim { .. } => Ok(()),
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let db = connect(&config).await?;
            println!("migrations applied to {}", redact_url(&config.database_url));
            db.close().await;
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::List,
        } => {
            let db = connect(&config).await?;
            for (app, k) in gateway::db::keys::list_all(&db).await? {
                let state = k
                    .revoked_at
                    .map_or_else(|| "live".to_owned(), |t| format!("revoked {t}"));
                let scopes: Vec<String> = k
                    .scopes
                    .iter()
                    .map(|s| format!("{s:?}").to_lowercase())
                    .collect();
                println!(
                    "{}\t{}\t{}\t{}\t{}...\t{}",
                    k.id,
                    app.as_deref().unwrap_or("(all apps)"),
                    k.kind.as_str(),
                    scopes.join(","),
                    k.prefix,
                    state
                );
            }
            db.close().await;
            Ok(())
        }
        Command::Keys {
            command: KeysCommand::Revoke { id },
        } => {
            let db = connect(&config).await?;
            let now = gateway_core::Clock::now(&SystemClock);
            let done = gateway::db::keys::revoke_any(&db, &id, now).await?;
            db.close().await;
            if !done {
                bail!("there is no live key {id:?}");
            }
            println!("revoked {id}");
            Ok(())
        }
        Command::Keys {
            command:
                KeysCommand::Create {
                    admin,
                    app,
                    publishable,
                    scopes,
                },
        } => {
            let db = connect(&config).await?;
            let now = gateway_core::Clock::now(&SystemClock);
            let new = if admin {
                service::keys::create(&db, None, KeyKind::Secret, vec![Scope::Admin], now).await
            } else {
                let Some(app) = app else {
                    bail!("name the key's app with --app, or make an admin key with --admin")
                };
                let app = AppId::parse(app)?;
                service::apps::get(&db, &app)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let scopes = scopes
                    .iter()
                    .map(|s| {
                        serde_json::from_value::<Scope>(serde_json::Value::String(s.clone()))
                            .with_context(|| format!("unknown scope {s:?}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let kind = if publishable {
                    KeyKind::Publishable
                } else {
                    KeyKind::Secret
                };
                service::keys::create(&db, Some(&app), kind, scopes, now).await
            }
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            eprintln!("created key {} (shown once; store it now):", new.key.id);
            println!("{}", new.secret);
            db.close().await;
            Ok(())
        }
        Command::Products { command } => products(config, command).await,
    }
}

async fn connect(config: &Config) -> anyhow::Result<Db> {
    let db = Db::connect(&config.database_url).await.with_context(|| {
        format!(
            "could not open the database {}",
            redact_url(&config.database_url)
        )
    })?;
    db.migrate().await.context("could not apply migrations")?;
    Ok(db)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let url = redact_url(&config.database_url);
    let state = gateway::prepare(config, Arc::new(SystemClock))
        .await
        .with_context(|| format!("could not open the database {url}"))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("could not listen on {addr}"))?;
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    tracing::info!(%addr, database = %url, "purchase gateway listening");
    gateway::run(state, listener, shutdown).await?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn products(config: Config, command: ProductsCommand) -> anyhow::Result<()> {
    let db = connect(&config).await?;
    match command {
        ProductsCommand::Import { file, app } => {
            let app = AppId::parse(app)?;
            service::apps::get(&db, &app)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            import(
                &service::Context::new(
                    db.clone(),
                    reqwest::Client::new(),
                    std::sync::Arc::new(SystemClock),
                ),
                &app,
                &file,
            )
            .await?;
        }
        ProductsCommand::Export { app, output } => {
            let app = AppId::parse(app)?;
            service::apps::get(&db, &app)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let csv = service::catalog::export_csv(&db, &app)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            match output {
                Some(path) => std::fs::write(&path, csv)
                    .with_context(|| format!("could not write {}", path.display()))?,
                None => std::io::stdout().write_all(csv.as_bytes())?,
            }
        }
    }
    db.close().await;
    Ok(())
}

async fn import(cx: &service::Context, app: &AppId, file: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(file).with_context(|| format!("could not read {}", file.display()))?;
    let rows = bytecount_lines(&data).saturating_sub(1);
    let bar = indicatif::ProgressBar::new(rows);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} products ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let now = gateway_core::Clock::now(&SystemClock);
    let result = service::catalog::import_csv(cx, app, &data, now, &|n| bar.set_position(n)).await;
    bar.finish_and_clear();
    match result {
        Ok(n) => {
            println!("imported {n} products into {app}");
            Ok(())
        }
        Err(service::ServiceError::Client {
            message, details, ..
        }) => {
            eprintln!("{message}");
            for row in details
                .as_ref()
                .and_then(|d| d.as_array())
                .into_iter()
                .flatten()
            {
                eprintln!(
                    "  line {}: {}",
                    row["line"],
                    row["message"].as_str().unwrap_or_default()
                );
            }
            bail!("nothing was imported")
        }
        Err(e) => Err(e.into()),
    }
}

/// Lines in a file, for the progress bar's length (a quoted cell may hold a newline, so it is an
/// estimate; the bar is told the true count as rows are saved).
fn bytecount_lines(data: &[u8]) -> u64 {
    data.iter().filter(|b| **b == b'\n').count() as u64
}
