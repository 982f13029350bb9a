//! Ranges of the numeric settings, checked where a value enters: the command line and recipes,
//! both through the flags' clap value parsers (`spp::job`'s options structs).

/// A whole number ≥ 1.
pub fn positive_usize(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("{s:?} is not a whole number ≥ 1")),
    }
}

/// A whole number ≥ 0.
pub fn count(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("{s:?} is not a whole number ≥ 0"))
}

/// A seed: a whole number in 0 ..= 2^64 − 1.
pub fn seed(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<u64>()
        .map_err(|_| format!("{s:?} is not a whole number in 0..=18446744073709551615"))
}

fn finite(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() => Ok(x),
        Ok(_) => Err(format!("{s} is not a finite number")),
        Err(_) => Err(format!("{s:?} is not a number")),
    }
}

/// A finite number > 0.
pub fn positive(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if x <= 0.0 {
        return Err(format!("{s} must be greater than 0"));
    }
    Ok(x)
}

/// A finite number ≥ 0.
pub fn non_negative(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if x < 0.0 {
        return Err(format!("{s} must be 0 or more"));
    }
    Ok(x)
}

/// A probability of dropping: 0 ≤ p < 1.
pub fn dropout(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if !(0.0..1.0).contains(&x) {
        return Err(format!(
            "{s} is not a dropout probability: use a value in [0, 1), e.g. 0.05 (0 turns dropout off)"
        ));
    }
    Ok(x)
}

/// A fraction in [0, 1].
pub fn fraction(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if !(0.0..=1.0).contains(&x) {
        return Err(format!("{s} must lie in [0, 1]"));
    }
    Ok(x)
}

/// Nucleus mass: 0 < p ≤ 1.
pub fn top_p(s: &str) -> Result<f64, String> {
    let x = finite(s)?;
    if !(x > 0.0 && x <= 1.0) {
        return Err(format!("{s} must lie in (0, 1] (1 keeps every token)"));
    }
    Ok(x)
}

/// `--lr`: a finite learning rate > 0.
pub fn learning_rate(s: &str) -> Result<f64, String> {
    positive(s)
        .map_err(|e| format!("{e}: the learning rate must be a finite number > 0, e.g. 4e-3"))
}

/// `--max-steps`: ≥ 1 optimizer step.
pub fn max_steps(s: &str) -> Result<usize, String> {
    positive_usize(s).map_err(|e| {
        format!("{e}: train at least one step (leave --max-steps out to use --epochs)")
    })
}

/// `--epochs`: ≥ 1.
pub fn epochs(s: &str) -> Result<usize, String> {
    positive_usize(s)
        .map_err(|e| format!("{e}: train at least one epoch (or give --max-steps N instead)"))
}

/// `--max-windows`: ≥ 1.
pub fn max_windows(s: &str) -> Result<usize, String> {
    positive_usize(s)
        .map_err(|e| format!("{e}: evaluate at least one window (leave --max-windows out for all)"))
}

/// `--seqlen` of perplexity and calibration: ≥ 2 tokens (one prediction needs two).
pub fn seqlen(s: &str) -> Result<usize, String> {
    match positive_usize(s)? {
        1 => Err("must be at least 2 (a window of one token predicts nothing)".into()),
        n => Ok(n),
    }
}

/// `--nsamples`: 1 ..= 1,000,000 calibration windows.
pub fn nsamples(s: &str) -> Result<usize, String> {
    match positive_usize(s)? {
        n if n > 1_000_000 => Err(format!(
            "{n} calibration windows is more than any pruning needs (the papers use 128): use at most 1000000"
        )),
        n => Ok(n),
    }
}

/// `--percdamp`: a finite dampening fraction in [0, 1].
pub fn percdamp(s: &str) -> Result<f64, String> {
    fraction(s)
        .map_err(|e| format!("{e}: the dampening is a fraction of the mean diagonal, e.g. 0.01"))
}

/// A boolean (`true` / `false`).
pub fn boolean(s: &str) -> Result<bool, String> {
    match s.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{s:?} is not true or false")),
    }
}

/// `--targets`: any of q,k,v,o,gate,up,down (or all).
pub fn targets(s: &str) -> Result<String, String> {
    crate::prune::parse_targets(s)
        .map(|_| s.to_string())
        .map_err(|e| e.to_string())
}

pub use crate::sys::available_memory;

/// Refuses work whose predicted peak memory `bytes` exceeds what the machine has available,
/// before anything large is allocated; `what` names it, `hint` says which flag lowers it.
pub fn check_memory(what: &str, bytes: u64, hint: &str) -> crate::Result<()> {
    let Some(avail) = available_memory() else {
        return Ok(());
    };
    if bytes > avail {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        crate::bail!(
            "{what} would need about {:.1} GiB but this machine has {:.1} GiB available: {hint}",
            gib(bytes),
            gib(avail)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert!(learning_rate("-1").is_err());
        assert!(learning_rate("nan").is_err());
        assert!(learning_rate("inf").is_err());
        assert!(learning_rate("1e-4").is_ok());
        assert!(dropout("1.5").is_err() && dropout("-0.1").is_err() && dropout("1").is_err());
        assert!(dropout("0").is_ok());
        assert!(max_steps("0").is_err() && epochs("0").is_err() && max_windows("0").is_err());
        assert!(targets("q,xyz").is_err() && targets("").is_err());
        assert_eq!(targets("q,v").as_deref(), Ok("q,v"));
        assert!(seed("-1").is_err() && count("x").is_err() && boolean("yes").is_err());
    }
}
