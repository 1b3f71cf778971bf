//! Text cut to a byte limit at a character boundary, for fields whose size
//! is bounded (node fields, NACK reasons, error messages, audit entries).

/// Cuts `s` to at most `max` bytes, at a character boundary; whether it cut.
pub(crate) fn cut(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

/// `s` cut to at most `max` bytes, at a character boundary.
pub(crate) fn prefix(s: &str, max: usize) -> String {
    let mut out = s.to_owned();
    cut(&mut out, max);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_a_character_boundary() {
        let mut s = "aé".to_owned(); // 'é' is 2 bytes
        assert!(cut(&mut s, 2));
        assert_eq!(s, "a");
        let mut s = "abc".to_owned();
        assert!(!cut(&mut s, 3));
        assert_eq!(prefix("ééé", 5), "éé");
    }
}
