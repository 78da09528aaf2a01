//! Where a request's ring key comes from (`--key`): a random 6-digit request id (the
//! contract's default), a request header, the client's address, or the path.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use rand::Rng;

use crate::members::SIX_DIGITS;
use crate::ring::key_of;

/// `--help` text for the `--key` flag.
pub const KEY_HELP: &str = "\
request key source: random | header:NAME | client | path
  random       a random 6-digit request id per request (the contract's default)
  header:NAME  the value of request header NAME (a random id when it is missing)
  client       the client's IP address (one client sticks to one replica)
  path         the request path";

/// The source of a request's ring key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeySource {
    /// A random 6-digit id per request.
    #[default]
    Random,
    /// The value of this header (lower case); a random id when the request has none.
    Header(String),
    /// The client's IP address (not its port, so a client's connections agree).
    Client,
    /// The request path (without the query).
    Path,
}

/// What a key is computed from.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The value of the configured header, if the request has it.
    pub header: Option<&'a [u8]>,
    /// The client's IP address.
    pub client: IpAddr,
    /// The request path.
    pub path: &'a str,
}

impl KeySource {
    /// The header this source reads, if any (lower case).
    pub fn header_name(&self) -> Option<&str> {
        match self {
            KeySource::Header(h) => Some(h),
            _ => None,
        }
    }

    /// The ring key of a request: a random 6-digit id as is (the assignment's `H(i)` takes
    /// it directly), anything else the xxh3 of its bytes.
    pub fn key(&self, facts: RequestFacts<'_>, rng: &mut impl Rng) -> u64 {
        match self {
            KeySource::Random => rng.gen_range(SIX_DIGITS),
            KeySource::Header(_) => match facts.header {
                Some(v) => key_of(v),
                None => rng.gen_range(SIX_DIGITS),
            },
            KeySource::Client => key_of(facts.client.to_string().as_bytes()),
            KeySource::Path => key_of(facts.path.as_bytes()),
        }
    }
}

impl FromStr for KeySource {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s.split_once(':') {
            None => match s.to_ascii_lowercase().as_str() {
                "random" => Ok(KeySource::Random),
                "client" => Ok(KeySource::Client),
                "path" => Ok(KeySource::Path),
                _ => Err(format!(
                    "unknown key source {s:?}; expected random, header:NAME, client or path"
                )),
            },
            Some((kind, name)) if kind.eq_ignore_ascii_case("header") => {
                let valid = !name.is_empty()
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
                if valid {
                    Ok(KeySource::Header(name.to_ascii_lowercase()))
                } else {
                    Err(format!("{name:?} is not a header name"))
                }
            }
            Some(_) => Err(format!(
                "unknown key source {s:?}; expected random, header:NAME, client or path"
            )),
        }
    }
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Random => f.write_str("random"),
            KeySource::Header(h) => write!(f, "header:{h}"),
            KeySource::Client => f.write_str("client"),
            KeySource::Path => f.write_str("path"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn facts<'a>(header: Option<&'a [u8]>, client: [u8; 4], path: &'a str) -> RequestFacts<'a> {
        RequestFacts { header, client: IpAddr::from(client), path }
    }

    #[test]
    fn sources_parse_and_display() {
        assert_eq!("random".parse::<KeySource>().unwrap(), KeySource::Random);
        assert_eq!("client".parse::<KeySource>().unwrap(), KeySource::Client);
        assert_eq!("PATH".parse::<KeySource>().unwrap(), KeySource::Path);
        assert_eq!(
            "header:X-User".parse::<KeySource>().unwrap(),
            KeySource::Header("x-user".into())
        );
        for s in ["random", "client", "path", "header:x-user"] {
            assert_eq!(s.parse::<KeySource>().unwrap().to_string(), s);
        }
        assert!("header:".parse::<KeySource>().is_err());
        assert!("header:a b".parse::<KeySource>().is_err());
        assert!("cookie:x".parse::<KeySource>().is_err());
        assert!("ip".parse::<KeySource>().is_err());
    }

    #[test]
    fn random_keys_are_six_digit_ids() {
        let mut rng = StdRng::seed_from_u64(1);
        let f = facts(None, [127, 0, 0, 1], "/home");
        let keys: std::collections::HashSet<u64> =
            (0..100).map(|_| KeySource::Random.key(f, &mut rng)).collect();
        assert!(keys.iter().all(|k| SIX_DIGITS.contains(k)));
        assert!(keys.len() > 90, "random keys repeat too often");
    }

    #[test]
    fn header_client_and_path_keys_are_stable() {
        let mut rng = StdRng::seed_from_u64(1);
        let h = KeySource::Header("x-user".into());
        let a = h.key(facts(Some(b"alice"), [1, 1, 1, 1], "/a"), &mut rng);
        let b = h.key(facts(Some(b"alice"), [2, 2, 2, 2], "/b"), &mut rng);
        assert_eq!(a, b);
        assert_eq!(a, key_of(b"alice"));
        assert_ne!(a, h.key(facts(Some(b"bob"), [1, 1, 1, 1], "/a"), &mut rng));
        // Without the header the key is a random id.
        assert!(SIX_DIGITS.contains(&h.key(facts(None, [1, 1, 1, 1], "/a"), &mut rng)));

        let c = KeySource::Client;
        assert_eq!(
            c.key(facts(None, [10, 0, 0, 1], "/a"), &mut rng),
            c.key(facts(None, [10, 0, 0, 1], "/b"), &mut rng)
        );
        assert_ne!(
            c.key(facts(None, [10, 0, 0, 1], "/a"), &mut rng),
            c.key(facts(None, [10, 0, 0, 2], "/a"), &mut rng)
        );

        let p = KeySource::Path;
        assert_eq!(p.key(facts(None, [1, 1, 1, 1], "/home"), &mut rng), key_of(b"/home"));
        assert_eq!(
            p.key(facts(None, [1, 1, 1, 1], "/home"), &mut rng),
            p.key(facts(None, [9, 9, 9, 9], "/home"), &mut rng)
        );
    }
}
