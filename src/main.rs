//! The `wsgate` command line: `run`, `check`, `publish` and `client`. Everything else lives in the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

/// mimalloc instead of glibc's malloc: an idle WebSocket's long-lived objects are allocated
/// between its handshake's short-lived ones, and glibc's arenas keep the holes these leave
/// (BENCHMARKS.md: RSS per idle connection 4.4 KiB with 3.1 KiB in use); mimalloc keeps each
/// size in pages of its own, which the next handshakes reuse whole. Freed pages go back to the
/// system at once instead of staying in RSS until the kernel needs them (built with
/// `MI_DEFAULT_ARENA_EAGER_COMMIT=0`, see `.cargo/config.toml`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
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
    /// Send one message to every WebSocket of a subscription (through the admin listener's
    /// control API); prints how many WebSockets it was queued to.
    ///
    /// A chat room can be named APP/ROOM, ROOM being the last part of one of the chat app's
    /// URLs: with the demo config `wsgate publish chat/ops 'deploy done'` reaches the room
    /// at /websocket/chat/ops (subscription `chat:chat:/websocket/chat/ops`), and plain text
    /// is shown there as a message from "wsgate". `all` reaches every WebSocket; other names
    /// are subscriptions made through the control API or a backend app.
    Publish(PublishArgs),
    /// Connect to a WebSocket URL: interactive (stdin lines out, messages in) or --send/--receive.
    Client(wsgate::client::cli::ClientArgs),
    /// Ask the running daemon to reload its configuration (SIGHUP) and wait for its answer:
    /// exit 0 when the new configuration is in force, 1 with the daemon's reason when it was
    /// rejected (the old one keeps serving). Used by the unit's ExecReload=.
    Reload(ReloadArgs),
}

#[derive(Args)]
struct ReloadArgs {
    /// The daemon's process id (default: $MAINPID, which systemd sets for ExecReload=, else
    /// the pid recorded in the status file).
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// The daemon's reload status file (default: $RUNTIME_DIRECTORY/reload-status, else
    /// /run/wsgate/reload-status).
    #[arg(long, value_name = "FILE")]
    status_file: Option<PathBuf>,
    /// How long to wait for the answer.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

#[derive(Args)]
struct PublishArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The subscription: `all` (every WebSocket), a chat room as APP/ROOM (e.g. chat/ops), or
    /// a subscription name.
    subscription: String,
    /// The message; `-` or nothing reads it from standard input.
    message: Option<String>,
    /// Send a binary message (default: text, which must be UTF-8).
    #[arg(long)]
    binary: bool,
    /// A channel id that must not receive it (repeatable, or comma-separated).
    #[arg(long, value_name = "ID")]
    exclude: Vec<String>,
    /// Publish to a pubsub app's channel instead (history, offsets): the first argument is
    /// the channel name and MESSAGE is JSON data (other text is sent as a JSON string);
    /// prints {"offset","epoch","delivered"}.
    #[arg(long, conflicts_with_all = ["binary", "exclude"])]
    channel: bool,
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
    /// Also check that this user (the service runs as `wsgate`) can read every file the
    /// configuration names: TLS certificates and keys, token, password and CA files, log-view
    /// files (permission bits of each file and directory; ACLs are not evaluated).
    #[arg(long, value_name = "USER")]
    as_user: Option<String>,
    /// With --as-user: a supplementary group the unit adds (`SupplementaryGroups=`; the
    /// packaged unit adds adm). Repeatable.
    #[arg(long, value_name = "GROUP", requires = "as_user")]
    group: Vec<String>,
}

impl ConfigArgs {
    fn source(&self) -> ConfigSource {
        match &self.config {
            Some(path) => ConfigSource::File(path.clone()),
            None => ConfigSource::Default,
        }
    }

    fn load(&self) -> Result<(Config, String), config::ConfigError> {
        let source = self.source();
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
        Command::Client(args) => wsgate::client::cli::run(args),
        Command::Reload(args) => reload(&args),
    }
}

fn reload(args: &ReloadArgs) -> ExitCode {
    use wsgate::reload_status;
    let path = args
        .status_file
        .clone()
        .or_else(reload_status::default_path)
        .unwrap_or_else(|| PathBuf::from("/run/wsgate").join(reload_status::FILE_NAME));
    let pid = args.pid.or_else(|| std::env::var("MAINPID").ok().and_then(|p| p.trim().parse().ok()).filter(|p| *p > 0));
    match reload_status::request_reload(&path, pid, args.timeout) {
        Ok(summary) => {
            eprintln!("wsgate: configuration reloaded: {summary}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("wsgate reload: {error}");
            ExitCode::from(1)
        }
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
    if args.channel {
        return match wsgate::admin::client::publish_channel_command(&config, &args.subscription, args.message) {
            Ok(answer) => {
                println!("{answer}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("wsgate publish: {error}");
                ExitCode::from(1)
            }
        };
    }
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
    let source = args.config.source();
    let mut failed = false;
    if let Err(errors) = wsgate::server::check(&config) {
        for error in errors {
            match &error.key {
                Some(key) => eprintln!("{}{}", config::key_prefix(&source, key), error.message),
                None => eprintln!("{error}"),
            }
        }
        failed = true;
    }
    if !check_files(args, &config, &source) {
        failed = true;
    }
    if failed {
        eprintln!("wsgate: configuration {name} test failed");
        return ExitCode::from(1);
    }
    for app in config::summary::apps(&config, None).iter().filter(|a| a.is_off()) {
        eprintln!("wsgate: {app}");
    }
    eprintln!("wsgate: configuration {name} syntax is ok");
    eprintln!("wsgate: configuration {name} test is successful");
    if args.as_user.is_none() && rustix::process::geteuid().is_root() {
        eprintln!(
            "wsgate: hint: checked as root, which can read any file; the service runs as user wsgate: \
             `wsgate check --as-user wsgate --group adm` also checks that it can read the files the configuration names"
        );
    }
    ExitCode::SUCCESS
}

/// `--as-user`: every named file readable by that user (errors); log-view files where the
/// unit hides them (warnings, with or without `--as-user`). False when an error was printed.
fn check_files(args: &CheckArgs, config: &Config, source: &ConfigSource) -> bool {
    use config::readable;
    let files = readable::named_files(config);
    for file in files.iter().filter(|f| f.log_view) {
        if let Some(setting) = readable::hidden_by_unit(&file.path) {
            eprintln!(
                "{}warning: {} is hidden from the service by its unit's {setting}: the log-view cannot follow it there",
                config::key_prefix(source, &file.key),
                file.path.display()
            );
        }
    }
    let Some(name) = &args.as_user else {
        return true;
    };
    let user = match readable::User::lookup(name, &args.group) {
        Ok(user) => user,
        Err(error) => {
            eprintln!("wsgate: --as-user: {error}");
            return false;
        }
    };
    let mut ok = true;
    let config_file = match source {
        ConfigSource::File(path) => Some(path.clone()),
        ConfigSource::Default => Some(PathBuf::from(config::load::DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        ConfigSource::Text { .. } => None,
    };
    if let Some(path) = &config_file {
        if let Err(reason) = readable::check_readable(&user, path) {
            eprintln!("{}: configuration file: {reason}", path.display());
            ok = false;
        }
    }
    for file in &files {
        match readable::check_readable(&user, &file.path) {
            Ok(()) => {}
            // A log-view file may appear later; the viewer reports it missing meanwhile.
            Err(_) if file.log_view && !file.path.exists() => {}
            Err(reason) => {
                eprintln!("{}{}: {reason}", config::key_prefix(source, &file.key), file.path.display());
                ok = false;
            }
        }
    }
    ok
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
    let (mut term, mut int, mut hup) =
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt()), signal(SignalKind::hangup())) {
            (Ok(t), Ok(i), Ok(h)) => (t, i, h),
            _ => {
                tracing::error!("cannot install signal handlers");
                return ExitCode::from(1);
            }
        };
    let server = match wsgate::server::start(&config).await {
        Ok(server) => server,
        Err(wsgate::server::StartError::Tls { addr, source }) => {
            // Name the config line that gave the certificate or key, like config errors do.
            let index = config.listen.iter().position(|l| l.addr == addr && l.tls.is_some()).unwrap_or_default();
            let problem = wsgate::server::CheckProblem::tls(index, &source);
            let key = problem.key.unwrap_or_default();
            tracing::error!(
                "cannot start: {}listen {addr}: {}",
                config::key_prefix(&args.source(), &key),
                problem.message
            );
            return ExitCode::from(1);
        }
        Err(error) => {
            tracing::error!("cannot start: {error}");
            return ExitCode::from(1);
        }
    };
    startup_summary(&config, &server);
    let monitor = server.monitor();
    // The answer channel of `wsgate reload` (generation 0: this process runs).
    let status_file = wsgate::reload_status::default_path();
    let mut generation = 0u64;
    write_reload_status(status_file.as_deref(), generation, wsgate::reload_status::Outcome::Started, "running");
    // The last reload's outcome, appended to STATUS=.
    let last_reload = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let status_line = {
        let monitor = monitor.clone();
        let last_reload = last_reload.clone();
        move || {
            let line = monitor.status_line();
            let last = last_reload.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
            if last.is_empty() {
                line
            } else {
                format!("{line}; {last}")
            }
        }
    };
    // DESIGN §8: READY=1 only now that every listener is bound or adopted.
    systemd::ready(&status_line());
    let watchdog = systemd::watchdog_interval();
    if let Some(interval) = watchdog {
        let probe = monitor.clone();
        systemd::spawn_watchdog(interval, move || {
            let probe = probe.clone();
            async move { probe.probe().await }
        });
    }
    if systemd::notify_enabled() {
        systemd::spawn_status(watchdog.unwrap_or(STATUS_INTERVAL).min(STATUS_INTERVAL), status_line.clone());
    }
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                systemd::reloading();
                tracing::info!("SIGHUP: reloading the configuration");
                // reload() logs and counts the outcome; a rejected config keeps the old one.
                let outcome = server.reload(args.load().map(|(config, _)| config)).await;
                generation += 1;
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                let (result, message, status) = match &outcome {
                    Ok(summary) => (wsgate::reload_status::Outcome::Ok, format!("{summary:?}"), format!("reloaded at {now}")),
                    Err(error) => {
                        let reason = error.to_string().replace('\n', "; ");
                        (wsgate::reload_status::Outcome::Rejected, reason.clone(), format!("last reload rejected at {now}: {reason}"))
                    }
                };
                *last_reload.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = status;
                write_reload_status(status_file.as_deref(), generation, result, &message);
                // READY=1 even after a rejected reload, or systemd stays in "reloading".
                systemd::ready(&status_line());
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

/// What a newcomer needs from the first lines: each app with its URLs (or why it is off), and
/// where everything else goes. A background probe warns when the upstream does not answer.
fn startup_summary(config: &Config, server: &wsgate::server::RunningServer) {
    use config::summary;
    let base = server.listeners().first().map(|l| summary::Base { addr: l.addr, tls: l.tls });
    for app in summary::apps(config, base) {
        tracing::info!("{app}");
    }
    let upstream = config.upstream.url.clone();
    tracing::info!("upstream {upstream}: every request no app serves is forwarded there");
    let timeout = config.upstream.connect_timeout;
    tokio::spawn(async move {
        let connect = tokio::net::TcpStream::connect(upstream.authority());
        let reason = match tokio::time::timeout(timeout, connect).await {
            Ok(Ok(_)) => return,
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {timeout:?}"),
        };
        tracing::warn!(
            "upstream {upstream} is not reachable ({reason}): requests no app serves get 502 Bad Gateway until it is; set [upstream] url or --upstream"
        );
    });
}

/// Records a reload's outcome for `wsgate reload` (nothing outside systemd's RuntimeDirectory=).
fn write_reload_status(
    path: Option<&std::path::Path>,
    generation: u64,
    result: wsgate::reload_status::Outcome,
    message: &str,
) {
    let Some(path) = path else { return };
    let status =
        wsgate::reload_status::Status { pid: std::process::id(), generation, result, message: message.to_owned() };
    if let Err(error) = wsgate::reload_status::write(path, &status) {
        tracing::warn!(path = %path.display(), %error, "cannot write the reload status; `wsgate reload` will not see the answer");
    }
}

fn init_logging(config: &Config) {
    wsgate::logging::init(&config.log);
}
