//! `bramble token create | list | revoke`: join tokens for new nodes, and
//! scoped API tokens for Home Assistant, Node-RED and other tools that speak
//! JSON on `<prefix>/api/<verb>` (docs/automation.md).

use std::path::Path;
use std::process::ExitCode;

use jiff::{SignedDuration, Timestamp};

use crate::master::tokens::{self, TokenInfo, TokenKind};
use crate::transport::messages::{Request, Response, TokenCreate, TokenRequest};

use super::CliError;
use super::client::Client;

/// Join tokens expire after a day unless told otherwise, like kubeadm's.
const DEFAULT_JOIN_TTL: &str = "24h";

#[derive(clap::Subcommand, Debug)]
pub enum Cmd {
    /// Create a join token (or, with --api, an API token) and print it once.
    Create(CreateArgs),
    /// List tokens (never their secrets).
    #[command(alias = "ls")]
    List(ListArgs),
    /// Revoke a token: it verifies as nothing from now on.
    #[command(alias = "delete")]
    Revoke {
        /// The token's id (the six characters `token list` shows), or the token itself.
        #[arg(required = true)]
        ids: Vec<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// An API token for automation tools instead of a join token.
    #[arg(long)]
    pub api: bool,
    /// Lifetime: `24h`, `90m`, `7d`, `0` for none. Default: 24h for join
    /// tokens, none for API tokens.
    #[arg(long)]
    pub ttl: Option<String>,
    /// API tokens: the verbs allowed, comma-separated (get, scale, restart,
    /// delete, apply, or *).
    #[arg(long, value_delimiter = ',')]
    pub verbs: Vec<String>,
    /// API tokens: the namespaces allowed (repeat or comma-separate; * for
    /// all). Default: `default`.
    #[arg(short = 'n', long = "namespace", value_delimiter = ',')]
    pub namespaces: Vec<String>,
    /// What the token is for.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Print only the token (for scripts).
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// `json`, or the table (default).
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    #[arg(long = "no-headers")]
    pub no_headers: bool,
}

pub async fn run(cmd: Cmd, config: Option<&Path>) -> Result<ExitCode, CliError> {
    let requests = match &cmd {
        Cmd::Create(a) => vec![TokenRequest::Create(create_request(a)?)],
        Cmd::List(a) => {
            if a.output.as_deref().is_some_and(|o| o != "json") {
                return Err(CliError::Usage(format!(
                    "--output {:?}: only json, or nothing for the table",
                    a.output.as_deref().unwrap_or_default()
                )));
            }
            vec![TokenRequest::List]
        }
        Cmd::Revoke { ids } => ids
            .iter()
            .map(|id| TokenRequest::Revoke { id: id.clone() })
            .collect(),
    };
    let cfg = super::load_config(config)?;
    let mut client = Client::connect(&cfg).await?;
    let mut result = Ok(ExitCode::SUCCESS);
    for req in requests {
        match (client.call(Request::Token(req)).await, &cmd) {
            (Ok(Response::TokenCreated { token, info }), Cmd::Create(a)) => {
                if a.quiet {
                    println!("{token}");
                } else {
                    print_created(&token, &info, &cfg.topic_prefix);
                }
            }
            (Ok(Response::Tokens(list)), Cmd::List(a)) => {
                if a.output.as_deref() == Some("json") {
                    let text = serde_json::to_string_pretty(&list).unwrap_or_default();
                    println!("{text}");
                } else {
                    print!("{}", table(&list, Timestamp::now(), !a.no_headers));
                }
            }
            (Ok(Response::Done(done)), Cmd::Revoke { .. }) => {
                for (_, word) in done {
                    println!("{word}");
                }
            }
            (Ok(other), _) => {
                result = Err(CliError::Unexpected(Box::new(other)));
                break;
            }
            (Err(e), _) => {
                result = Err(e);
                break;
            }
        }
    }
    client.close().await;
    result
}

fn create_request(a: &CreateArgs) -> Result<TokenCreate, CliError> {
    let usage = |e: tokens::TokenError| CliError::Usage(e.to_string());
    let ttl = match (&a.ttl, a.api) {
        (Some(t), _) => tokens::parse_ttl(t).map_err(usage)?,
        (None, false) => tokens::parse_ttl(DEFAULT_JOIN_TTL).map_err(usage)?,
        (None, true) => None,
    };
    let clean = |v: &[String]| -> Vec<String> {
        v.iter()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    let verbs = clean(&a.verbs);
    let mut namespaces = clean(&a.namespaces);
    if a.api {
        if verbs.is_empty() {
            return Err(CliError::Usage(
                "--api needs --verbs (some of get,scale,restart,delete,apply, or *)".into(),
            ));
        }
        if namespaces.is_empty() {
            namespaces.push(crate::api::DEFAULT_NAMESPACE.to_string());
        }
        tokens::check_scope(&verbs, &namespaces).map_err(usage)?;
    } else if !verbs.is_empty() || !namespaces.is_empty() {
        return Err(CliError::Usage(
            "--verbs and --namespace scope API tokens: add --api".into(),
        ));
    }
    Ok(TokenCreate {
        api: a.api,
        ttl_seconds: ttl,
        verbs,
        namespaces,
        description: a.description.clone(),
    })
}

fn print_created(token: &str, info: &TokenInfo, prefix: &str) {
    println!("{token}");
    let expiry = match info.expires.and_then(|e| Timestamp::from_second(e).ok()) {
        Some(t) => format!("expires {t}"),
        None => "never expires".to_string(),
    };
    match info.kind {
        TokenKind::Join => eprintln!(
            "Join token {} ({expiry}). It is shown only now: `bramble worker --join TOKEN --broker URL`.",
            info.id
        ),
        TokenKind::Api => eprintln!(
            "API token {} ({expiry}) for {} in {}. It is shown only now: put it in the \"token\" field of JSON commands on {prefix}/api/<verb>.",
            info.id,
            info.verbs.join(","),
            info.namespaces.join(",")
        ),
    }
}

/// Kubeadm-like `token list`: ID, TYPE, TTL, EXPIRES, SCOPE, DESCRIPTION.
pub fn table(list: &[TokenInfo], now: Timestamp, headers: bool) -> String {
    let mut text = String::new();
    if headers {
        text.push_str("ID\tTYPE\tTTL\tEXPIRES\tSCOPE\tDESCRIPTION\n");
    }
    for t in list {
        let (ttl, expires) = match t.expires.and_then(|e| Timestamp::from_second(e).ok()) {
            None => ("<forever>".to_string(), "<never>".to_string()),
            Some(_) if t.expired(now.as_second()) => {
                ("<expired>".to_string(), expires_text(t.expires))
            }
            Some(e) => (
                super::printers::human_duration(SignedDuration::from_secs(
                    e.as_second() - now.as_second(),
                )),
                expires_text(t.expires),
            ),
        };
        let scope = match t.kind {
            TokenKind::Join => "join".to_string(),
            TokenKind::Api => {
                let mut s = format!("{} in {}", t.verbs.join(","), t.namespaces.join(","));
                if let Some(sel) = &t.selector {
                    s.push_str(&format!(" ({sel})"));
                }
                s
            }
        };
        let kind = match t.kind {
            TokenKind::Join => "join",
            TokenKind::Api => "api",
        };
        let description = if t.description.is_empty() {
            "<none>"
        } else {
            &t.description
        };
        text.push_str(&format!(
            "{}\t{kind}\t{ttl}\t{expires}\t{scope}\t{description}\n",
            t.id
        ));
    }
    super::printers::tabwrite(&text, 0, 3)
}

fn expires_text(expires: Option<i64>) -> String {
    expires
        .and_then(|e| Timestamp::from_second(e).ok())
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "<never>".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, kind: TokenKind, expires: Option<i64>) -> TokenInfo {
        TokenInfo {
            id: id.into(),
            kind,
            expires,
            verbs: if kind == TokenKind::Api {
                vec!["scale".into(), "get".into()]
            } else {
                vec![]
            },
            namespaces: if kind == TokenKind::Api {
                vec!["home".into()]
            } else {
                vec![]
            },
            description: if id == "aaaaaa" {
                "pi".into()
            } else {
                "".into()
            },
            created: 0,
            selector: None,
        }
    }

    #[test]
    fn list_table() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let t = table(
            &[
                info("aaaaaa", TokenKind::Join, Some(1_000_000 + 86_400)),
                info("bbbbbb", TokenKind::Api, None),
                info("cccccc", TokenKind::Join, Some(999_000)),
            ],
            now,
            true,
        );
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID "), "{t}");
        assert!(
            lines[1].contains("join") && lines[1].contains("24h") && lines[1].contains("pi"),
            "{t}"
        );
        assert!(
            lines[2].contains("<forever>") && lines[2].contains("scale,get in home"),
            "{t}"
        );
        assert!(lines[3].contains("<expired>"), "{t}");
    }

    #[test]
    fn create_flags() {
        let a = CreateArgs {
            api: true,
            ttl: Some("1h30m".into()),
            verbs: vec!["scale".into(), "restart".into()],
            namespaces: vec![],
            description: String::new(),
            quiet: false,
        };
        let r = create_request(&a).unwrap();
        assert_eq!(r.ttl_seconds, Some(5400));
        assert_eq!(r.namespaces, vec!["default".to_string()]);
        let bad = CreateArgs {
            verbs: vec!["exec".into()],
            ..a
        };
        assert!(create_request(&bad).is_err());
        let join = CreateArgs {
            api: false,
            ttl: None,
            verbs: vec![],
            namespaces: vec![],
            description: String::new(),
            quiet: true,
        };
        assert_eq!(create_request(&join).unwrap().ttl_seconds, Some(86_400));
    }
}
