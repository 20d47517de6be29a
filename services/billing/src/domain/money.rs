//! Integer money: amounts in the currency's minor units, every division
//! rounded once, by the contract's mode. No floats anywhere.

use serde::{Deserialize, Serialize};

/// How a line's amount is rounded to the minor unit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rounding {
    /// Half away from zero (commercial rounding).
    #[default]
    HalfUp,
    /// Half to even (banker's rounding).
    HalfEven,
    /// Toward zero.
    Down,
}

impl Rounding {
    /// As the configuration names it, and the invoice records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Rounding::HalfUp => "half_up",
            Rounding::HalfEven => "half_even",
            Rounding::Down => "down",
        }
    }
}

impl From<meridian_config::value::Rounding> for Rounding {
    fn from(r: meridian_config::value::Rounding) -> Self {
        match r {
            meridian_config::value::Rounding::HalfUp => Rounding::HalfUp,
            meridian_config::value::Rounding::HalfEven => Rounding::HalfEven,
            meridian_config::value::Rounding::Down => Rounding::Down,
        }
    }
}

/// `numerator / denominator` (denominator > 0) as an integer, rounded.
pub fn divide(numerator: i128, denominator: i128, mode: Rounding) -> i64 {
    debug_assert!(denominator > 0);
    let (q, r) = (numerator / denominator, numerator % denominator);
    let away = if numerator < 0 { -1 } else { 1 };
    let twice = 2 * r.abs();
    let rounded = match mode {
        Rounding::Down => q,
        Rounding::HalfUp if twice >= denominator => q + away,
        Rounding::HalfEven if twice > denominator || (twice == denominator && q % 2 != 0) => q + away,
        Rounding::HalfUp | Rounding::HalfEven => q,
    };
    i64::try_from(rounded).unwrap_or(if rounded < 0 { i64::MIN } else { i64::MAX })
}

/// `per_million` millionths of `amount`, rounded.
pub fn share(amount: i64, per_million: u32, mode: Rounding) -> i64 {
    divide(i128::from(amount) * i128::from(per_million), 1_000_000, mode)
}

/// A work RVU in thousandths times a rate per RVU in minor units, rounded.
pub fn per_rvu(rvu_milli: u32, rate: i64, mode: Rounding) -> i64 {
    divide(i128::from(rvu_milli) * i128::from(rate), 1_000, mode)
}

/// Splits `total` over `weights` so the parts sum to `total` exactly: each
/// part rounded down, the units left over to the largest remainders (ties
/// to the earlier weight). All zero weights split evenly.
pub fn split(total: i64, weights: &[u64]) -> Vec<i64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let even = vec![1u64; weights.len()];
    let weights = if weights.iter().all(|w| *w == 0) { &even[..] } else { weights };
    let sum: i128 = weights.iter().map(|w| i128::from(*w)).sum();
    let total_wide = i128::from(total);
    let mut parts: Vec<i64> = Vec::with_capacity(weights.len());
    let mut remainders: Vec<(i128, usize)> = Vec::with_capacity(weights.len());
    for (i, w) in weights.iter().enumerate() {
        let exact = total_wide * i128::from(*w);
        parts.push(i64::try_from(exact.div_euclid(sum)).unwrap_or(0));
        remainders.push((exact.rem_euclid(sum), i));
    }
    let mut left = total - parts.iter().sum::<i64>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    for (_, i) in remainders.iter().cycle() {
        if left == 0 {
            break;
        }
        parts[*i] += 1;
        left -= 1;
    }
    parts
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rounding_modes_differ_only_at_halves() {
        assert_eq!(divide(25, 10, Rounding::HalfUp), 3);
        assert_eq!(divide(25, 10, Rounding::HalfEven), 2);
        assert_eq!(divide(35, 10, Rounding::HalfEven), 4);
        assert_eq!(divide(29, 10, Rounding::Down), 2);
        assert_eq!(divide(-25, 10, Rounding::HalfUp), -3);
        assert_eq!(divide(-25, 10, Rounding::HalfEven), -2);
        assert_eq!(divide(24, 10, Rounding::HalfUp), 2);
    }

    #[test]
    fn shares_and_rvus_round_once() {
        // 12.5% of 45.01 USD is 5.62625 → 5.63.
        assert_eq!(share(4_501, 125_000, Rounding::HalfUp), 563);
        // 0.85 wRVU at 32.50 per wRVU: 27.625 → 27.63 (half up) or 27.62 (half even).
        assert_eq!(per_rvu(850, 3_250, Rounding::HalfUp), 2_763);
        assert_eq!(per_rvu(850, 3_250, Rounding::HalfEven), 2_762);
        // JPY has no minor unit: 0.22 wRVU at 4,000 yen is 880 yen.
        assert_eq!(per_rvu(220, 4_000, Rounding::HalfUp), 880);
    }

    #[test]
    fn a_split_by_largest_remainder_is_exact() {
        assert_eq!(split(100, &[1, 1, 1]), vec![34, 33, 33]);
        assert_eq!(split(-100, &[1, 1, 1]), vec![-33, -33, -34]);
        assert_eq!(split(10, &[0, 0]), vec![5, 5]);
        assert_eq!(split(7, &[5, 3]), vec![4, 3]);
    }

    proptest! {
        #[test]
        fn splits_sum_exactly(total in -1_000_000_000i64..1_000_000_000, weights in prop::collection::vec(0u64..1_000_000, 1..20)) {
            let parts = split(total, &weights);
            prop_assert_eq!(parts.len(), weights.len());
            prop_assert_eq!(parts.iter().sum::<i64>(), total);
        }

        #[test]
        fn a_rounded_quotient_is_within_one_unit(n in -1_000_000_000i128..1_000_000_000, d in 1i128..1_000_000) {
            for mode in [Rounding::HalfUp, Rounding::HalfEven, Rounding::Down] {
                let q = i128::from(divide(n, d, mode));
                prop_assert!((q * d - n).abs() < d, "{n}/{d} → {q} ({mode:?})");
            }
        }
    }
}
