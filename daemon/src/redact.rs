//! Credentials in URLs never reach a message. Every place that prints a URL a user gave (the
//! target and its endpoint, upstream caches, the public URL, errors about any of them) prints
//! it through [`url`].
//!
//! Invariant: in the text [`url`] returns, the userinfo of every `scheme://userinfo@host` in
//! its input is masked: `user:password` becomes `user:***`, and a user name alone (how tokens
//! are often passed: `https://TOKEN@host`) becomes `***`. Everything else is kept, so a
//! message still says which URL it is about. URLs inside the text count too (an `endpoint=`
//! inside an `s3://` URL); percent-encoded ones (`https%3A%2F%2F…`) are not recognised.

/// `text` with the userinfo of every URL in it masked (see the module doc).
pub fn url(text: &str) -> String {
    const SEPARATOR: &str = "://";
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(SEPARATOR) {
        let (before, after) = rest.split_at(at + SEPARATOR.len());
        shown.push_str(before);
        let end = after
            .find(|c: char| matches!(c, '/' | '?' | '#' | '&') || c.is_whitespace())
            .unwrap_or(after.len());
        let (authority, tail) = after.split_at(end);
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _)) => shown.push_str(&format!("{user}:***@")),
                    None => shown.push_str("***@"),
                }
                shown.push_str(host);
            }
            None => shown.push_str(authority),
        }
        rest = tail;
    }
    shown.push_str(rest);
    shown
}

/// Whether `text` (a URL) carries userinfo, which [`url`] would mask.
pub fn has_userinfo(text: &str) -> bool {
    url(text) != text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_and_lone_tokens_are_masked_and_the_rest_kept() {
        assert_eq!(
            url("https://user:s3cret@cache.example/nix/"),
            "https://user:***@cache.example/nix/"
        );
        assert_eq!(url("https://ghp_t0ken@host"), "https://***@host");
        assert_eq!(
            url("s3://KEY:SECRET@bucket?region=auto"),
            "s3://KEY:***@bucket?region=auto"
        );
        assert_eq!(
            url("s3://b?endpoint=https://u:pw@h:9000&region=auto"),
            "s3://b?endpoint=https://u:***@h:9000&region=auto"
        );
        assert_eq!(
            url("'http://a:b@c' and ftp://d@e"),
            "'http://a:***@c' and ftp://***@e"
        );
        // A password holding '@' or ':' is masked whole.
        assert_eq!(url("https://u:p@ss:w@host/"), "https://u:***@host/");
    }

    #[test]
    fn urls_without_credentials_are_unchanged() {
        for text in [
            "https://cache.nixos.org/",
            "file:///var/cache/nix",
            "s3://bucket?endpoint=http://127.0.0.1:9000&region=us-east-1",
            "not a url at all",
            "mailto:someone@example.org",
        ] {
            assert_eq!(url(text), text);
            assert!(!has_userinfo(text));
        }
    }
}
