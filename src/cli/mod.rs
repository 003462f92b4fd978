//! Client subcommands that talk to a running agent over its HTTP API.

pub mod kv;
pub mod ops;

/// The agent's HTTP address: `--http-addr` > `BEACON_HTTP_ADDR` > `CONSUL_HTTP_ADDR` >
/// `127.0.0.1:8500`, with or without a scheme.
pub fn base_url(flag: Option<&str>) -> String {
    let raw = flag
        .map(str::to_string)
        .or_else(|| {
            std::env::var("BEACON_HTTP_ADDR")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .or_else(|| {
            std::env::var("CONSUL_HTTP_ADDR")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .unwrap_or_else(|| format!("127.0.0.1:{}", beacon::config::DEFAULT_HTTP_PORT));
    let raw = raw.trim_end_matches('/');
    if raw.starts_with("http://") || raw.starts_with("https://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    }
}

/// Consul's CLI spells long flags with one dash (`-recurse`, `-flags=1`); clap wants two.
pub fn normalize_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut after_separator = false;
    args.into_iter()
        .map(|a| {
            // After `--` every argument is data (`beacon kv put k -- -value`), as it was typed.
            let single_dash_long = !after_separator
                && a.starts_with('-')
                && !a.starts_with("--")
                && a.len() > 2
                && a.as_bytes()[1].is_ascii_alphabetic();
            after_separator |= a == "--";
            if single_dash_long { format!("-{a}") } else { a }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_and_addresses() {
        let args = normalize_flags(
            [
                "-recurse", "--base64", "-", "-flags=3", "-x", "key", "--", "-value",
            ]
            .map(String::from),
        );
        assert_eq!(
            args,
            [
                "--recurse",
                "--base64",
                "-",
                "--flags=3",
                "-x",
                "key",
                "--",
                "-value"
            ]
        );
        assert_eq!(base_url(Some("127.0.0.1:1")), "http://127.0.0.1:1");
        assert_eq!(base_url(Some("http://h:2/")), "http://h:2");
    }
}
