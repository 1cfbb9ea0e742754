//! The `wsgate` command line: `run`, `check`, `publish` and `client`. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};
use wsgate::config::{self, CliOverrides, Config, ConfigSource};
use wsgate::systemd;

#[derive(Parser)]
#[command(name = "wsgate", version, about = "WebSocket gateway and reverse proxy in front of a web server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (with no --config and no /etc/wsgate/wsgate.toml: the embedded demo config).
    Run(RunArgs),
    /// Validate a configuration (like `nginx -t`): exit 0 when it is usable, 1 otherwise.
    Check(CheckArgs),
    /// Print the manual page (roff) to stdout; used by packaging.
    #[command(hide = true)]
    Man,
    /// Publish one message to a subscription through the admin listener's control API (like
    /// the seed's ws::multicast); prints the number of channels it was queued to.
    Publish(PublishArgs),
    /// Connect to a WebSocket URL: interactive (stdin lines out, messages in) or --send/--receive.
    Client(wsgate::ws::client_cli::ClientArgs),
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The subscription (`all` reaches every WebSocket).
    subscription: String,
    /// The message; `-` or nothing reads it from standard input.
    message: Option<String>,
    /// Send a binary message (default: text, which must be UTF-8).
    #[arg(long)]
    binary: bool,
    /// A channel id that must not receive it (repeatable, or comma-separated).
    #[arg(long, value_name = "ID")]
    exclude: Vec<String>,
}

#[derive(Args)]
struct ConfigArgs {
    /// Configuration file (TOML). Environment variables WSGATE_SECTION__KEY override it.
    #[arg(short, long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address, replacing the configured plain listeners (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<std::net::SocketAddr>,
    /// Upstream URL, e.g. http://127.0.0.1:8000.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Log level or filter (overrides [log] level), e.g. debug or wsgate=trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArgs,
}

impl ConfigArgs {
    fn load(&self) -> Result<(Config, String), config::ConfigError> {
        let source = match &self.config {
            Some(path) => ConfigSource::File(path.clone()),
            None => ConfigSource::Default,
        };
        let name = source.describe();
        let overrides = CliOverrides {
            listen: self.listen.clone(),
            upstream: self.upstream.clone(),
            log_level: self.log_level.clone(),
        };
        config::load(source, &overrides).map(|c| (c, name))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check(args) => check(&args),
        Command::Run(args) => run(&args),
        Command::Man => man(),
        Command::Publish(args) => publish(args),
        Command::Client(args) => wsgate::ws::client_cli::run(args),
    }
}

fn publish(args: PublishArgs) -> ExitCode {
    let config = match args.config.load() {
        Ok((config, _)) => config,
        Err(error) => {
            eprintln!("{error}");
            return ExitCode::from(1);
        }
    };
    match wsgate::admin::client::publish_command(&config, args.subscription, args.message, args.binary, args.exclude) {
        Ok(delivered) => {
            println!("{delivered}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wsgate publish: {error}");
            ExitCode::from(1)
        }
    }
}

fn man() -> ExitCode {
    let page = clap_mangen::Man::new(Cli::command()).section("8");
    let mut out = std::io::stdout().lock();
    match page.render(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("wsgate: cannot write the manual page: {error}");
            ExitCode::from(1)
        }
    }
}

fn check(args: &CheckArgs) -> ExitCode {
    let (config, name) = match args.config.load() {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            eprintln!("wsgate: configuration {} test failed", source_name(&args.config));
            return ExitCode::from(1);
        }
    };
    if let Err(errors) = wsgate::server::check(&config) {
        for error in errors {
            eprintln!("{error}");
        }
        eprintln!("wsgate: configuration {name} test failed");
        return ExitCode::from(1);
    }
    eprintln!("wsgate: configuration {name} syntax is ok");
    eprintln!("wsgate: configuration {name} test is successful");
    ExitCode::SUCCESS
}

fn source_name(args: &ConfigArgs) -> String {
    match &args.config {
        Some(path) => path.display().to_string(),
        None => ConfigSource::Default.describe(),
    }
}

fn run(args: &RunArgs) -> ExitCode {
    let (config, name) = match args.config.load() {
        Ok(loaded) => loaded,
        Err(error) => {
            eprintln!("{error}");
            eprintln!("wsgate: cannot start: invalid configuration {}", source_name(&args.config));
            return ExitCode::from(1);
        }
    };
    init_logging(&config);
    tracing::info!(config = %name, version = env!("CARGO_PKG_VERSION"), "starting");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsgate: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(serve(config, &args.config))
}

/// How often `STATUS=` is refreshed when the watchdog does not set a faster pace.
const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

async fn serve(config: Config, args: &ConfigArgs) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a SIGHUP (reload) or SIGTERM arriving while we bind must not hit the
    // default action, which kills the process.
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            tracing::error!("cannot install signal handlers");
            return ExitCode::from(1);
        }
    };
    let server = match wsgate::server::start(&config).await {
        Ok(server) => server,
        Err(error) => {
            tracing::error!("cannot start: {error}");
            return ExitCode::from(1);
        }
    };
    let monitor = server.monitor();
    // DESIGN §8: READY=1 only now that every listener is bound or adopted.
    systemd::ready(&monitor.status_line());
    let watchdog = systemd::watchdog_interval();
    if let Some(interval) = watchdog {
        let probe = monitor.clone();
        systemd::spawn_watchdog(interval, move || {
            let probe = probe.clone();
            async move { probe.probe().await }
        });
    }
    if systemd::notify_enabled() {
        let status = monitor.clone();
        systemd::spawn_status(watchdog.unwrap_or(STATUS_INTERVAL).min(STATUS_INTERVAL), move || status.status_line());
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd::reloading();
                tracing::info!("SIGHUP: reloading the configuration");
                // reload() logs and counts the outcome; a rejected config keeps the old one.
                let _ = server.reload(args.load().map(|(config, _)| config)).await;
                // READY=1 even after a rejected reload, or systemd stays in "reloading".
                systemd::ready(&monitor.status_line());
            }
        }
    }
    systemd::stopping();
    tracing::info!("shutting down: closing WebSockets (1001) and finishing in-flight requests");
    if server.shutdown().await {
        tracing::info!("shutdown complete");
    } else {
        tracing::warn!("shutdown timeout reached; exiting with connections still open");
    }
    ExitCode::SUCCESS
}

fn init_logging(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .or_else(|| EnvFilter::try_new(&config.log.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        // A failed log write (stderr on a full disk, a closed pipe) must not take the server
        // down: by default tracing-subscriber reports it with `eprintln!`, which panics when
        // stderr itself cannot be written, and that panic killed wsgate at its first log line.
        .log_internal_errors(false)
        .init();
}
