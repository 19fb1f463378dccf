//! The links of a message that the `media` plugin fetches: http(s) URLs of the configured hosts, in the order
//! they appear, each once, in a canonical form (tracking parameters and the fragment taken off, the host in
//! lower case), which is also what the upload cache is keyed by.

use url::Url;

/// Query parameters that only track who shared a link (taken off before fetching and caching).
const TRACKING: &[&str] = &[
    "igsh",
    "igshid",
    "fbclid",
    "gclid",
    "dclid",
    "gbraid",
    "wbraid",
    "msclkid",
    "mc_cid",
    "mc_eid",
    "si",
    "ref_src",
    "ref_url",
    "share_id",
    "_branch_match_id",
    "_t",
    "s_cid",
];

/// Longest link looked at, in bytes.
const MAX_URL_BYTES: usize = 2048;

fn is_tracking(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    name.starts_with("utm_") || TRACKING.contains(&name.as_str())
}

/// The canonical form of a link: http(s) only, no credentials, no fragment, no tracking parameters.
pub fn canonical(url: &Url) -> Option<Url> {
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return None;
    }
    if !url.username().is_empty() || url.password().is_some() {
        return None;
    }
    let mut url = url.clone();
    url.set_fragment(None);
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(name, _)| !is_tracking(name))
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    Some(url)
}

/// The http(s) links in `text`, in order, each once (canonical), that `wanted` accepts by host; at most `max`.
pub fn links(text: &str, max: usize, wanted: impl Fn(&str) -> bool) -> Vec<Url> {
    let mut found: Vec<Url> = Vec::new();
    let mut rest = text;
    while let Some(start) = find_scheme(rest) {
        let candidate = &rest[start..];
        let end =
            candidate.find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"')).unwrap_or(candidate.len());
        let raw = candidate[..end].trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '}', '\'']);
        rest = &candidate[end..];
        if raw.len() > MAX_URL_BYTES {
            continue;
        }
        let Some(url) = Url::parse(raw).ok().as_ref().and_then(canonical) else {
            continue;
        };
        if url.host_str().is_some_and(&wanted) && !found.contains(&url) {
            found.push(url);
            if found.len() == max {
                break;
            }
        }
    }
    found
}

/// Where the next `http://` or `https://` starts in lower-case `text`.
fn find_scheme(lower: &str) -> Option<usize> {
    match (lower.find("https://"), lower.find("http://")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instagram(host: &str) -> bool {
        host == "instagram.com" || host.ends_with(".instagram.com")
    }

    #[test]
    fn links_of_the_hosts_are_found_in_order_once_and_without_tracking() {
        let text = "look (https://www.instagram.com/reel/Cx1/?igsh=abc&utm_source=ig_web) and \
                    https://example.org/x, again HTTPS://www.instagram.com/reel/Cx1/#top. \
                    also https://www.instagram.com/p/Zz9/?img_index=2!";
        let found: Vec<String> = links(text, 5, instagram).iter().map(Url::to_string).collect();
        assert_eq!(found, ["https://www.instagram.com/reel/Cx1/", "https://www.instagram.com/p/Zz9/?img_index=2"]);
        assert_eq!(links(text, 1, instagram).len(), 1, "at most max");
    }

    #[test]
    fn a_long_message_is_read_in_linear_time() {
        let text = "http://x ".repeat(8000);
        let started = std::time::Instant::now();
        assert!(links(&text, 3, |_| false).is_empty());
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
    }

    #[test]
    fn only_http_without_credentials_is_fetched() {
        for text in ["file:///etc/passwd", "ftp://instagram.com/x", "https://user:pw@instagram.com/p/1", "javascript:x"]
        {
            assert!(links(text, 5, |_| true).is_empty(), "{text}");
        }
        let long = format!("https://instagram.com/{}", "a".repeat(3000));
        assert!(links(&long, 5, |_| true).is_empty());
    }
}
