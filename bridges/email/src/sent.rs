//! The Sent folder: a copy of every mail sent from XMPP is appended to the user's
//! mailbox, flagged `\Seen`, as a mail client does, so their other clients show it.
//!
//! The folder is the one the server marks `\Sent` (RFC 6154 SPECIAL-USE, in its LIST
//! answer), else one named `Sent`, else `Sent` is created. The copies wait in the bridge
//! store until appended (see `session.rs`): a mail is never sent twice for its copy's
//! sake, and an IMAP server that is down only delays the copy.

use async_imap::types::NameAttribute;
use futures::TryStreamExt;

use crate::imap::{login, ImapError, ImapSession};
use crate::settings::{Account, EmailSettings};

/// The name of the folder created when the mailbox has none for sent mail.
const DEFAULT_SENT: &str = "Sent";

/// A logged-in IMAP session with its Sent folder found, for appending copies.
pub struct SentFolder {
    /// The session copies are appended through.
    session: ImapSession,
    /// The folder's name as the server spells it (modified UTF-7 left as is).
    name: String,
}

/// Why one copy was not appended.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The server refused this copy (over quota, too big...): trying again will not help.
    #[error("the IMAP server refused the copy: {0}")]
    Refused(String),
    /// The connection failed: the copy waits for the next try.
    #[error(transparent)]
    Failed(#[from] ImapError),
}

impl SentFolder {
    /// Logs in and finds (or creates) the Sent folder.
    ///
    /// # Errors
    ///
    /// The login's, LIST's or CREATE's failure.
    pub async fn open(account: &Account, settings: &EmailSettings) -> Result<SentFolder, ImapError> {
        let mut session = login(account, settings).await?;
        let listed: Vec<_> = session.list(Some(""), Some("*")).await?.try_collect().await?;
        let folders: Vec<(&str, bool)> =
            listed.iter().map(|name| (name.name(), name.attributes().contains(&NameAttribute::Sent))).collect();
        let name = match sent_folder(&folders) {
            Some(name) => name.to_owned(),
            None => {
                session.create(DEFAULT_SENT).await?;
                DEFAULT_SENT.to_owned()
            }
        };
        drop(listed);
        Ok(SentFolder { session, name })
    }

    /// Appends one formatted mail, flagged `\Seen`.
    ///
    /// # Errors
    ///
    /// [`AppendError::Refused`] when the server answered NO or BAD to this mail,
    /// [`AppendError::Failed`] for anything else.
    pub async fn append(&mut self, raw: &[u8]) -> Result<(), AppendError> {
        match self.session.append(&self.name, Some("(\\Seen)"), None, raw).await {
            Ok(()) => Ok(()),
            Err(async_imap::error::Error::No(text) | async_imap::error::Error::Bad(text)) => Err(AppendError::Refused(text)),
            Err(error) => Err(AppendError::Failed(error.into())),
        }
    }

    /// The folder copies go to.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Logs out (errors do not matter: every copy is appended already).
    pub async fn close(mut self) {
        let _ = self.session.logout().await;
    }
}

/// Which of the mailbox's folders (name, marked `\Sent`) takes sent mail: the one marked
/// `\Sent`, else one named `Sent` in any case (also below a personal namespace prefix,
/// `INBOX.Sent`), else none (create [`DEFAULT_SENT`]).
fn sent_folder<'a>(folders: &[(&'a str, bool)]) -> Option<&'a str> {
    let named_sent = |name: &str| {
        let last = name.rsplit(['.', '/']).next().unwrap_or(name);
        last.eq_ignore_ascii_case(DEFAULT_SENT)
    };
    folders
        .iter()
        .find(|(_, marked)| *marked)
        .or_else(|| folders.iter().find(|(name, _)| named_sent(name)))
        .map(|(name, _)| *name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_marked_sent_wins_over_one_named_sent() {
        let folders = [("INBOX", false), ("Sent", false), ("Gesendete Objekte", true), ("Trash", false)];
        assert_eq!(sent_folder(&folders), Some("Gesendete Objekte"));
    }

    #[test]
    fn without_special_use_a_folder_named_sent_is_taken() {
        assert_eq!(sent_folder(&[("INBOX", false), ("sent", false)]), Some("sent"));
        assert_eq!(sent_folder(&[("INBOX", false), ("INBOX.Sent", false)]), Some("INBOX.Sent"));
        assert_eq!(sent_folder(&[("INBOX", false), ("Archive/Sent", false)]), Some("Archive/Sent"));
    }

    #[test]
    fn nothing_fitting_means_create_one() {
        assert_eq!(sent_folder(&[("INBOX", false), ("Sent Items Old", false), ("Consent", false)]), None);
        assert_eq!(sent_folder(&[]), None);
    }
}
