//! The similarity metric: higher score is better for both.

use crate::error::{Error, Result};

/// How a query scores an item or node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Metric {
    /// Inner product `<q, x>`.
    #[default]
    Ip,
    /// Negated squared L2 distance `-||q - x||²`.
    L2,
}

impl Metric {
    /// Score from the inner-product part `ip = <q, x>`, the query norm `||q||²` and the
    /// vector norm `||x||²`: `ip` for [`Metric::Ip`], `-(qn - 2 ip + xn)` for [`Metric::L2`].
    #[inline]
    pub fn score(self, ip: f32, qnorm: f32, xnorm: f32) -> f32 {
        match self {
            Metric::Ip => ip,
            Metric::L2 => -(qnorm - 2.0 * ip + xnorm),
        }
    }
    /// The name used in files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Ip => "ip",
            Metric::L2 => "l2",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "ip" => Ok(Metric::Ip),
            "l2" => Ok(Metric::L2),
            _ => Err(Error::param(format!("metric '{s}': expected ip or l2"))),
        }
    }
}
