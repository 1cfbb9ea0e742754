//! `wsgate client URL`: a command-line WebSocket client on [`crate::client`].
//!
//! Interactive by default (each stdin line is sent as a text message, each message received
//! is printed as a line on stdout); with `--send` / `--receive` it runs a fixed exchange for
//! scripts and exits with a code they can rely on (see [`EXIT_CODES`]).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::io::AsyncBufReadExt;

use super::{connect, Client, ClientError, ConnectOptions, Received};
use crate::ws::close::code;

/// The exit codes, as printed at the end of `wsgate client --help`.
pub const EXIT_CODES: &str = "Exit codes:
  0  success (the exchange completed and the connection was closed cleanly)
  1  connection, TLS, handshake or protocol error (including a refused upgrade),
     or the server closed before --receive N messages arrived
  2  usage error (bad option or argument)
  3  timeout (connecting, or waiting for a message with --receive)";

/// Arguments of `wsgate client`.
#[derive(Debug, Args)]
#[command(after_help = EXIT_CODES)]
pub struct ClientArgs {
    /// WebSocket URL: ws://HOST[:PORT]/PATH[?QUERY] or wss://...
    #[arg(value_name = "URL")]
    pub url: String,
    /// Send TEXT as a text message (repeatable, in order); disables interactive mode.
    #[arg(long = "send", value_name = "TEXT")]
    pub send: Vec<String>,
    /// Print N received messages, then close; disables interactive mode.
    #[arg(long, value_name = "N")]
    pub receive: Option<usize>,
    /// Limit for connecting and for each message awaited with --receive (e.g. 10s, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Extra request header "Name: value" (repeatable), e.g. "Origin: https://example.com".
    #[arg(long = "header", short = 'H', value_name = "HEADER")]
    pub header: Vec<String>,
    /// Offer subprotocol NAME (repeatable, in order of preference).
    #[arg(long = "protocol", value_name = "NAME")]
    pub protocol: Vec<String>,
    /// Trust the CA certificates in FILE (PEM) for wss://, besides the system's roots.
    #[arg(long = "ca", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not offer permessage-deflate compression.
    #[arg(long)]
    pub no_deflate: bool,
    /// Largest message accepted from the server.
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20)]
    pub max_message_size: usize,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs the client; returns the process exit code.
pub fn run(args: ClientArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("wsgate client: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run_async(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("wsgate client: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Client(error)) => {
            eprintln!("wsgate client: {error}");
            ExitCode::from(match error {
                ClientError::Timeout => 3,
                ClientError::InvalidUrl(_) | ClientError::InvalidHeader(_) => 2,
                _ => 1,
            })
        }
        Err(Failure::ClosedEarly(frame)) => {
            match frame {
                Some(f) => eprintln!("wsgate client: server closed the connection ({} {})", f.code, f.reason),
                None => eprintln!("wsgate client: server closed the connection"),
            }
            ExitCode::from(1)
        }
    }
}

enum Failure {
    Usage(String),
    Client(ClientError),
    ClosedEarly(Option<crate::ws::CloseFrame>),
}

impl From<ClientError> for Failure {
    fn from(error: ClientError) -> Self {
        Failure::Client(error)
    }
}

async fn run_async(args: ClientArgs) -> Result<(), Failure> {
    let mut headers = Vec::with_capacity(args.header.len());
    for h in &args.header {
        match h.split_once(':') {
            Some((name, value)) if !name.trim().is_empty() => {
                headers.push((name.trim().to_owned(), value.trim().to_owned()))
            }
            _ => return Err(Failure::Usage(format!("--header {h:?}: expected \"Name: value\""))),
        }
    }
    let options = ConnectOptions {
        ca_file: args.ca.clone(),
        headers,
        subprotocols: args.protocol.clone(),
        deflate: !args.no_deflate,
        timeout: args.timeout,
        max_message_size: args.max_message_size,
    };
    let mut client = connect(&args.url, &options).await?;
    if args.send.is_empty() && args.receive.is_none() {
        return interactive(client).await;
    }
    for text in &args.send {
        client.send_text(text).await?;
    }
    for _ in 0..args.receive.unwrap_or(0) {
        match client.receive(Some(args.timeout)).await? {
            Received::Close(frame) => return Err(Failure::ClosedEarly(frame)),
            message => print_message(&message),
        }
    }
    client.close(code::NORMAL, "").await?;
    Ok(())
}

fn print_message(message: &Received) {
    let mut out = std::io::stdout().lock();
    let _ = match message {
        Received::Text(text) => writeln!(out, "{text}"),
        // Binary goes out as is; a terminal user sees raw bytes, a pipe gets them exactly.
        Received::Binary(data) => out.write_all(data).and_then(|()| writeln!(out)),
        Received::Close(_) => Ok(()),
    };
    let _ = out.flush();
}

/// stdin lines → text messages; messages → stdout lines. At end of input a Close (1000) is
/// sent and the messages still arriving are printed until the server's Close.
async fn interactive(mut client: Client) -> Result<(), Failure> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        if stdin_open {
            tokio::select! {
                line = lines.next_line() => match line {
                    Ok(Some(line)) => client.send_text(&line).await?,
                    Ok(None) | Err(_) => {
                        stdin_open = false;
                        client.send_close(code::NORMAL, "").await?;
                    }
                },
                received = client.receive(None) => match received? {
                    Received::Close(frame) => return closed_by_server(frame),
                    message => print_message(&message),
                },
            }
        } else {
            match client.receive(Some(Duration::from_secs(5))).await? {
                Received::Close(_) => return Ok(()),
                message => print_message(&message),
            }
        }
    }
}

fn closed_by_server(frame: Option<crate::ws::CloseFrame>) -> Result<(), Failure> {
    match frame {
        Some(f) if f.code == code::NORMAL || f.code == code::GOING_AWAY => Ok(()),
        None => Ok(()),
        other => Err(Failure::ClosedEarly(other)),
    }
}
