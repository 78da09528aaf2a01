//! The `--hash` value: which family, with which parameters.
//!
//! Syntax: `NAME[:KEY=VALUE[,KEY=VALUE]...]`, e.g. `assignment`, `assignment-quadratic`,
//! `assignment:slots=1024,k=10,probing=quadratic,fns=xxh3`, `mixed:points=320`,
//! `maglev:table=131071`, `jump`, `rendezvous`, `bounded:c=1.5,points=160`. `Display` gives
//! the canonical form (only non-default parameters), which parses back to the same value.

use std::fmt;
use std::str::FromStr;

use super::{
    AssignmentParams, BoundedParams, MaglevParams, MixedParams, Probing, Result, RingError, SlotFns,
};

/// `--help` text for the `--hash` flag.
pub const HASH_HELP: &str = "\
request -> server mapping: NAME[:KEY=VALUE,...]
  assignment            the contract's ring (default): slots=512, k=9, probing=linear|quadratic, fns=contract|xxh3
  assignment-quadratic  the same with quadratic probing
  mixed (xxh3)          well-mixed hash ring: points=160 per server
  maglev                Maglev lookup table: table=65537 (a prime)
  jump                  jump consistent hash over the server list
  rendezvous (hrw)      highest random weight
  bounded               bounded-load consistent hashing: c=1.25, points=160";

/// A hash family and its parameters; parsed from `--hash`, shown in `analyze` output.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RingKind {
    /// The assignment's slot ring (`assignment`, `assignment-quadratic`).
    Assignment(AssignmentParams),
    /// xxh3 point ring (`mixed`, `xxh3`).
    Mixed(MixedParams),
    /// Maglev lookup table (`maglev`).
    Maglev(MaglevParams),
    /// Jump consistent hash over the server list (`jump`).
    Jump,
    /// Highest random weight (`rendezvous`, `hrw`).
    Rendezvous,
    /// Bounded-load consistent hashing on the mixed ring (`bounded`).
    Bounded(BoundedParams),
}

impl Default for RingKind {
    fn default() -> Self {
        RingKind::Assignment(AssignmentParams::default())
    }
}

impl RingKind {
    /// The default of every family, in `--help` order (for `analyze`, which compares them).
    pub fn families() -> Vec<RingKind> {
        vec![
            RingKind::default(),
            RingKind::Assignment(AssignmentParams {
                probing: Probing::Quadratic,
                ..Default::default()
            }),
            RingKind::Mixed(MixedParams::default()),
            RingKind::Maglev(MaglevParams::default()),
            RingKind::Jump,
            RingKind::Rendezvous,
            RingKind::Bounded(BoundedParams::default()),
        ]
    }

    /// The family's name as in `--hash` (`assignment-quadratic` for quadratic probing).
    pub fn name(&self) -> &'static str {
        match self {
            RingKind::Assignment(p) if p.probing == Probing::Quadratic => "assignment-quadratic",
            RingKind::Assignment(_) => "assignment",
            RingKind::Mixed(_) => "mixed",
            RingKind::Maglev(_) => "maglev",
            RingKind::Jump => "jump",
            RingKind::Rendezvous => "rendezvous",
            RingKind::Bounded(_) => "bounded",
        }
    }

    /// Checks the parameters' ranges.
    pub fn validate(&self) -> Result<()> {
        match self {
            RingKind::Assignment(p) => p.validate(),
            RingKind::Mixed(p) => p.validate(),
            RingKind::Maglev(p) => p.validate(),
            RingKind::Jump | RingKind::Rendezvous => Ok(()),
            RingKind::Bounded(p) => p.validate(),
        }
    }

    /// One line for `--help` and `analyze`: what the family does, with its parameters.
    pub fn describe(&self) -> String {
        match self {
            RingKind::Assignment(p) => {
                let fns = match p.fns {
                    SlotFns::Contract => "H(i) = i² + 2i + 17, Φ(i, j) = i² + j² + 2j + 25",
                    SlotFns::Xxh3 => "H and Φ by xxh3",
                    SlotFns::Custom(_) => "custom H and Φ",
                };
                let probing = match p.probing {
                    Probing::Linear => "linear",
                    Probing::Quadratic => "quadratic",
                };
                format!(
                    "the assignment's ring: {} slots, {} virtual servers per server, {fns}, \
                     {probing} probing",
                    p.slots, p.virtual_per_server
                )
            }
            RingKind::Mixed(p) => format!(
                "well-mixed hash ring: {} xxh3 points per server, binary search",
                p.points_per_server
            ),
            RingKind::Maglev(p) => {
                format!("Maglev: {}-entry lookup table, one read per request", p.table_size)
            }
            RingKind::Jump => {
                "jump consistent hash (Lamping & Veach) over the server list, no table".into()
            }
            RingKind::Rendezvous => {
                "rendezvous: highest xxh3(key, server) wins, O(N) per request".into()
            }
            RingKind::Bounded(p) => format!(
                "bounded loads (Mirrokni et al.): c = {}, on a {}-point xxh3 ring",
                p.c, p.points_per_server
            ),
        }
    }
}

fn invalid(param: &'static str, detail: impl Into<String>) -> RingError {
    RingError::InvalidParam { param, detail: detail.into() }
}

fn number<T: FromStr>(param: &'static str, value: &str) -> Result<T> {
    value.parse().map_err(|_| invalid(param, format!("{value:?} is not a number")))
}

impl FromStr for RingKind {
    type Err = RingError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        let (name, params) = match s.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (s, None),
        };
        let mut kind = match name.to_ascii_lowercase().as_str() {
            "assignment" | "default" => RingKind::default(),
            "assignment-quadratic" => RingKind::Assignment(AssignmentParams {
                probing: Probing::Quadratic,
                ..Default::default()
            }),
            "mixed" | "xxh3" => RingKind::Mixed(MixedParams::default()),
            "maglev" => RingKind::Maglev(MaglevParams::default()),
            "jump" => RingKind::Jump,
            "rendezvous" | "hrw" => RingKind::Rendezvous,
            "bounded" => RingKind::Bounded(BoundedParams::default()),
            _ => return Err(RingError::Unknown(format!("{name:?}; expected one of {NAMES}"))),
        };
        for pair in params.into_iter().flat_map(|p| p.split(',')).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| RingError::Unknown(format!("{pair:?} is not KEY=VALUE")))?;
            let (key, value) = (key.trim(), value.trim());
            match (&mut kind, key) {
                (RingKind::Assignment(p), "slots") => p.slots = number("slots", value)?,
                (RingKind::Assignment(p), "k" | "virtual") => {
                    p.virtual_per_server = number("k", value)?
                }
                (RingKind::Assignment(p), "probing") => {
                    p.probing = match value {
                        "linear" => Probing::Linear,
                        "quadratic" => Probing::Quadratic,
                        _ => return Err(invalid("probing", format!("{value:?}"))),
                    }
                }
                (RingKind::Assignment(p), "fns") => {
                    p.fns = match value {
                        "contract" => SlotFns::Contract,
                        "xxh3" => SlotFns::Xxh3,
                        _ => return Err(invalid("fns", format!("{value:?}"))),
                    }
                }
                (RingKind::Mixed(p), "points") => p.points_per_server = number("points", value)?,
                (RingKind::Maglev(p), "table") => p.table_size = number("table", value)?,
                (RingKind::Bounded(p), "c") => p.c = number("c", value)?,
                (RingKind::Bounded(p), "points") => p.points_per_server = number("points", value)?,
                _ => {
                    return Err(RingError::Unknown(format!(
                        "{name} takes no parameter {key:?}; see --help"
                    )))
                }
            }
        }
        kind.validate()?;
        Ok(kind)
    }
}

/// The family names `FromStr` accepts, for its error message.
const NAMES: &str = "assignment, assignment-quadratic, mixed, xxh3, maglev, jump, rendezvous, \
                     hrw, bounded";

impl fmt::Display for RingKind {
    /// The canonical `--hash` form: the name, then the parameters that differ from the
    /// defaults.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut params: Vec<String> = Vec::new();
        match self {
            RingKind::Assignment(p) => {
                let d = AssignmentParams::default();
                if p.slots != d.slots {
                    params.push(format!("slots={}", p.slots));
                }
                if p.virtual_per_server != d.virtual_per_server {
                    params.push(format!("k={}", p.virtual_per_server));
                }
                match p.fns {
                    SlotFns::Contract => {}
                    SlotFns::Xxh3 => params.push("fns=xxh3".into()),
                    SlotFns::Custom(_) => params.push("fns=custom".into()),
                }
            }
            RingKind::Mixed(p) => {
                if *p != MixedParams::default() {
                    params.push(format!("points={}", p.points_per_server));
                }
            }
            RingKind::Maglev(p) => {
                if *p != MaglevParams::default() {
                    params.push(format!("table={}", p.table_size));
                }
            }
            RingKind::Jump | RingKind::Rendezvous => {}
            RingKind::Bounded(p) => {
                let d = BoundedParams::default();
                if p.c != d.c {
                    params.push(format!("c={}", p.c));
                }
                if p.points_per_server != d.points_per_server {
                    params.push(format!("points={}", p.points_per_server));
                }
            }
        }
        f.write_str(self.name())?;
        if !params.is_empty() {
            write!(f, ":{}", params.join(","))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_to_their_families() {
        assert_eq!("assignment".parse::<RingKind>().unwrap(), RingKind::default());
        assert_eq!(
            "assignment-quadratic".parse::<RingKind>().unwrap(),
            RingKind::Assignment(AssignmentParams {
                probing: Probing::Quadratic,
                ..Default::default()
            })
        );
        assert_eq!("xxh3".parse::<RingKind>().unwrap(), RingKind::Mixed(MixedParams::default()));
        assert_eq!("Mixed".parse::<RingKind>().unwrap(), RingKind::Mixed(MixedParams::default()));
        assert_eq!("hrw".parse::<RingKind>().unwrap(), RingKind::Rendezvous);
        assert_eq!("jump".parse::<RingKind>().unwrap(), RingKind::Jump);
        assert!(matches!("ketama".parse::<RingKind>(), Err(RingError::Unknown(_))));
    }

    #[test]
    fn parameters_parse_and_are_validated() {
        let k: RingKind = "assignment:slots=1024,k=10,probing=quadratic,fns=xxh3".parse().unwrap();
        assert_eq!(
            k,
            RingKind::Assignment(AssignmentParams {
                slots: 1024,
                virtual_per_server: 10,
                probing: Probing::Quadratic,
                fns: SlotFns::Xxh3,
            })
        );
        let b: RingKind = "bounded:c=1.5,points=40".parse().unwrap();
        assert_eq!(b, RingKind::Bounded(BoundedParams { c: 1.5, points_per_server: 40 }));
        assert!(matches!(
            "maglev:table=65536".parse::<RingKind>(),
            Err(RingError::InvalidParam { param: "table", .. })
        ));
        assert!(matches!(
            "bounded:c=0.5".parse::<RingKind>(),
            Err(RingError::InvalidParam { param: "c", .. })
        ));
        assert!(matches!(
            "mixed:points=x".parse::<RingKind>(),
            Err(RingError::InvalidParam { param: "points", .. })
        ));
        assert!(matches!("jump:points=3".parse::<RingKind>(), Err(RingError::Unknown(_))));
        assert!(matches!("mixed:points".parse::<RingKind>(), Err(RingError::Unknown(_))));
    }

    #[test]
    fn display_is_canonical_and_round_trips() {
        for k in RingKind::families() {
            assert_eq!(k.to_string().parse::<RingKind>().unwrap(), k, "{k}");
        }
        assert_eq!(RingKind::default().to_string(), "assignment");
        assert_eq!(RingKind::families()[1].to_string(), "assignment-quadratic");
        for s in [
            "assignment:slots=1024,k=10,fns=xxh3",
            "assignment-quadratic:slots=64",
            "mixed:points=320",
            "maglev:table=131071",
            "bounded:c=1.5,points=40",
        ] {
            assert_eq!(s.parse::<RingKind>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn every_family_has_a_one_line_description() {
        let d = RingKind::default().describe();
        assert!(d.contains("512 slots") && d.contains("9 virtual") && d.contains("linear"), "{d}");
        for k in RingKind::families() {
            assert!(!k.describe().is_empty() && !k.describe().contains('\n'));
        }
    }
}
