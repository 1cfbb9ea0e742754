//! Echo client for the Autobahn|Testsuite fuzzingserver (tests/autobahn/client.sh): runs every
//! case the server offers through `wsgate::client`, echoing each message, then asks the server
//! to write its reports.
//!
//! Usage: autobahn_client BASE_URL AGENT [--no-deflate] [--update-reports-only]
//! (BASE_URL e.g. ws://127.0.0.1:9001)

use std::time::Duration;

use wsgate::client::{connect, ConnectOptions, Received};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: autobahn_client BASE_URL AGENT [--no-deflate]");
        return std::process::ExitCode::from(2);
    }
    let (base, agent) = (&args[1], &args[2]);
    let options = ConnectOptions {
        deflate: !args.iter().any(|a| a == "--no-deflate"),
        // 9.* sends messages up to 16 MiB.
        max_message_size: 64 << 20,
        timeout: Duration::from_secs(10),
        ..ConnectOptions::default()
    };
    let count = if args.iter().any(|a| a == "--update-reports-only") {
        0
    } else {
        match connect(&format!("{base}/getCaseCount"), &options).await {
            Ok(mut c) => match c.receive(Some(Duration::from_secs(10))).await {
                Ok(Received::Text(n)) => n.trim().parse::<u32>().unwrap_or(0),
                other => {
                    eprintln!("getCaseCount: unexpected {other:?}");
                    return std::process::ExitCode::from(1);
                }
            },
            Err(e) => {
                eprintln!("getCaseCount: {e}");
                return std::process::ExitCode::from(1);
            }
        }
    };
    eprintln!("autobahn_client: {count} cases");
    for case in 1..=count {
        let url = format!("{base}/runCase?case={case}&agent={agent}");
        let mut client = match connect(&url, &options).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("case {case}: {e}");
                continue;
            }
        };
        loop {
            let sent = match client.receive(Some(Duration::from_secs(120))).await {
                Ok(Received::Text(t)) => client.send_text(&t).await,
                Ok(Received::Binary(b)) => client.send_binary(&b).await,
                Ok(Received::Close(_)) | Err(_) => break,
            };
            if sent.is_err() {
                break;
            }
        }
    }
    match connect(&format!("{base}/updateReports?agent={agent}"), &options).await {
        Ok(mut c) => {
            let _ = c.receive(Some(Duration::from_secs(30))).await;
        }
        Err(e) => {
            eprintln!("updateReports: {e}");
            return std::process::ExitCode::from(1);
        }
    }
    std::process::ExitCode::SUCCESS
}
