//! OpenMail events, parsed once after verification.
//!
//! The layer parses every verified body into an [`Event`] and puts it in the request
//! extensions as an `Arc<Event>`, next to the [`Delivery`](crate::Delivery) that holds
//! the verified bytes. A handler takes it in one line,
//! `Extension(event): Extension<Arc<Event>>`, and matches:
//!
//! ```
//! use std::sync::Arc;
//! use axum::Extension;
//! use openmail_webhooks::Event;
//!
//! async fn handle(Extension(event): Extension<Arc<Event>>) -> &'static str {
//!     match &*event {
//!         Event::MessageReceived(received) => {
//!             let from = received.message.sender();
//!             println!("mail for {:?} from {:?}", received.inbox_id(), from.map(|f| f.address()));
//!             if let Some(text) = received.message.body_text() {
//!                 println!("{} lines", text.lines().count());
//!             }
//!         }
//!         Event::InboxSuspended(lifecycle) => println!("pause {:?}", lifecycle.inbox_id()),
//!         Event::Malformed(malformed) => eprintln!("{}: {}", malformed.event_type(), malformed.error()),
//!         other => println!("{} not handled", other.event_type()),
//!     }
//!     "ok"
//! }
//! ```
//!
//! # The model
//!
//! | `event` | variant | payload |
//! |---|---|---|
//! | `message.received` | [`Event::MessageReceived`] | [`MessageReceived`], with a [`Message`] and its [`Attachment`]s |
//! | `inbox.suspended`, `inbox.reactivated`, `pod.suspended`, `pod.reactivated` | one variant each | [`Lifecycle`], with a [`Reason`] |
//! | anything else, such as the dashboard's test event | [`Event::Unknown`] | [`UnknownEvent`]: the type and the raw JSON |
//! | a documented type whose fields don't fit, or no string `event` at all (not JSON, not an object) | [`Event::Malformed`] | [`MalformedEvent`]: the raw bytes and what didn't fit |
//!
//! Fields are read through methods. Ids, addresses and the subject are `&str`; the two
//! texts that can be large, [`Message::body_text`] and [`Attachment::parsed_text`], are
//! a [`Cow<str>`](std::borrow::Cow) decoded when asked for (see [Cost](#cost)).
//! Attachments are views into their [`Message`], listed by [`Message::attachments`].
//! Times are [`Timestamp`]s, validated when the event is parsed and returned by value:
//! RFC 3339 that keeps its original text; its docs say why there is no date-time
//! dependency. Codes ([`Reason`], [`ExtractionMethod`]) are returned by value too.
//! Addresses split into a [`Mailbox`] on demand.
//!
//! # A verified delivery is never lost
//!
//! Once a delivery's signature verifies, its event reaches the handler: [`Event::parse`]
//! cannot fail. Every field but `event` and `event_id` is optional and unknown fields are
//! ignored. What the model cannot read arrives as [`Event::Malformed`] with the verified
//! bytes intact and a reason: a known type whose fields don't fit (a number where a string
//! belongs, a malformed timestamp, a missing `event_id`), and a body that names no type at
//! all, which is not JSON, not an object, or has no string `event`. Such a body's
//! [`event_type`](Event::event_type) is the empty string. The accessors on [`Event`] read
//! the envelope from whichever variant arrived, so deduplication on
//! [`event_id`](Event::event_id) and routing on [`inbox_id`](Event::inbox_id) work for all
//! of them. The layer never answers a verified delivery with a `4xx`: OpenMail would
//! retry it and then mark it failed, and the mail would be lost to the agent. The
//! WebSocket client hands its events on by the same rule.
//!
//! # JSON, and lone surrogates
//!
//! The parse checks the whole body, the fields the model reads and every other, as
//! `serde_json` checks a body it reads into a `serde_json::Value`: UTF-8 throughout,
//! escapes that decode, numbers whose value fits an `f64` (`1e999` does not), no trailing
//! commas or characters, and at most 127 levels of nesting. A body that fails this is not
//! JSON, and arrives as [`Event::Malformed`] without a type.
//!
//! One thing `serde_json` refuses is accepted: a `\u` escape of a lone surrogate, half of
//! a UTF-16 pair without the other half. JavaScript's `JSON.stringify`, which writes
//! OpenMail's events, writes one when a text was cut inside an emoji (`"… \ud83d"`).
//! - In every text (the body, the subject, an attachment's `parsedText`, addresses, an
//!   unknown event's fields through [`json`](UnknownEvent::json)), it reads as U+FFFD,
//!   as JavaScript's and WHATWG's decoders read it.
//! - In an identifier, `event_id` and `inbox_id`, it keeps its escape: `evt_\ud800` reads
//!   as the eleven characters `evt_\ud800`, so that `evt_\ud800` and `evt_\udc00` stay two
//!   events, as they are to OpenMail, where U+FFFD would make them one. Only an id that
//!   spells that escape with a literal backslash (`"evt_\\ud800"` in JSON) reads the
//!   same; OpenMail's ids are ASCII letters, digits and `_`.
//!   The claim the layer reads before the signature is checked
//!   ([`Tenant::claimed_by`](crate::tenant::Tenant::claimed_by)) reads them the same way.
//!
//! [`UnknownEvent::json`] and [`MalformedEvent::json`] do not fail: a lone surrogate reads
//! as U+FFFD there too, and a body that is not JSON is the string of its text.
//!
//! # Duplicate keys
//!
//! JSON parsers disagree on which of two equal keys counts (`serde_json` keeps the last,
//! others the first), so the parse never picks one where it matters. Keys are compared
//! after their escapes are decoded.
//!
//! - **`event`, `event_id`, `inbox_id` or `pod_id` twice at the top level**, whatever the
//!   values (`null` included): the envelope cannot be read. The event arrives as
//!   [`Malformed`](Event::Malformed) without a type, an `event_id` or an `inbox_id`
//!   (so deduplication does not key it), and its [`error`](MalformedEvent::error) says
//!   which field was named twice. These fields name the event's type, deduplicate it,
//!   route it and scope it to a tenant; the claim the layer reads before the signature is
//!   checked cannot be read either, so the body names no inbox
//!   ([`Tenant::claimed_by`](crate::tenant::Tenant::claimed_by) is the account), and with
//!   per-inbox secrets it verifies only under the account's secret.
//! - **Any other field the model reads for the event's type, twice** (`occurred_at`,
//!   `attempt`, `message`, or `body_text` inside `message`, …): the event is
//!   [`Malformed`](Event::Malformed), and its [`error`](MalformedEvent::error) says
//!   `duplicate field`. For an unknown or malformed event, a duplicated `occurred_at` is
//!   not used: [`Event::occurred_at`] is `None`.
//! - **Fields the model does not read** may repeat. They stay in the raw body, where
//!   `serde_json` (and so [`UnknownEvent::json`]) keeps the last.
//!
//! # Cost
//!
//! The parse reads the body once, front to back, skipping plain string bytes eight at a
//! time as `serde_json`'s own skim does, and records where each field the model reads
//! is: one word per field. The lists, `cc` and `attachments`, are counted, and their
//! elements read out of the body again when they are listed, so the index is the same
//! size whatever their length. Timestamps are checked, and their instant computed when one
//! is read; a short field is copied only when its JSON holds escapes. The large texts, `body_text` and each
//! attachment's `parsedText`, stay where they are in the verified body, which the event
//! holds once (one reference-counted handle, no copy). [`Message::body_text`] and
//! [`Attachment::parsed_text`] decode the text when called, borrowing it when the JSON
//! holds no escapes. Email text nearly always holds escaped newlines, so reading it
//! copies it then, once per call; a handler that never reads it never pays for it.
//!
//! The `events` benchmark compares the parse with a `serde_json` skim (`IgnoredAny`) of
//! the same bytes, which checks the syntax and builds nothing: the parse takes 1.14 to
//! 1.29 times the skim's CPU time from 1 KiB to 1 MiB, and executes 0.97 to 1.12 times
//! its instructions (its header has the table). `tests/memory.rs` counts the heap: with the
//! parse on, a request holds its body plus at most 2 KiB, and so does an event held after
//! it, however long its lists or however often it repeats a field. What a held event adds
//! beyond that is the decoded copy of each short field whose JSON holds escapes (ids,
//! addresses, the subject, an attachment's file name): never longer than the escaped
//! text itself, so in all the event holds at most twice its body plus 2 KiB. The event
//! sits behind an `Arc`, so axum's `Extension`, which clones on every extraction, copies
//! nothing.
//!
//! # Equality and serialisation
//!
//! [`Event`] serialises to OpenMail's wire shape (snake_case, camelCase attachment keys,
//! timestamps as received); an unknown or malformed event serialises as its
//! [`json`](MalformedEvent::json), the original JSON through a `serde_json::Value`, or the
//! string of its text when it is not JSON. Serialising cannot fail. Parsing that output
//! again gives an equal [`Event`]: equality compares content, never the raw bytes'
//! formatting. The exceptions: a number in an unknown or malformed event that a `Value`
//! cannot hold exactly (an integer past 64 bits, a float with more digits than an `f64`
//! keeps) may come back as a neighbouring `f64`, as it would through any
//! `serde_json::Value`; a lone surrogate comes back as U+FFFD; and a body whose
//! envelope names a field twice comes back with the last of each.
//!
//! # Why there is no `axum` feature
//!
//! A `FromRequestParts` impl would save writing `Extension(event): Extension<Arc<Event>>`,
//! and would put axum, with its own release cycle, into this crate's dependency tree for
//! every user who enables it. The extension is already one line in axum and works the same
//! in any other tower stack (`request.extensions().get::<Arc<Event>>()`), so the crate does
//! not add it.

/// A string code with documented values and an `Unknown` fallback that keeps any other
/// value, so a new code on OpenMail's side never fails a delivery.
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$variant_meta:meta])* $variant:ident => $text:literal, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$variant_meta])* $variant, )*
            /// A value not listed above, exactly as received.
            ///
            /// Build values with `From<&str>`, which picks the documented variant when
            /// there is one: an `Unknown` holding a documented value is not equal to it.
            Unknown(String),
        }

        impl $name {
            /// The value as OpenMail writes it.
            pub fn as_str(&self) -> &str {
                match self {
                    $( Self::$variant => $text, )*
                    Self::Unknown(text) => text,
                }
            }
        }

        impl From<&str> for $name {
            fn from(text: &str) -> Self {
                match text {
                    $( $text => Self::$variant, )*
                    other => Self::Unknown(other.to_owned()),
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct CodeVisitor;

                impl ::serde::de::Visitor<'_> for CodeVisitor {
                    type Value = $name;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str("a string code")
                    }

                    fn visit_str<E: ::serde::de::Error>(self, text: &str) -> Result<$name, E> {
                        Ok($name::from(text))
                    }
                }

                deserializer.deserialize_str(CodeVisitor)
            }
        }
    };
}

mod address;
mod fallback;
pub(crate) mod kind;
mod lifecycle;
mod message;
mod time;
mod wire;

use std::fmt;

use bytes::Bytes;

pub use address::Mailbox;
pub use fallback::{MalformedEvent, UnknownEvent};
pub use lifecycle::{Lifecycle, Reason};
pub use message::{Attachment, Attachments, ExtractionMethod, Message, MessageReceived};
pub use time::{Timestamp, TimestampError};

// At the crate root only: `openmail_webhooks::Event`.
pub(crate) use kind::Event;

/// The verified bytes, shown in `Debug` by length only: the fields already show the
/// content.
#[derive(Clone, Default)]
struct RawJson(Bytes);

impl fmt::Debug for RawJson {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Length(&self.0).fmt(f)
    }
}

/// Shows bytes in `Debug` by their length.
struct Length<'a>(&'a Bytes);

impl fmt::Debug for Length<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}
