//! Rules for names: of groups, listeners, route tables, clusters, rate limits and routes.

/// Longest accepted name.
pub const MAX_NAME_LEN: usize = 128;

/// Checks a resource or group name: 1 to 128 characters of `[A-Za-z0-9._-]`,
/// starting with a letter or digit. Returns the reason when refused.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "is {} characters long, over the limit of {MAX_NAME_LEN}",
            name.len()
        ));
    }
    let mut chars = name.chars();
    if let Some(first) = chars.next()
        && !first.is_ascii_alphanumeric()
    {
        return Err(format!("{name:?} must start with a letter or digit"));
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{name:?} contains {bad:?}; allowed are letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks a group name (same rules as resource names).
pub fn check_group(group: &str) -> Result<(), String> {
    check_name(group)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("api").is_ok());
        assert!(check_name("api-limit.v2_x").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_name(&"a".repeat(129)).is_err());
    }
}
