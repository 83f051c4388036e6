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

use super::time::Stamp;
use super::{Length, Mailbox, Timestamp};
use crate::json::{Decoded, Reader, Replay, Short, Span};

/// The `message.received` event.
///
/// Equality ignores how the JSON was formatted: two events are equal when they carry the
/// same fields.
#[derive(Clone)]
#[non_exhaustive]
pub struct MessageReceived {
    pub(super) event_id: Short,
    pub(super) occurred_at: Option<Stamp>,
    pub(super) delivered_at: Option<Stamp>,
    pub(super) attempt: Option<u32>,
    pub(super) inbox_id: Option<Short>,
    pub(super) thread_id: Option<Short>,
    pub(super) external_id: Option<Short>,
    /// The top-level short fields that held escapes, decoded.
    pub(super) decoded: String,
    /// The email. An absent or `null` `message` reads as an empty one.
    pub message: Message,
}

impl MessageReceived {
    fn short(&self, field: Option<Short>) -> Option<&str> {
        field.map(|short| short.get(&self.message.body, &self.decoded))
    }

    fn stamp(&self, field: Option<Stamp>) -> Option<Timestamp> {
        field.and_then(|stamp| stamp.timestamp(&self.message.body, &self.decoded))
    }

    /// The event's id, stable across retries: deduplicate on it.
    pub fn event_id(&self) -> &str {
        self.event_id.get(&self.message.body, &self.decoded)
    }

    /// When the email arrived; use it to order events, which may arrive out of order.
    pub fn occurred_at(&self) -> Option<Timestamp> {
        self.stamp(self.occurred_at)
    }

    /// When this delivery attempt was sent.
    pub fn delivered_at(&self) -> Option<Timestamp> {
        self.stamp(self.delivered_at)
    }

    /// Which delivery attempt this is, from 1.
    pub fn attempt(&self) -> Option<u32> {
        self.attempt
    }

    /// The inbox that received the email: route to the inbox's agent on it.
    pub fn inbox_id(&self) -> Option<&str> {
        self.short(self.inbox_id)
    }

    /// The conversation thread, for the API's thread and reply calls.
    pub fn thread_id(&self) -> Option<&str> {
        self.short(self.thread_id)
    }

    /// The inbox's external id, in older payloads only.
    pub fn external_id(&self) -> Option<&str> {
        self.short(self.external_id)
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
            && self.occurred_at() == other.occurred_at()
            && self.delivered_at() == other.delivered_at()
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
            .field("occurred_at", &self.occurred_at())
            .field("delivered_at", &self.delivered_at())
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
            occurred_at: Option<Timestamp>,
            #[serde(skip_serializing_if = "Option::is_none")]
            delivered_at: Option<Timestamp>,
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
            occurred_at: self.occurred_at(),
            delivered_at: self.delivered_at(),
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
/// Its fields are read out of the verified body on demand; see the [event
/// docs](crate::event#cost) for what that costs.
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
/// let Event::MessageReceived(received) = Event::parse(body) else { unreachable!() };
/// let message = &received.message;
///
/// let sender = message.sender().unwrap();
/// assert_eq!((sender.name(), sender.address()), (Some("Ada Lovelace"), "ada@example.com"));
/// let to: Vec<_> = message.to_mailboxes().map(|to| to.address()).collect();
/// assert_eq!(to, ["inbox@openmail.sh", "jane@example.com"]);
/// assert_eq!(message.body_text().as_deref(), Some("Hi,\n\nthe invoice is attached."));
/// assert!(!message.attachments().get(0).unwrap().text_extracted());
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Message {
    pub(super) body: Bytes,
    /// The short fields that held escapes, decoded.
    pub(super) decoded: String,
    pub(super) id: Option<Short>,
    pub(super) rfc_message_id: Option<Short>,
    pub(super) from: Option<Short>,
    pub(super) to: Option<Short>,
    pub(super) cc: List,
    pub(super) subject: Option<Short>,
    pub(super) body_text: Option<Span>,
    pub(super) attachments: List,
    pub(super) received_at: Option<Stamp>,
}

impl Message {
    fn short(&self, field: Option<Short>) -> Option<&str> {
        field.map(|short| short.get(&self.body, &self.decoded))
    }

    /// OpenMail's id for the message, such as `msg_4c8d5e6f`.
    pub fn id(&self) -> Option<&str> {
        self.short(self.id)
    }

    /// The `Message-ID` header, angle brackets included.
    pub fn rfc_message_id(&self) -> Option<&str> {
        self.short(self.rfc_message_id)
    }

    /// The sender, `Name <address>` or a bare address; see [`sender`](Self::sender).
    pub fn from(&self) -> Option<&str> {
        self.short(self.from)
    }

    /// The recipients as one comma-separated string; see
    /// [`to_mailboxes`](Self::to_mailboxes).
    pub fn to(&self) -> Option<&str> {
        self.short(self.to)
    }

    /// The copied recipients, one mailbox per entry; empty when there are none.
    ///
    /// Read out of the body as the iterator moves (see [`attachments`](Self::attachments)).
    pub fn cc(&self) -> impl ExactSizeIterator<Item = &str> + DoubleEndedIterator + '_ {
        Cc {
            message: self,
            walk: Walk::new(self, self.cc),
            indices: 0..self.cc.len,
        }
    }

    /// The subject line.
    pub fn subject(&self) -> Option<&str> {
        self.short(self.subject)
    }

    /// The plain-text body (OpenMail sends no HTML body), decoded now: borrowed from the
    /// verified body when the JSON holds no escapes, else a new `String`.
    pub fn body_text(&self) -> Option<Cow<'_, str>> {
        self.body_text.map(|text| text.decode(&self.body))
    }

    /// The attachments, in order; empty when there are none.
    ///
    /// The event counts them when it is parsed and keeps no entry per attachment: each is
    /// read out of the body as the iterator reaches it, so an event costs the same to hold
    /// whatever its lists (see the [event docs](crate::event#cost)). Going forwards reads
    /// each once; [`Attachments::get`] and going backwards read from the start of the list.
    pub fn attachments(&self) -> Attachments<'_> {
        Attachments {
            message: self,
            walk: Walk::new(self, self.attachments),
            indices: 0..self.attachments.len,
        }
    }

    /// When OpenMail received the email.
    pub fn received_at(&self) -> Option<Timestamp> {
        self.received_at
            .and_then(|stamp| stamp.timestamp(&self.body, &self.decoded))
    }

    /// The sender's address and display name, split out of `from`.
    pub fn sender(&self) -> Option<Mailbox<'_>> {
        self.from().and_then(Mailbox::parse)
    }

    /// The mailboxes in `to`, which may list several, separated by commas.
    pub fn to_mailboxes(&self) -> impl Iterator<Item = Mailbox<'_>> + Clone + fmt::Debug {
        Mailbox::list(self.to().unwrap_or_default())
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
            && self.attachments().eq(other.attachments())
            && self.received_at() == other.received_at()
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
            .field("attachments", &self.attachments().collect::<Vec<_>>())
            .field("received_at", &self.received_at())
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
            attachments: AttachmentList<'a>,
            #[serde(skip_serializing_if = "Option::is_none")]
            received_at: Option<Timestamp>,
        }

        struct Cc<'a>(&'a Message);

        struct AttachmentList<'a>(&'a Message);

        impl Serialize for AttachmentList<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.attachments.len))?;
                for attachment in self.0.attachments() {
                    seq.serialize_element(&attachment)?;
                }
                seq.end()
            }
        }

        impl Serialize for Cc<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut seq = serializer.serialize_seq(Some(self.0.cc().len()))?;
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
            attachments: AttachmentList(self),
            received_at: self.received_at(),
        }
        .serialize(serializer)
    }
}

/// Where a list (`cc`, `attachments`) is in the body, and how long it is: the event keeps
/// this much per list, not an entry per element, and reads the elements again when they
/// are asked for.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct List {
    /// The offset of its `[`.
    pub(super) start: usize,
    pub(super) len: usize,
    /// Where the decoded text of its elements' escaped short fields starts in the
    /// message's `decoded`: the parse appended it there in the list's order.
    pub(super) decoded: usize,
}

/// Reads a [`List`]'s elements one after the other, and starts again from the list's
/// start to go back.
#[derive(Clone)]
struct Walk<'a> {
    list: List,
    body: &'a [u8],
    reader: Reader<'a>,
    replay: Replay,
    /// The index of the element the reader stands on.
    next: usize,
}

impl<'a> Walk<'a> {
    fn new(message: &'a Message, list: List) -> Self {
        let mut walk = Self {
            list,
            body: &message.body,
            reader: Reader::starting_at(&message.body, list.start),
            replay: Replay(list.decoded),
            next: 0,
        };
        walk.restart();
        walk
    }

    fn restart(&mut self) {
        self.reader = Reader::starting_at(self.body, self.list.start);
        self.replay = Replay(self.list.decoded);
        self.next = 0;
        self.reader.eat(b'[');
    }

    /// Reads element `index` with `read`, which must read exactly one element. The parse
    /// read the same bytes without an error, so `None` (past the end, or a body that
    /// changed) never comes from a list the parse counted.
    fn element<T>(
        &mut self,
        index: usize,
        read: impl Fn(&mut Reader<'a>, &mut Replay) -> Option<T>,
    ) -> Option<T> {
        if index >= self.list.len {
            return None;
        }
        if index < self.next {
            self.restart();
        }
        while self.next < index {
            read(&mut self.reader, &mut self.replay)?;
            self.reader.eat(b',');
            self.next = self.next.saturating_add(1);
        }
        let element = read(&mut self.reader, &mut self.replay)?;
        self.reader.eat(b',');
        self.next = self.next.saturating_add(1);
        Some(element)
    }
}

/// One `cc` entry, as the parse read it.
fn cc_entry(reader: &mut Reader<'_>, replay: &mut Replay) -> Option<Short> {
    if reader.peek() != Some(b'"') {
        return None;
    }
    let span = reader.string().ok()?;
    Some(replay.text(span, reader.body()))
}

/// One attachment, as the parse read it.
fn attachment_entry(reader: &mut Reader<'_>, replay: &mut Replay) -> Option<AttachmentIndex> {
    if reader.peek() != Some(b'{') {
        return None;
    }
    let mut index = AttachmentIndex::default();
    super::wire::read_attachment(reader, &mut index, replay).ok()?;
    Some(index)
}

/// The iterator [`Message::cc`] returns.
struct Cc<'a> {
    message: &'a Message,
    walk: Walk<'a>,
    indices: std::ops::Range<usize>,
}

impl<'a> Cc<'a> {
    fn at(&mut self, at: usize) -> &'a str {
        let message = self.message;
        self.walk
            .element(at, cc_entry)
            .map_or("", |entry| entry.get(&message.body, &message.decoded))
    }
}

impl<'a> Iterator for Cc<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let at = self.indices.next()?;
        Some(self.at(at))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.indices.size_hint()
    }
}

impl DoubleEndedIterator for Cc<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let at = self.indices.next_back()?;
        Some(self.at(at))
    }
}

impl ExactSizeIterator for Cc<'_> {}

/// Where one attachment's fields are; its short fields that held escapes are decoded into
/// the message's `decoded`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AttachmentIndex {
    pub(super) filename: Option<Short>,
    pub(super) content_type: Option<Short>,
    pub(super) size_bytes: Option<u64>,
    pub(super) url: Option<Short>,
    pub(super) parsed_text: Option<Span>,
    pub(super) extraction_method: Option<Short>,
}

/// The attachments of a [`Message`], in order: see [`Message::attachments`].
#[derive(Clone)]
pub struct Attachments<'a> {
    message: &'a Message,
    walk: Walk<'a>,
    indices: std::ops::Range<usize>,
}

impl<'a> Attachments<'a> {
    /// Whether there are none left.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The attachment `index` places further on, if there is one, without moving on.
    ///
    /// It reads the list from its start up to that attachment.
    pub fn get(&self, index: usize) -> Option<Attachment<'a>> {
        let at = self.indices.start.checked_add(index)?;
        if at >= self.indices.end {
            return None;
        }
        Walk::new(self.message, self.message.attachments)
            .element(at, attachment_entry)
            .map(|index| Attachment {
                message: self.message,
                index,
            })
    }

    fn at(&mut self, at: usize) -> Option<Attachment<'a>> {
        let message = self.message;
        self.walk
            .element(at, attachment_entry)
            .map(|index| Attachment { message, index })
    }
}

impl<'a> Iterator for Attachments<'a> {
    type Item = Attachment<'a>;

    fn next(&mut self) -> Option<Attachment<'a>> {
        let at = self.indices.next()?;
        self.at(at)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.indices.size_hint()
    }
}

impl DoubleEndedIterator for Attachments<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        let at = self.indices.next_back()?;
        self.at(at)
    }
}

impl ExactSizeIterator for Attachments<'_> {}

impl std::iter::FusedIterator for Attachments<'_> {}

impl fmt::Debug for Attachments<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// One attachment, read out of its message. Its keys are camelCase on the wire.
///
/// It borrows the [`Message`]: the message holds the verified body, and the attachment
/// only says where its fields are in it, so that listing attachments copies nothing.
#[derive(Clone, Copy)]
pub struct Attachment<'a> {
    message: &'a Message,
    index: AttachmentIndex,
}

impl<'a> Attachment<'a> {
    fn short(&self, field: Option<Short>) -> Option<&'a str> {
        let message = self.message;
        field.map(|short| short.get(&message.body, &message.decoded))
    }

    /// The file name, as the sender gave it.
    pub fn filename(&self) -> Option<&'a str> {
        self.short(self.index.filename)
    }

    /// The MIME type, such as `application/pdf`.
    pub fn content_type(&self) -> Option<&'a str> {
        self.short(self.index.content_type)
    }

    /// The size in bytes.
    pub fn size_bytes(&self) -> Option<u64> {
        self.index.size_bytes
    }

    /// Where to download it. It needs the API key and redirects to a signed URL that
    /// expires after 15 minutes: fetch it promptly.
    pub fn url(&self) -> Option<&'a str> {
        self.short(self.index.url)
    }

    /// The extracted text, at most 50,000 characters; `None` when extraction failed, was
    /// skipped or is unsupported. Decoded now: borrowed from the verified body when the
    /// JSON holds no escapes, else a new `String`.
    pub fn parsed_text(&self) -> Option<Cow<'a, str>> {
        let body = &self.message.body;
        self.index.parsed_text.map(|text| text.decode(body))
    }

    /// How the text was extracted, or why it was not.
    pub fn extraction_method(&self) -> Option<ExtractionMethod> {
        self.short(self.index.extraction_method)
            .map(ExtractionMethod::from)
    }

    /// Whether OpenMail extracted text from the attachment: `parsedText` is present (it may
    /// still be empty, for a blank page). Decodes nothing.
    ///
    /// This looks at the text rather than at
    /// [`extraction_method`](Self::extraction_method), whose set of values is open: a
    /// method this crate does not know could mean success or failure.
    pub fn text_extracted(&self) -> bool {
        self.index.parsed_text.is_some()
    }
}

impl PartialEq for Attachment<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.filename() == other.filename()
            && self.content_type() == other.content_type()
            && self.size_bytes() == other.size_bytes()
            && self.url() == other.url()
            && self.parsed_text() == other.parsed_text()
            && self.extraction_method() == other.extraction_method()
    }
}

impl Eq for Attachment<'_> {}

impl fmt::Debug for Attachment<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Attachment")
            .field("filename", &self.filename())
            .field("content_type", &self.content_type())
            .field("size_bytes", &self.size_bytes())
            .field("url", &self.url())
            .field("parsed_text", &self.parsed_text())
            .field("extraction_method", &self.extraction_method())
            .finish()
    }
}

impl Serialize for Attachment<'_> {
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
            extraction_method: Option<&'a str>,
        }

        Wire {
            filename: self.filename(),
            content_type: self.content_type(),
            size_bytes: self.size_bytes(),
            url: self.url(),
            parsed_text: self.parsed_text(),
            extraction_method: self.short(self.index.extraction_method),
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
