//! Read state, as the user chose (`email_mark_displayed`): a mail their client reports
//! displayed (XEP-0333) is flagged `\Seen` in the mailbox. Mail read in another client
//! changes nothing on XMPP (a chat message cannot be "unread" again).
//!
//! The session gathers the ids its user's client marked for a moment and then marks them
//! all through one IMAP login: in each watched folder, the mails found by their
//! Message-ID (`UID SEARCH HEADER Message-ID`), or by the UID in the gateway's own id of a
//! mail that had none ([`crate::imap::fallback_id`]).

use futures::TryStreamExt;

use crate::imap::{login, parse_fallback_id, ImapError, INBOX};
use crate::settings::{Account, EmailSettings};

/// Flags the mails with the ids `ids` (as the gateway gave them to XMPP) `\Seen` in the
/// account's INBOX and watched folders; how many were found.
///
/// # Errors
///
/// The login's or a command's failure (a folder that cannot be selected is skipped).
pub async fn mark_read(account: &Account, settings: &EmailSettings, ids: &[String]) -> Result<usize, ImapError> {
    let mut session = login(account, settings).await?;
    let mut marked = 0;
    for folder in std::iter::once(INBOX).chain(account.folders.iter().map(String::as_str)) {
        if session.select(folder).await.is_err() {
            continue;
        }
        let mut uids: Vec<u32> = Vec::new();
        for id in ids {
            match parse_fallback_id(id) {
                Some((in_folder, _, uid)) if in_folder == folder => uids.push(uid),
                Some(_) => {}
                None => {
                    let Some(query) = search_query(id) else { continue };
                    uids.extend(session.uid_search(&query).await?);
                }
            }
        }
        if uids.is_empty() {
            continue;
        }
        uids.sort_unstable();
        uids.dedup();
        let set = uids.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
        session.uid_store(&set, "+FLAGS.SILENT (\\Seen)").await?.try_collect::<Vec<_>>().await?;
        marked += uids.len();
    }
    let _ = session.logout().await;
    Ok(marked)
}

/// The IMAP search for the mail whose Message-ID is `id` (without angle brackets); `None`
/// for an id that cannot be written as a quoted string (quotes, backslashes, controls,
/// non-ASCII), which no mail's id of ours is.
fn search_query(id: &str) -> Option<String> {
    let plain = !id.is_empty() && id.len() <= 250 && id.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    plain.then(|| format!("HEADER Message-ID \"<{id}>\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_searched_quoted_and_odd_ones_not_at_all() {
        assert_eq!(search_query("m1@example.org").as_deref(), Some("HEADER Message-ID \"<m1@example.org>\""));
        for odd in ["", "a\"b", "a\\b", "a b", "a\r\nb", "é@x", &"x".repeat(251)] {
            assert_eq!(search_query(odd), None, "{odd:?}");
        }
    }
}
