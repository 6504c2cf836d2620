//! Kubernetes resource quantities (`128Mi`, `0.5`, `500m`, `1e3`, `2Gi`):
//! parsing to an exact amount and the rounding Kubernetes applies when a
//! quantity becomes an integer (always up, as `Quantity.Value()` and
//! `MilliValue()` do).
//!
//! Owns: the quantity grammar and conversions. Must not touch: what a
//! quantity means for a resource (the worker and the scheduler decide).
//!
//! Grammar (from `k8s.io/apimachinery/pkg/api/resource`):
//! `[+-] digits [. digits] [suffix]`, where the suffix is a binary SI one
//! (`Ki Mi Gi Ti Pi Ei`), a decimal SI one (`n u m "" k M G T P E`) or a
//! decimal exponent (`e3`, `E-2`).

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    #[error("quantity {0:?} is empty")]
    Empty(String),
    #[error("quantity {0:?} does not match the form <number><suffix> (like 128Mi, 0.5, 500m)")]
    Syntax(String),
    #[error("quantity {0:?} has an unknown suffix {1:?}")]
    Suffix(String, String),
    #[error("quantity {0:?} is too large")]
    Overflow(String),
}

/// An exact amount in billionths of the unit (nano-units), so every quantity
/// Kubernetes accepts for CPU and memory is exact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Amount(pub i128);

const NANO: i128 = 1_000_000_000;

impl Amount {
    pub fn from_units(units: i64) -> Amount {
        Amount(units as i128 * NANO)
    }

    pub fn from_millis(millis: i64) -> Amount {
        Amount(millis as i128 * (NANO / 1000))
    }

    /// The value in units, rounded up (`Quantity.Value()`).
    pub fn units_ceil(self) -> i64 {
        clamp(div_ceil(self.0, NANO))
    }

    /// The value in thousandths, rounded up (`Quantity.MilliValue()`).
    pub fn millis_ceil(self) -> i64 {
        clamp(div_ceil(self.0, NANO / 1000))
    }

    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

fn clamp(v: i128) -> i64 {
    v.clamp(i64::MIN as i128, i64::MAX as i128) as i64
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

/// Parses a quantity string.
pub fn parse(s: &str) -> Result<Amount, QuantityError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(QuantityError::Empty(s.into()));
    }
    let (negative, rest) = match t.as_bytes()[0] {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let num_end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(num_end);
    let (int_part, frac_part) = match number.split_once('.') {
        Some((i, f)) => (i, f),
        None => (number, ""),
    };
    if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
        return Err(QuantityError::Syntax(s.into()));
    }
    let overflow = || QuantityError::Overflow(s.into());
    // The digits as one integer; leading zeros do not count against the range.
    let digits = format!("{int_part}{frac_part}");
    let digits = digits.trim_start_matches('0');
    let mut mantissa: i128 = 0;
    for d in digits.bytes() {
        mantissa = mantissa
            .checked_mul(10)
            .and_then(|m| m.checked_add((d - b'0') as i128))
            .ok_or_else(overflow)?;
    }
    let (binary_shift, exp10): (u32, i64) = match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        other if other.starts_with(['e', 'E']) => {
            let e = &other[1..];
            let body = e.strip_prefix(['+', '-']).unwrap_or(e);
            let valid = !body.is_empty() && body.bytes().all(|b| b.is_ascii_digit());
            if !valid {
                return Err(QuantityError::Suffix(s.into(), other.into()));
            }
            (0, e.parse::<i64>().map_err(|_| overflow())?)
        }
        other => return Err(QuantityError::Suffix(s.into(), other.into())),
    };
    let mantissa = mantissa.checked_shl(binary_shift).ok_or_else(overflow)?;
    if binary_shift > 0 && mantissa.leading_zeros() < 2 {
        return Err(overflow());
    }
    // value = mantissa × 10^(exp10 − fraction digits); in nano-units × 10^9.
    let e = exp10 - frac_part.len() as i64 + 9;
    let nanos = if mantissa == 0 {
        0
    } else if e >= 0 {
        let pow = 10i128.checked_pow(u32::try_from(e).map_err(|_| overflow())?);
        pow.and_then(|p| mantissa.checked_mul(p))
            .ok_or_else(overflow)?
    } else if -e > 38 {
        // Smaller than a nano-unit: Kubernetes rounds up to the smallest unit.
        1
    } else {
        div_ceil(mantissa, 10i128.pow((-e) as u32))
    };
    Ok(Amount(if negative { -nanos } else { nanos }))
}

/// A `Quantity` as CPU millicores (rounded up, as the kubelet does).
pub fn cpu_millis(q: &Quantity) -> Result<i64, QuantityError> {
    parse(&q.0).map(Amount::millis_ceil)
}

/// A `Quantity` as a whole number of units (bytes, pids), rounded up.
pub fn units(q: &Quantity) -> Result<i64, QuantityError> {
    parse(&q.0).map(Amount::units_ceil)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(s: &str) -> i64 {
        parse(s).unwrap().units_ceil()
    }
    fn m(s: &str) -> i64 {
        parse(s).unwrap().millis_ceil()
    }

    #[test]
    fn binary_and_decimal_suffixes() {
        assert_eq!(u("128Mi"), 128 << 20);
        assert_eq!(u("1Ki"), 1024);
        assert_eq!(u("2Gi"), 2 << 30);
        assert_eq!(u("1Ei"), 1 << 60);
        assert_eq!(u("1k"), 1000);
        assert_eq!(u("64M"), 64_000_000);
        assert_eq!(u("1G"), 1_000_000_000);
        assert_eq!(u("1T"), 1_000_000_000_000);
        assert_eq!(u("3"), 3);
        assert_eq!(u("0"), 0);
        assert_eq!(u("1.5Gi"), 3 << 29);
    }

    #[test]
    fn cpu_forms() {
        assert_eq!(m("0.5"), 500);
        assert_eq!(m("500m"), 500);
        assert_eq!(m("1"), 1000);
        assert_eq!(m("2.25"), 2250);
        assert_eq!(m(".1"), 100);
        assert_eq!(m("1."), 1000);
        assert_eq!(m("100000n"), 1);
        assert_eq!(m("1u"), 1, "rounded up");
        assert_eq!(m("0.0001"), 1, "rounded up");
        assert_eq!(m("250000u"), 250);
    }

    #[test]
    fn exponents_and_signs() {
        assert_eq!(u("1e3"), 1000);
        assert_eq!(u("1E3"), 1000);
        assert_eq!(u("12e-1"), 2, "1.2 rounds up");
        assert_eq!(m("12e-1"), 1200);
        assert_eq!(u("+5"), 5);
        assert_eq!(u("-5"), -5);
        assert_eq!(u("1e+2"), 100);
        assert_eq!(u("0001"), 1);
        assert_eq!(parse("1e-50").unwrap(), Amount(1));
    }

    #[test]
    fn bad_quantities() {
        for bad in [
            "", " ", "Mi", "1.2.3", "1Q", "1mi", "1e", "1e+", "1ee3", "x1", "1 Mi", ".",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(matches!(parse("1e400"), Err(QuantityError::Overflow(_))));
        assert!(matches!(
            parse("999999999999999Ei"),
            Err(QuantityError::Overflow(_))
        ));
    }

    #[test]
    fn ordering_and_helpers() {
        assert!(parse("1Gi").unwrap() > parse("1G").unwrap());
        assert_eq!(
            cpu_millis(&Quantity("250m".into())).unwrap(),
            Amount::from_millis(250).millis_ceil()
        );
        assert_eq!(units(&Quantity("1Mi".into())).unwrap(), 1 << 20);
        assert_eq!(Amount::from_units(2).millis_ceil(), 2000);
    }
}
