//! Files a user links to (XEP-0066, as XEP-0363 clients share their uploads), fetched so
//! that a mail carries them as attachments.
//!
//! Only from the user's own server: a link is followed when its host is the user's
//! domain or one of its subdomains, or where that domain's upload service serves files
//! (learnt from its slots, see [`Uploader::download_origins`]). Anything else, a link to
//! some web page or to an address inside the gateway's network, is refused with
//! `not-allowed`. The fetch goes through the uploader's HTTP clients, so the network
//! policy holds (public addresses only for domains the administrator did not list), no
//! redirect is followed, and a file past the size limit is dropped as it streams in.

use std::sync::Arc;

use bridge_core::model::{Attachment, FailureKind, UserId};
use bridge_core::{BoxFuture, FetchError, FileFetcher};
use tracing::debug;

use crate::upload::{self, Uploader};

/// The longest file name kept from a URL, in characters.
const MAX_NAME_CHARS: usize = 100;

/// Fetches linked files for the email bridge, with the uploader's clients and knowledge
/// of each domain's upload service.
pub struct LinkedFiles {
    /// Knows the upload services, holds the HTTP clients.
    uploader: Arc<Uploader>,
}

impl LinkedFiles {
    /// Files fetched through `uploader`'s clients, from its domains' upload services.
    pub fn new(uploader: Arc<Uploader>) -> Self {
        LinkedFiles { uploader }
    }
}

impl FileFetcher for LinkedFiles {
    fn fetch(&self, user: &UserId, url: &str, max_bytes: usize) -> BoxFuture<'static, Result<Attachment, FetchError>> {
        let (uploader, url) = (self.uploader.clone(), url.to_owned());
        let domain = user.0.rsplit('@').next().unwrap_or_default().to_ascii_lowercase();
        Box::pin(async move { fetch(&uploader, &domain, &url, max_bytes).await })
    }
}

/// The file at `url`, linked by a user of `domain`.
async fn fetch(uploader: &Uploader, domain: &str, url: &str, max_bytes: usize) -> Result<Attachment, FetchError> {
    let fail = |kind, text: String| FetchError { kind, text };
    let parsed = reqwest::Url::parse(url).map_err(|e| fail(FailureKind::NotAcceptable, format!("the link is not a URL: {e}")))?;
    let origins = uploader.download_origins(domain).await;
    if !is_allowed(&parsed, domain, &origins) {
        let text = format!("files are only taken from {domain} and its upload service, not from {}", parsed.host_str().unwrap_or("there"));
        return Err(fail(FailureKind::NotAllowed, text));
    }
    let trusted = uploader.is_trusted(domain);
    upload::check_url(url, trusted).map_err(|e| fail(FailureKind::NotAllowed, e.to_string()))?;
    let http = uploader.client_for(domain).map_err(|e| fail(FailureKind::Unavailable, e.to_string()))?;
    let unavailable = |e: reqwest::Error| fail(FailureKind::Unavailable, format!("the download failed: {}", e.without_url()));
    let mut response = http.get(parsed.clone()).send().await.map_err(unavailable)?;
    if !response.status().is_success() {
        return Err(fail(FailureKind::Unavailable, format!("the upload service answered {}", response.status())));
    }
    let too_large = |size: u64| fail(FailureKind::ResourceConstraint, format!("the file has {size} bytes or more; mail takes files of at most {max_bytes} bytes here"));
    if let Some(size) = response.content_length().filter(|size| *size > max_bytes as u64) {
        return Err(too_large(size));
    }
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|essence| essence.trim().to_ascii_lowercase())
        .filter(|essence| essence.contains('/'))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    let mut content = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(unavailable)? {
        if content.len() + chunk.len() > max_bytes {
            return Err(too_large((content.len() + chunk.len()) as u64));
        }
        content.extend_from_slice(&chunk);
    }
    let name = file_name(&parsed);
    debug!(%name, size = content.len(), %content_type, "linked file fetched");
    Ok(Attachment { name, content_type, content })
}

/// Whether a file may be fetched from `url` for a user of `domain`: http(s), on the
/// domain or a subdomain of it, or at one of the `origins` of its upload service.
fn is_allowed(url: &reqwest::Url, domain: &str, origins: &[String]) -> bool {
    if !matches!(url.scheme(), "https" | "http") || url.username() != "" || url.password().is_some() {
        return false;
    }
    let Some(host) = url.host_str().map(str::to_ascii_lowercase) else { return false };
    let on_domain = host == domain || host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.'));
    on_domain || upload::origin_of(url.as_str()).is_some_and(|origin| origins.contains(&origin))
}

/// The file's name: the URL's last path segment, percent-decoded, without controls or
/// path separators, at most [`MAX_NAME_CHARS`] characters; `attachment` when that
/// leaves nothing.
fn file_name(url: &reqwest::Url) -> String {
    let last = url.path_segments().and_then(|mut segments| segments.next_back()).unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(last).decode_utf8_lossy();
    let name = upload::slot_filename(&decoded);
    let name: String = name.chars().take(MAX_NAME_CHARS).collect();
    if name.trim().is_empty() { "attachment".to_owned() } else { name }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> reqwest::Url {
        reqwest::Url::parse(text).unwrap()
    }

    #[test]
    fn files_come_only_from_the_users_domain_and_its_upload_service() {
        let origins = vec!["http://127.0.0.1:5280".to_owned()];
        for ok in [
            "https://example.org/f/a.jpg",
            "https://upload.example.org/f/a.jpg",
            "https://UPLOAD.Example.org:8443/f/a.jpg",
            "http://127.0.0.1:5280/file_share/abc/a.jpg",
        ] {
            assert!(is_allowed(&url(ok), "example.org", &origins), "{ok}");
        }
        for refused in [
            "https://evil.example/a.jpg",
            "https://notexample.org/a.jpg",
            "https://example.org.evil.example/a.jpg",
            "http://127.0.0.1:6379/",
            "https://127.0.0.1:5280/file_share/abc/a.jpg",
            "ftp://example.org/a.jpg",
            "file:///etc/passwd",
            "https://user:pw@example.org/a.jpg",
        ] {
            assert!(!is_allowed(&url(refused), "example.org", &origins), "{refused}");
        }
    }

    #[test]
    fn the_name_is_the_last_segment_decoded_and_made_safe() {
        assert_eq!(file_name(&url("http://h/file_share/0f3a/photo%20one.jpg")), "photo one.jpg");
        assert_eq!(file_name(&url("http://h/a/Gr%C3%BC%C3%9Fe.txt?x=1")), "Grüße.txt");
        assert_eq!(file_name(&url("http://h/a/..%2F..%2Fetc%2Fpasswd")), "passwd");
        assert_eq!(file_name(&url("http://h/a/b%0D%0ABcc%3A%20x")), "bBcc: x");
        assert_eq!(file_name(&url("http://h/")), "attachment");
        assert_eq!(file_name(&url(&format!("http://h/{}.png", "x".repeat(300)))).chars().count(), MAX_NAME_CHARS);
    }
}
