//! `message.received`: a new inbound email reached an inbox.
//!
//! The envelope ([`MessageReceived`]) says which delivery this is and where it goes; the
//! [`Message`] holds the email, and each [`Attachment`] comes with the text OpenMail
//! extracted from it, when extraction worked. Top-level and message keys are snake_case;
//! attachment keys are camelCase, as OpenMail sends them.
//!
//! Every field but `event_id` is optional: older payloads lack the extraction fields, and a
//! missing field must not turn a verified delivery into an error. Fields OpenMail adds
//! later (clients have seen `category`, `verdict`, `spam_score` …) are ignored here and
//! stay available in the raw body.
//!
//! # Reading the text
//!
//! The event keeps the verified body and reads its fields out of it. Ids, addresses and
//! the subject come back as `&str`. The two texts that can be large,
//! [`Message::body_text`] and [`Attachment::parsed_text`], come back as a
//! [`Cow<str>`](std::borrow::Cow): borrowed from the body when the JSON holds no escapes,
//! else decoded into a new `String` on each call. An email's text nearly always holds
//! escaped newlines, so keep what a call returns rather than calling again; a handler that
//! never reads the text never pays for it, in time or in memory.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

use super::json::{Short, Span};
use super::{Length, Mailbox, Mailboxes, Timestamp};

/// The `message.received` event.
///
/// Equality ignores how the JSON was formatted: two events are equal when they carry the
/// same fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct MessageReceived {
    pub(super) event_id: Short,
    pub(super) occurred_at: Option<Timestamp>,
    pub(super) delivered_at: Option<Timestamp>,
    pub(super) attempt: Option<u32>,
    pub(super) inbox_id: Option<Short>,
    pub(super) thread_id: Option<Short>,
    pub(super) external_id: Option<Short>,
    /// The email. An absent or `null` `message` reads as an empty one.
    pub message: Message,
}

impl MessageReceived {
    /// The event's id, stable across retries: deduplicate on it.
    pub fn event_id(&self) -> &str {
        self.event_id.get(&self.message.body)
    }

    /// When the email arrived; use it to order events, which may arrive out of order.
    pub fn occurred_at(&self) -> Option<&Timestamp> {
        self.occurred_at.as_ref()
    }

    /// When this delivery attempt was sent.
    pub fn delivered_at(&self) -> Option<&Timestamp> {
        self.delivered_at.as_ref()
    }

    /// Which delivery attempt this is, from 1.
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// The inbox that received the email: route to the inbox's agent on it.
    pub fn inbox_id(&self) -> Option<&str> {
        get(&self.inbox_id, &self.message.body)
    }

    /// The conversation thread, for the API's thread and reply calls.
    pub fn thread_id(&self) -> Option<&str> {
        get(&self.thread_id, &self.message.body)
    }

    /// The inbox's external id, in older payloads only.
    pub fn external_id(&self) -> Option<&str> {
        get(&self.external_id, &self.message.body)
    }

    /// The verified body, byte for byte.
    pub fn raw(&self) -> &Bytes {
        // The message holds the one handle on the body that the event keeps.
        &self.message.body
    }
}

impl PartialEq for MessageReceived {
    fn eq(&self, other: &Self) -> bool {
        self.event_id() == other.event_id()
            && self.occurred_at == other.occurred_at
            && self.delivered_at == other.delivered_at
            && self.attempt == other.attempt
            && self.inbox_id() == other.inbox_id()
            && self.thread_id() == other.thread_id()
            && self.external_id() == other.external_id()
            && self.message == other.message
    }
}

impl fmt::Debug for MessageReceived {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageReceived")
            .field("event_id", &self.event_id())
            .field("occurred_at", &self.occurred_at)
            .field("delivered_at", &self.delivered_at)
            .field("attempt", &self.attempt)
            .field("inbox_id", &self.inbox_id())
            .field("thread_id", &self.thread_id())
            .field("external_id", &self.external_id())
            .field("message", &self.message)
            .field("raw", &Length(&self.message.body))
            .finish()
    }
}

impl Serialize for MessageReceived {
    /// The wire shape without the `event` tag; [`Event`](super::Event) adds it.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "MessageReceived")]
        struct Wire<'a> {
            event_id: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            occurred_at: Option<&'a Timestamp>,
            #[serde(skip_serializing_if = "Option::is_none")]
            delivered_at: Option<&'a Timestamp>,
            #[serde(skip_serializing_if = "Option::is_none")]
            attempt: Option<u32>,
            #[serde(skip_serializing_if = "Option::is_none")]
            inbox_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            thread_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            external_id: Option<&'a str>,
            message: &'a Message,
        }

        Wire {
            event_id: self.event_id(),
            occurred_at: self.occurred_at.as_ref(),
            delivered_at: self.delivered_at.as_ref(),
            attempt: self.attempt,
            inbox_id: self.inbox_id(),
            thread_id: self.thread_id(),
            external_id: self.external_id(),
            message: &self.message,
        }
        .serialize(serializer)
    }
}

/// An inbound email.
///
/// Its fields are read out of the verified body on demand; see the [module
/// docs](self#reading-the-text) for what that costs.
///
/// ```
/// use bytes::Bytes;
/// use openmail_webhooks::Event;
///
/// let body = Bytes::from_static(br#"{"event":"message.received","event_id":"evt_1",
///     "message":{
///         "from":"Ada Lovelace <ada@example.com>",
///         "to":"inbox@openmail.sh, \"Smith, Jane\" <jane@example.com>",
///         "body_text":"Hi,\n\nthe invoice is attached.",
///         "attachments":[{"filename":"scan.png","extractionMethod":"unsupported"}]}}"#);
/// let Event::MessageReceived(received) = Event::parse(body)? else { unreachable!() };
/// let message = &received.message;
///
/// let sender = message.sender().unwrap();
/// assert_eq!((sender.name(), sender.address()), (Some("Ada Lovelace"), "ada@example.com"));
/// let to: Vec<_> = message.to_mailboxes().map(|to| to.address()).collect();
/// assert_eq!(to, ["inbox@openmail.sh", "jane@example.com"]);
/// assert_eq!(message.body_text().as_deref(), Some("Hi,\n\nthe invoice is attached."));
/// assert!(!message.attachments()[0].text_extracted());
/// # Ok::<(), openmail_webhooks::event::NotAnEvent>(())
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Message {
    pub(super) body: Bytes,
    pub(super) id: Option<Short>,
    pub(super) rfc_message_id: Option<Short>,
    pub(super) from: Option<Short>,
    pub(super) to: Option<Short>,
    pub(super) cc: Vec<Short>,
    pub(super) subject: Option<Short>,
    pub(super) body_text: Option<Span>,
    pub(super) attachments: Vec<Attachment>,
    pub(super) received_at: Option<Timestamp>,
}

impl Message {
    /// OpenMail's id for the message, such as `msg_4c8d5e6f`.
    pub fn id(&self) -> Option<&str> {
        get(&self.id, &self.body)
    }

    /// The `Message-ID` header, angle brackets included.
    pub fn rfc_message_id(&self) -> Option<&str> {
        get(&self.rfc_message_id, &self.body)
    }

    /// The sender, `Name <address>` or a bare address; see [`sender`](Self::sender).
    pub fn from(&self) -> Option<&str> {
        get(&self.from, &self.body)
    }

    /// The recipients as one comma-separated string; see
    /// [`to_mailboxes`](Self::to_mailboxes).
    pub fn to(&self) -> Option<&str> {
        get(&self.to, &self.body)
    }

    /// The copied recipients, one mailbox per entry; empty when there are none.
    pub fn cc(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator + '_ {
        self.cc.iter().map(|entry| entry.get(&self.body))
    }

    /// The subject line.
    pub fn subject(&self) -> Option<&str> {
        get(&self.subject, &self.body)
    }

    /// The plain-text body (OpenMail sends no HTML body), decoded now: borrowed from the
    /// verified body when the JSON holds no escapes, else a new `String`.
    pub fn body_text(&self) -> Option<Cow<'_, str>> {
        self.body_text.map(|text| text.decode(&self.body))
    }

    /// The attachments, in order; empty when there are none.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// When OpenMail received the email.
    pub fn received_at(&self) -> Option<&Timestamp> {
        self.received_at.as_ref()
    }

    /// The sender's address and display name, split out of `from`.
    pub fn sender(&self) -> Option<Mailbox<'_>> {
        self.from().and_then(Mailbox::parse)
    }

    /// The mailboxes in `to`, which may list several, separated by commas.
    pub fn to_mailboxes(&self) -> Mailboxes<'_> {
        Mailboxes::new(self.to().unwrap_or_default())
    }

    /// The mailboxes in `cc`, skipping entries without an address.
    pub fn cc_mailboxes(&self) -> impl Iterator<Item = Mailbox<'_>> {
        self.cc().filter_map(Mailbox::parse)
    }
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
            && self.rfc_message_id() == other.rfc_message_id()
            && self.from() == other.from()
            && self.to() == other.to()
            && self.cc().eq(other.cc())
            && self.subject() == other.subject()
            && self.body_text() == other.body_text()
            && self.attachments == other.attachments
            && self.received_at == other.received_at
    }
}

impl Eq for Message {}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id())
            .field("rfc_message_id", &self.rfc_message_id())
            .field("from", &self.from())
            .field("to", &self.to())
            .field("cc", &self.cc().collect::<Vec<_>>())
            .field("subject", &self.subject())
            .field("body_text", &self.body_text())
            .field("attachments", &self.attachments)
            .field("received_at", &self.received_at)
            .finish()
    }
}

impl Serialize for Message {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "Message")]
        struct Wire<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            rfc_message_id: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            from: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            to: Option<&'a str>,
            cc: Cc<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            subject: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            body_text: Option<Cow<'a, str>>,
            attachments: &'a [Attachment],
            #[serde(skip_serializing_if = "Option::is_none")]
            received_at: Option<&'a Timestamp>,
        }

        struct Cc<'a>(&'a Message);

        impl Serialize for Cc<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.cc.len()))?;
                for entry in self.0.cc() {
                    seq.serialize_element(entry)?;
                }
                seq.end()
            }
        }

        Wire {
            id: self.id(),
            rfc_message_id: self.rfc_message_id(),
            from: self.from(),
            to: self.to(),
            cc: Cc(self),
            subject: self.subject(),
            body_text: self.body_text(),
            attachments: &self.attachments,
            received_at: self.received_at.as_ref(),
        }
        .serialize(serializer)
    }
}

/// One attachment. Its keys are camelCase on the wire.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Attachment {
    pub(super) body: Bytes,
    pub(super) filename: Option<Short>,
    pub(super) content_type: Option<Short>,
    pub(super) size_bytes: Option<u64>,
    pub(super) url: Option<Short>,
    pub(super) parsed_text: Option<Span>,
    pub(super) extraction_method: Option<ExtractionMethod>,
}

impl Attachment {
    /// The file name, as the sender gave it.
    pub fn filename(&self) -> Option<&str> {
        get(&self.filename, &self.body)
    }

    /// The MIME type, such as `application/pdf`.
    pub fn content_type(&self) -> Option<&str> {
        get(&self.content_type, &self.body)
    }

    /// The size in bytes.
    pub fn size_bytes(&self) -> Option<u64> {
        self.size_bytes
    }

    /// Where to download it. It needs the API key and redirects to a signed URL that
    /// expires after 15 minutes: fetch it promptly.
    pub fn url(&self) -> Option<&str> {
        get(&self.url, &self.body)
    }

    /// The extracted text, at most 50,000 characters; `None` when extraction failed, was
    /// skipped or is unsupported. Decoded now: borrowed from the verified body when the
    /// JSON holds no escapes, else a new `String`.
    pub fn parsed_text(&self) -> Option<Cow<'_, str>> {
        self.parsed_text.map(|text| text.decode(&self.body))
    }

    /// How the text was extracted, or why it was not.
    pub fn extraction_method(&self) -> Option<&ExtractionMethod> {
        self.extraction_method.as_ref()
    }

    /// Whether OpenMail extracted text from the attachment: `parsedText` is present (it may
    /// still be empty, for a blank page). Decodes nothing.
    ///
    /// This looks at the text rather than at
    /// [`extraction_method`](Self::extraction_method), whose set of values is open: a
    /// method this crate does not know could mean success or failure.
    pub fn text_extracted(&self) -> bool {
        self.parsed_text.is_some()
    }
}

impl PartialEq for Attachment {
    fn eq(&self, other: &Self) -> bool {
        self.filename() == other.filename()
            && self.content_type() == other.content_type()
            && self.size_bytes == other.size_bytes
            && self.url() == other.url()
            && self.parsed_text() == other.parsed_text()
            && self.extraction_method == other.extraction_method
    }
}

impl Eq for Attachment {}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename())
            .field("content_type", &self.content_type())
            .field("size_bytes", &self.size_bytes)
            .field("url", &self.url())
            .field("parsed_text", &self.parsed_text())
            .field("extraction_method", &self.extraction_method)
            .finish()
    }
}

impl Serialize for Attachment {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename = "Attachment", rename_all = "camelCase")]
        struct Wire<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            filename: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            content_type: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            size_bytes: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            url: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            parsed_text: Option<Cow<'a, str>>,
            #[serde(skip_serializing_if = "Option::is_none")]
            extraction_method: Option<&'a ExtractionMethod>,
        }

        Wire {
            filename: self.filename(),
            content_type: self.content_type(),
            size_bytes: self.size_bytes,
            url: self.url(),
            parsed_text: self.parsed_text(),
            extraction_method: self.extraction_method.as_ref(),
        }
        .serialize(serializer)
    }
}

string_enum! {
    /// How OpenMail extracted an attachment's text, or why it did not.
    ///
    /// The set is open on OpenMail's side; any other value arrives intact as
    /// [`ExtractionMethod::Unknown`].
    ExtractionMethod {
        /// `pdf`: text read from a PDF.
        Pdf => "pdf",
        /// `ocr`: text recognised in an image.
        Ocr => "ocr",
        /// `office`: text read from an office document.
        Office => "office",
        /// `csv`: a CSV file, taken as text.
        Csv => "csv",
        /// `text`: a plain-text file.
        Text => "text",
        /// `unsupported`: no extractor for this type; there is no text.
        Unsupported => "unsupported",
        /// `pdf_error`: the PDF could not be read; there is no text.
        PdfError => "pdf_error",
        /// `skipped_too_large`: the file was too large to extract; there is no text.
        SkippedTooLarge => "skipped_too_large",
    }
}

/// A short optional field's text.
pub(super) fn get<'a>(field: &'a Option<Short>, body: &'a [u8]) -> Option<&'a str> {
    field.as_ref().map(|short| short.get(body))
}
