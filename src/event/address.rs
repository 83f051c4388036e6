//! Email addresses as OpenMail writes them: `Name <address>` or a bare address.
//!
//! `message.from` is one mailbox, `message.to` is one string that may hold several
//! comma-separated mailboxes, and each `cc` entry is one mailbox. [`Mailbox`] splits the
//! display name from the address; [`Mailbox::list`] walks a list, splitting on commas that
//! are neither inside a quoted display name (`"Lovelace, Ada" <ada@example.com>`) nor
//! inside angle brackets.
//!
//! This is the everyday subset of RFC 5322, not a validator: whatever sits between the
//! angle brackets (or the whole text, when there are none) is the address, as received.
//! Encoded words (`=?UTF-8?…?=`) are left as they are.
//!
//! ```
//! use openmail_webhooks::event::Mailbox;
//!
//! let from = Mailbox::parse("Ada Lovelace <ada@example.com>").unwrap();
//! assert_eq!(from.name(), Some("Ada Lovelace"));
//! assert_eq!(from.address(), "ada@example.com");
//!
//! let to: Vec<&str> = Mailbox::list(r#"inbox@openmail.sh, "Smith, Jane" <jane@example.com>"#)
//!     .map(|mailbox| mailbox.address())
//!     .collect();
//! assert_eq!(to, ["inbox@openmail.sh", "jane@example.com"]);
//! ```

use std::borrow::Cow;
use std::fmt;

/// One mailbox: an address and, when the text had one, a display name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox<'a> {
    name: Option<Cow<'a, str>>,
    address: &'a str,
}

impl<'a> Mailbox<'a> {
    /// The mailboxes of the comma-separated list in `text`, in order, skipping empty
    /// entries. Commas inside a quoted display name or angle brackets do not split.
    pub fn list(text: &'a str) -> impl Iterator<Item = Mailbox<'a>> + Clone + fmt::Debug {
        Mailboxes::new(text)
    }

    /// Splits `Name <address>`, `"Quoted, Name" <address>`, `<address>`,
    /// `address (Name)` or a bare `address`. Returns `None` when there is no address.
    pub fn parse(text: &'a str) -> Option<Self> {
        let text = text.trim();
        if let Some(open) = text.strip_suffix('>').and_then(|rest| rest.rfind('<')) {
            let (name, bracketed) = text.split_at_checked(open)?;
            let address = bracketed.get(1..bracketed.len().saturating_sub(1))?.trim();
            return non_empty(address).map(|address| Self {
                name: display_name(name),
                address,
            });
        }
        if let Some(open) = text.strip_suffix(')').and_then(|rest| rest.find('(')) {
            let (address, comment) = text.split_at_checked(open)?;
            let name = comment.get(1..comment.len().saturating_sub(1))?;
            return non_empty(address.trim()).map(|address| Self {
                name: display_name(name),
                address,
            });
        }
        non_empty(text).map(|address| Self {
            name: None,
            address,
        })
    }

    /// The address, such as `ada@example.com`, without angle brackets.
    pub fn address(&self) -> &'a str {
        self.address
    }

    /// The display name, unquoted, or `None` when the text had none.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl fmt::Display for Mailbox<'_> {
    /// Writes `address`, or `"Name" <address>` with the name quoted and escaped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            None => f.write_str(self.address),
            Some(name) => {
                f.write_str("\"")?;
                for character in name.chars() {
                    if matches!(character, '"' | '\\') {
                        f.write_str("\\")?;
                    }
                    write!(f, "{character}")?;
                }
                write!(f, "\" <{}>", self.address)
            }
        }
    }
}

/// The mailboxes of a comma-separated list, in order, skipping empty entries.
#[derive(Debug, Clone)]
pub(crate) struct Mailboxes<'a> {
    rest: &'a str,
}

impl<'a> Mailboxes<'a> {
    /// Walks the list in `text`.
    pub(crate) fn new(text: &'a str) -> Self {
        Self { rest: text }
    }
}

impl<'a> Iterator for Mailboxes<'a> {
    type Item = Mailbox<'a>;

    fn next(&mut self) -> Option<Mailbox<'a>> {
        while !self.rest.is_empty() {
            let end = top_level_comma(self.rest);
            let (entry, rest) = match end {
                Some(comma) => {
                    let (entry, rest) = self.rest.split_at_checked(comma)?;
                    (entry, rest.get(1..).unwrap_or_default())
                }
                None => (self.rest, ""),
            };
            self.rest = rest;
            if let Some(mailbox) = Mailbox::parse(entry) {
                return Some(mailbox);
            }
        }
        None
    }
}

/// The byte offset of the first comma outside quotes and angle brackets.
fn top_level_comma(text: &str) -> Option<usize> {
    let mut quoted = false;
    let mut escaped = false;
    let mut angle = false;
    // Every byte looked at is ASCII, so offsets fall on character boundaries.
    for (offset, byte) in text.bytes().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        match byte {
            b'\\' if quoted => escaped = true,
            b'"' if !angle => quoted = !quoted,
            b'<' if !quoted => angle = true,
            b'>' if !quoted => angle = false,
            b',' if !quoted && !angle => return Some(offset),
            _ => {}
        }
    }
    None
}

/// Trims a display name and removes one level of quoting and its backslash escapes.
fn display_name(text: &str) -> Option<Cow<'_, str>> {
    let text = text.trim();
    let unquoted = text
        .strip_prefix('"')
        .and_then(|inner| inner.strip_suffix('"'))
        .map(str::trim);
    let name = match unquoted {
        Some(inner) if inner.contains('\\') => {
            let mut name = String::with_capacity(inner.len());
            let mut characters = inner.chars();
            while let Some(character) = characters.next() {
                match character {
                    '\\' => name.extend(characters.next()),
                    other => name.push(other),
                }
            }
            Cow::Owned(name)
        }
        Some(inner) => Cow::Borrowed(inner),
        None => Cow::Borrowed(text),
    };
    (!name.is_empty()).then_some(name)
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(text: &str) -> Option<(Option<String>, String)> {
        Mailbox::parse(text).map(|mailbox| {
            (
                mailbox.name().map(str::to_owned),
                mailbox.address().to_owned(),
            )
        })
    }

    fn named(name: &str, address: &str) -> Option<(Option<String>, String)> {
        Some((Some(name.to_owned()), address.to_owned()))
    }

    fn bare(address: &str) -> Option<(Option<String>, String)> {
        Some((None, address.to_owned()))
    }

    #[test]
    fn single_mailboxes() {
        assert_eq!(pair("ada@example.com"), bare("ada@example.com"));
        assert_eq!(pair("  ada@example.com \n"), bare("ada@example.com"));
        assert_eq!(pair("<ada@example.com>"), bare("ada@example.com"));
        assert_eq!(
            pair("Ada Lovelace <ada@example.com>"),
            named("Ada Lovelace", "ada@example.com")
        );
        assert_eq!(
            pair("Ada Lovelace<ada@example.com>"),
            named("Ada Lovelace", "ada@example.com")
        );
        assert_eq!(
            pair(r#""Lovelace, Ada" <ada@example.com>"#),
            named("Lovelace, Ada", "ada@example.com")
        );
        assert_eq!(
            pair(r#""Ada \"The Countess\" L." <ada@example.com>"#),
            named(r#"Ada "The Countess" L."#, "ada@example.com")
        );
        assert_eq!(
            pair(r#""a <weird> name" <ada@example.com>"#),
            named("a <weird> name", "ada@example.com")
        );
        assert_eq!(
            pair("ada@example.com (Ada Lovelace)"),
            named("Ada Lovelace", "ada@example.com")
        );
        assert_eq!(pair("\"\" <ada@example.com>"), bare("ada@example.com"));
        assert_eq!(
            pair("Zoë Ünïcode <zoe@example.com>"),
            named("Zoë Ünïcode", "zoe@example.com")
        );
    }

    #[test]
    fn no_address_is_none() {
        assert_eq!(pair(""), None);
        assert_eq!(pair("   "), None);
        assert_eq!(pair("Nobody <>"), None);
        assert_eq!(pair("<  >"), None);
    }

    #[test]
    fn unbalanced_text_stays_the_address() {
        assert_eq!(pair("Ada <ada@example.com"), bare("Ada <ada@example.com"));
    }

    #[test]
    fn lists_split_on_top_level_commas_only() {
        let list = r#"inbox@openmail.sh, Bob <bob@example.com>,"Smith, Jane" <jane@example.com>,, <odd,one@example.com> , "Esc \", still" <esc@example.com>"#;
        let parsed: Vec<(Option<&str>, &str)> = Mailboxes::new(list)
            .map(|mailbox| {
                (
                    mailbox.name.clone().map(|name| match name {
                        Cow::Borrowed(name) => name,
                        Cow::Owned(_) => "owned",
                    }),
                    mailbox.address(),
                )
            })
            .collect();
        assert_eq!(
            parsed,
            [
                (None, "inbox@openmail.sh"),
                (Some("Bob"), "bob@example.com"),
                (Some("Smith, Jane"), "jane@example.com"),
                (None, "odd,one@example.com"),
                (Some("owned"), "esc@example.com"),
            ]
        );
        assert_eq!(Mailboxes::new("").count(), 0);
        assert_eq!(Mailboxes::new(" , ,").count(), 0);
    }

    #[test]
    fn display_quotes_names() {
        let mailbox = Mailbox::parse(r#""Lovelace, \"Ada\"" <ada@example.com>"#).unwrap();
        assert_eq!(
            mailbox.to_string(),
            r#""Lovelace, \"Ada\"" <ada@example.com>"#
        );
        assert_eq!(Mailbox::parse(&mailbox.to_string()).unwrap(), mailbox);
        assert_eq!(
            Mailbox::parse("ada@example.com").unwrap().to_string(),
            "ada@example.com"
        );
    }
}
