//! The `jwks-sidecar` binary: argument parsing, logging, config loading, then the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use jwks_sidecar::config::{self, CliOverrides};

/// A JWT-verifying reverse proxy sidecar with a live JWKS mirror.
///
/// Verifies the bearer token of every request against keys mirrored from your identity
/// providers' JWKS, then forwards it to the app with verified-claim headers, or rejects it
/// (401/403, 503 while no keys are available).
#[derive(Parser, Debug)]
#[command(name = "jwks-sidecar", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// TOML config file (also JWKS_SIDECAR_CONFIG).
    #[arg(long, short = 'c', global = true)]
    config: Option<PathBuf>,
    /// Proxy listen address, e.g. 0.0.0.0:8080.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Upstream application, e.g. http://127.0.0.1:3000.
    #[arg(long)]
    upstream: Option<String>,
    /// Admin listen address (metrics, health), e.g. 127.0.0.1:9901.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Single-provider mode: the token issuer (`iss`).
    #[arg(long)]
    issuer: Option<String>,
    /// Single-provider mode: JWKS URL (without it, OIDC discovery on the issuer is used).
    #[arg(long, requires = "issuer")]
    jwks_uri: Option<String>,
    /// Single-provider mode: accepted audience (repeatable).
    #[arg(long = "audience", requires = "issuer")]
    audiences: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Validate the config, fetch every provider's JWKS once, and print what was found.
    Check,
    /// Run a self-contained demo on loopback: issuer, echo app and proxy, with curl lines.
    Demo {
        /// Proxy port for the demo (another free port is used when taken).
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// TEST ONLY: serve the fake identity provider the test suites use (discovery, JWKS,
    /// token minting for any claims, a control API) on 127.0.0.1; prints its issuer as one
    /// JSON line. Never configure its issuer in a real deployment.
    Idp {
        /// Port (0: any free port).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// One signing key per algorithm given (repeatable; default ES256).
        #[arg(long = "alg")]
        algs: Vec<String>,
    },
    /// Explain the decision on one request (rule, provider, every check), without serving.
    Explain {
        /// The request line, e.g. "GET /admin/users?page=2".
        #[arg(long)]
        request: String,
        /// A request header, "Name: value" (repeatable), e.g. "Authorization: Bearer ey...".
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
        /// Use this JWKS file for every provider instead of fetching the live keys.
        #[arg(long)]
        offline: Option<PathBuf>,
    },
    /// Probe a running sidecar's admin endpoint; exit 0 when it answers 200.
    Healthcheck {
        /// URL to probe.
        #[arg(long, default_value = "http://127.0.0.1:9901/readyz")]
        url: String,
    },
}

fn sources(args: &RunArgs) -> (Option<PathBuf>, CliOverrides) {
    let file = args.config.clone().or_else(config::config_file_from_env);
    let cli = CliOverrides {
        listen: args.listen,
        upstream: args.upstream.clone(),
        admin_listen: args.admin_listen,
        issuer: args.issuer.clone(),
        jwks_uri: args.jwks_uri.clone(),
        audiences: args.audiences.clone(),
    };
    (file, cli)
}

fn load(args: &RunArgs) -> Result<jwks_sidecar::plan::Plan, String> {
    let (file, cli) = sources(args);
    jwks_sidecar::plan::load(file.as_deref(), &cli).map_err(|e| e.to_string())
}

/// The worker count to run with: the configured one; else `TOKIO_WORKER_THREADS` (as tokio
/// itself reads it); else one per CPU this process may use (cgroup CPU limits included).
fn effective_workers(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    if let Some(n) = std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Starts `n` connection workers, each a thread running its own current-thread runtime
/// until the process exits, and returns their handles.
fn start_workers(n: usize) -> std::io::Result<Vec<tokio::runtime::Handle>> {
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || {
                jwks_sidecar::server::enter_worker(i);
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = tx.send(Ok(rt.handle().clone()));
                        rt.block_on(std::future::pending::<()>());
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                    }
                }
            })?;
        handles.push(
            rx.recv()
                .map_err(|_| std::io::Error::other("worker thread exited"))??,
        );
    }
    Ok(handles)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => serve(&cli.run),
        Some(command) => current_thread().and_then(|rt| run_command(&rt, command, &cli.run)),
    };
    jwks_sidecar::telemetry::flush();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", e.trim_end());
            ExitCode::FAILURE
        }
    }
}

/// The main runtime: a current-thread one. With one worker it does everything (every task,
/// timer and socket on one thread: no cross-thread wake-ups, no work stealing, no idle
/// workers parking), the cheapest shape for a sidecar given one core. With more, it keeps
/// the control plane (accept loops, key refresh, reload) and each accepted connection
/// (proxy, admin, authz HTTP and gRPC) is served whole by one of N single-threaded workers.
fn current_thread() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// The sidecar itself: the config (loaded and compiled once) decides the worker count.
fn serve(args: &RunArgs) -> Result<(), String> {
    let plan = load(args)?;
    let n = effective_workers(plan.config.runtime.worker_threads);
    let workers = if n > 1 {
        let handles =
            start_workers(n).map_err(|e| format!("cannot start the worker threads: {e}"))?;
        jwks_sidecar::server::Workers::new(handles)
    } else {
        jwks_sidecar::server::Workers::default()
    };
    let runtime = current_thread()?;
    jwks_sidecar::telemetry::init(&plan.config.log);
    let (file, cli) = sources(args);
    runtime.block_on(jwks_sidecar::run(plan, file, cli, workers))
}

/// The subcommands.
fn run_command(
    runtime: &tokio::runtime::Runtime,
    command: Command,
    args: &RunArgs,
) -> Result<(), String> {
    match command {
        Command::Demo { port } => runtime.block_on(jwks_sidecar::demo::run(port)),
        Command::Idp { port, algs } => {
            let algs = algs
                .iter()
                .map(|a| {
                    jwks_sidecar::jose::Alg::parse(a).ok_or(format!(
                        "--alg {a:?}: choose from {}",
                        jwks_sidecar::jose::Alg::names()
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?;
            runtime.block_on(jwks_sidecar::demo::serve_standalone(port, &algs))
        }
        Command::Healthcheck { url } => runtime.block_on(jwks_sidecar::check::healthcheck(&url)),
        Command::Explain {
            request,
            headers,
            offline,
        } => {
            let plan = load(args)?;
            let req = jwks_sidecar::explain::ExplainRequest {
                request,
                headers,
                offline,
            };
            let report = runtime.block_on(jwks_sidecar::explain::explain(&plan, &req))?;
            print!("{report}");
            Ok(())
        }
        Command::Check => {
            let plan = load(args)?;
            let report = runtime.block_on(jwks_sidecar::check::check(&plan))?;
            print!("{report}");
            Ok(())
        }
    }
}
