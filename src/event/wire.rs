//! The parse: one strict pass over the body that checks all of it and indexes the fields
//! the model reads.
//!
//! [`json::Reader`](crate::json::Reader) checks every byte, in the fields the model reads
//! and in those it does not. Along the way this module records each documented field:
//! strings as spans of the body (decoded here only when short and escaped), numbers,
//! timestamps and codes as values, and a value of the wrong shape as a [`Misfit`] that says
//! what was wrong and where, worded as serde would word it. The lists (`cc`,
//! `attachments`) are only counted: [`Message`]'s accessors read their elements again,
//! with [`read_attachment`] for an attachment. Each field keeps its first misfit only, so
//! that what the parse holds is bounded whatever the body repeats.
//!
//! The parse cannot fail: a body that is not JSON, not an object, or has no string `event`
//! is a malformed event without a type (see [`unreadable`]).
//!
//! The event's type may come anywhere in the object, so every documented field is
//! recorded whatever the type turns out to be. Once the object is read, the type decides
//! which fields count: the first misfit among them, in the body's order, makes the event
//! [`Malformed`](super::Event::Malformed); fields of other types are ignored. So the
//! outcome never depends on the order of the keys, which a re-serialised event does not
//! keep.
//!
//! # Duplicate keys
//!
//! JSON parsers disagree on which of two equal keys counts, so the parse never picks one
//! where it matters:
//!
//! - `event`, `event_id`, `inbox_id` or `pod_id` twice at the top level, whatever the
//!   values (`null` included): the envelope is not read, and the event is malformed
//!   without a type or ids. These route the event, name its tenant and deduplicate it;
//!   `protocol::Claim` cannot be read for the same duplicates.
//! - Any other field the model reads for the event's type twice (such as `occurred_at`, or
//!   `body_text` inside `message`): the event is malformed, with `duplicate field` as the
//!   reason. For an unknown or malformed event, a duplicated `occurred_at` is not used.
//! - Fields the model does not read may repeat; they stay in the raw body, where
//!   `serde_json` keeps the last.
//!
//! Keys are compared after decoding their escapes, as `serde_json` compares them.

use std::borrow::Cow;

use bytes::Bytes;
use serde::de::{Error as _, Unexpected};

use super::fallback::Envelope;
use super::message::{AttachmentIndex, List};
use super::time::{Stamp, invalid};
use super::{Event, Lifecycle, MalformedEvent, Message, MessageReceived, RawJson, UnknownEvent};
use crate::json::{Decoded, MAX_BODY, Reader, Short, Span, Syntax, line_column};

/// The documented event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    MessageReceived,
    InboxSuspended,
    InboxReactivated,
    PodSuspended,
    PodReactivated,
}

impl Kind {
    #[inline(always)]
    fn of(event_type: &[u8]) -> Option<Self> {
        Some(match event_type {
            b"message.received" => Self::MessageReceived,
            b"inbox.suspended" => Self::InboxSuspended,
            b"inbox.reactivated" => Self::InboxReactivated,
            b"pod.suspended" => Self::PodSuspended,
            b"pod.reactivated" => Self::PodReactivated,
            _ => return None,
        })
    }

    /// The top-level fields the type reads, besides `event`.
    fn shape(self) -> &'static [TopField] {
        match self {
            Self::MessageReceived => &[
                TopField::EventId,
                TopField::OccurredAt,
                TopField::DeliveredAt,
                TopField::Attempt,
                TopField::InboxId,
                TopField::ThreadId,
                TopField::ExternalId,
                TopField::Message,
            ],
            _ => &[
                TopField::EventId,
                TopField::OccurredAt,
                TopField::InboxId,
                TopField::InboxAddress,
                TopField::PodId,
                TopField::Reason,
            ],
        }
    }
}

/// A value of the wrong shape for its field: what serde would have said, and the offset
/// it would have said it at.
struct Misfit {
    message: String,
    at: usize,
}

impl Misfit {
    #[cold]
    fn duplicate(name: &'static str, key: Span) -> Self {
        Self {
            message: serde_json::Error::duplicate_field(name).to_string(),
            at: key.after(),
        }
    }

    fn render(&self, body: &[u8]) -> String {
        let (line, column) = line_column(body, self.at);
        format!("{} at line {line} column {column}", self.message)
    }
}

/// Keeps the first misfit of what is being read.
#[inline]
fn report(misfit: &mut Option<Misfit>, found: Misfit) {
    if misfit.is_none() {
        *misfit = Some(found);
    }
}

/// Which of an object's fields (by number) it has shown so far.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    /// Records the field; true if it was already there.
    #[inline]
    fn again(&mut self, field: u32) -> bool {
        let bit = 1_u32.wrapping_shl(field);
        let again = self.0 & bit != 0;
        self.0 |= bit;
        again
    }
}

/// Every documented top-level field, and what did not fit, in the body's order.
#[derive(Default)]
struct Top {
    seen: Seen,
    /// The first misfit of each field, in the body's order: at most one entry per field,
    /// however often a body repeats one.
    misfits: Vec<(TopField, Misfit)>,
    /// The first envelope field (`event`, `event_id`, `inbox_id`, `pod_id`) named twice:
    /// the envelope cannot be read.
    ambiguous: Option<(TopField, Misfit)>,
    event: Option<Span>,
    kind: Option<Kind>,
    event_id: Option<Short>,
    occurred_at: Option<Stamp>,
    delivered_at: Option<Stamp>,
    attempt: Option<u32>,
    inbox_id: Option<Short>,
    thread_id: Option<Short>,
    external_id: Option<Short>,
    message: Option<Message>,
    inbox_address: Option<Short>,
    pod_id: Option<Short>,
    reason: Option<Short>,
    /// The top-level short fields that held escapes, decoded.
    decoded: String,
}

/// Parses a verified body; see [`Event::parse`].
pub(super) fn parse(body: Bytes) -> Event {
    if body.len() > MAX_BODY {
        let error = format!(
            "the body is {} bytes long, more than the {MAX_BODY} an event can index",
            body.len()
        );
        return unreadable(body, None, error);
    }
    let mut reader = Reader::new(&body);
    if reader.peek() != Some(b'{') {
        let error = match reader.skip().and_then(|()| reader.end()) {
            Ok(()) => "the body is JSON, but not an object".to_owned(),
            Err(syntax) => not_json(&body, syntax),
        };
        return unreadable(body, None, error);
    }
    let mut top = Top::default();
    let read = reader
        .object(|reader, key| top.member(reader, key, &body))
        .and_then(|()| reader.end());
    if let Err(syntax) = read {
        let error = not_json(&body, syntax);
        return unreadable(body, None, error);
    }
    assemble(&mut top, body)
}

#[cold]
fn not_json(body: &[u8], syntax: Syntax) -> String {
    let (line, column) = line_column(body, syntax.at);
    format!(
        "the body is not JSON: {} at line {line} column {}",
        syntax.code,
        column.saturating_add(1)
    )
}

/// Looks a key up, decoding it first only if it holds escapes.
#[inline(always)]
fn lookup<T>(key: Span, body: &[u8], of: fn(&[u8]) -> Option<T>) -> Option<T> {
    if key.escaped() {
        lookup_decoded(key, body, of)
    } else {
        of(key.raw(body))
    }
}

#[cold]
fn lookup_decoded<T>(key: Span, body: &[u8], of: fn(&[u8]) -> Option<T>) -> Option<T> {
    of(key.decode(body).as_bytes())
}

impl Top {
    /// Keeps the first misfit of each field.
    fn note(&mut self, field: TopField, misfit: Misfit) {
        if !self.misfits.iter().any(|(noted, _)| *noted == field) {
            self.misfits.push((field, misfit));
        }
    }

    fn member(&mut self, reader: &mut Reader<'_>, key: Span, body: &Bytes) -> Result<(), Syntax> {
        let Some(field) = lookup(key, body, TopField::of) else {
            return reader.skip();
        };
        if self.seen.again(field as u32) {
            return self.again(reader, field, key);
        }
        let mut misfit = None;
        match field {
            TopField::Event => {
                if reader.peek() == Some(b'"') {
                    let event = reader.string()?;
                    self.kind = lookup(event, body, Kind::of);
                    self.event = Some(event);
                } else {
                    report(&mut misfit, unexpected(reader, "a string")?);
                }
            }
            TopField::EventId => id(reader, &mut self.event_id, &mut self.decoded, &mut misfit)?,
            TopField::InboxId => id(reader, &mut self.inbox_id, &mut self.decoded, &mut misfit)?,
            TopField::PodId => short(reader, &mut self.pod_id, &mut self.decoded, &mut misfit)?,
            TopField::OccurredAt => {
                timestamp(
                    reader,
                    &mut self.occurred_at,
                    &mut self.decoded,
                    &mut misfit,
                )?;
            }
            TopField::DeliveredAt => {
                timestamp(
                    reader,
                    &mut self.delivered_at,
                    &mut self.decoded,
                    &mut misfit,
                )?;
            }
            TopField::Attempt => {
                let mut attempt = None;
                unsigned(reader, u32::MAX.into(), "u32", &mut attempt, &mut misfit)?;
                self.attempt = attempt.and_then(|attempt| u32::try_from(attempt).ok());
            }
            TopField::ThreadId => {
                short(reader, &mut self.thread_id, &mut self.decoded, &mut misfit)?;
            }
            TopField::ExternalId => {
                short(
                    reader,
                    &mut self.external_id,
                    &mut self.decoded,
                    &mut misfit,
                )?;
            }
            TopField::InboxAddress => {
                short(
                    reader,
                    &mut self.inbox_address,
                    &mut self.decoded,
                    &mut misfit,
                )?;
            }
            TopField::Reason => code(reader, &mut self.reason, &mut self.decoded, &mut misfit)?,
            // Another type's message is only checked, not indexed.
            TopField::Message
                if self.event.is_none() || self.kind == Some(Kind::MessageReceived) =>
            {
                match reader.peek() {
                    Some(b'{') => {
                        // The body goes in when the event is built: a move, not a clone.
                        let message = self.message.insert(Message::default());
                        read_message(reader, message, body, &mut misfit)?;
                    }
                    Some(b'n') => reader.literal(b"null")?,
                    _ => report(&mut misfit, unexpected(reader, "struct Message")?),
                }
            }
            TopField::Message => reader.skip()?,
        }
        if let Some(misfit) = misfit {
            self.note(field, misfit);
        }
        Ok(())
    }

    /// A field seen a second time: an envelope field makes the envelope unreadable; any
    /// other is a misfit and loses its value.
    #[cold]
    fn again(&mut self, reader: &mut Reader<'_>, field: TopField, key: Span) -> Result<(), Syntax> {
        reader.skip()?;
        if matches!(
            field,
            TopField::Event | TopField::EventId | TopField::InboxId | TopField::PodId
        ) {
            if self.ambiguous.is_none() {
                self.ambiguous = Some((field, Misfit::duplicate(field.name(), key)));
            }
            return Ok(());
        }
        match field {
            TopField::OccurredAt => self.occurred_at = None,
            TopField::DeliveredAt => self.delivered_at = None,
            TopField::Attempt => self.attempt = None,
            TopField::ThreadId => self.thread_id = None,
            TopField::ExternalId => self.external_id = None,
            TopField::Message => self.message = None,
            TopField::InboxAddress => self.inbox_address = None,
            TopField::Reason => self.reason = None,
            TopField::Event | TopField::EventId | TopField::InboxId | TopField::PodId => {}
        }
        self.note(field, Misfit::duplicate(field.name(), key));
        Ok(())
    }
}

#[inline]
fn short(
    reader: &mut Reader<'_>,
    into: &mut Option<Short>,
    decoded: &mut impl Decoded,
    misfit: &mut Option<Misfit>,
) -> Result<(), Syntax> {
    match reader.peek() {
        Some(b'"') => {
            let span = reader.string()?;
            *into = Some(decoded.text(span, reader.body()));
        }
        Some(b'n') => reader.literal(b"null")?,
        _ => report(misfit, unexpected(reader, "a string")?),
    }
    Ok(())
}

/// An identifier: as [`short`], but a lone surrogate keeps its escape (see [`Short::id`]).
/// `protocol::Claim` reads `event_id` and `inbox_id` the same way.
#[inline]
fn id(
    reader: &mut Reader<'_>,
    into: &mut Option<Short>,
    decoded: &mut String,
    misfit: &mut Option<Misfit>,
) -> Result<(), Syntax> {
    match reader.peek() {
        Some(b'"') => {
            let span = reader.string()?;
            *into = Some(Short::id(span, reader.body(), decoded));
        }
        Some(b'n') => reader.literal(b"null")?,
        _ => report(misfit, unexpected(reader, "a string")?),
    }
    Ok(())
}

/// A text that may be large: only its span is kept.
#[inline]
fn text(
    reader: &mut Reader<'_>,
    into: &mut Option<Span>,
    misfit: &mut Option<Misfit>,
) -> Result<(), Syntax> {
    match reader.peek() {
        Some(b'"') => *into = Some(reader.string()?),
        Some(b'n') => reader.literal(b"null")?,
        _ => report(misfit, unexpected(reader, "a string")?),
    }
    Ok(())
}

#[inline]
fn timestamp(
    reader: &mut Reader<'_>,
    into: &mut Option<Stamp>,
    decoded: &mut String,
    misfit: &mut Option<Misfit>,
) -> Result<(), Syntax> {
    match reader.peek() {
        Some(b'"') => {
            let span = reader.string()?;
            let valid = if span.escaped() {
                Stamp::validate(span.decode(reader.body()).as_bytes())
            } else {
                Stamp::validate(span.raw(reader.body()))
            };
            match valid {
                Ok(()) => *into = Some(Stamp(Short::new(span, reader.body(), decoded))),
                Err(error) => report(
                    misfit,
                    Misfit {
                        message: invalid::<serde_json::Error>(&span.decode(reader.body()), error)
                            .to_string(),
                        at: reader.at(),
                    },
                ),
            }
        }
        Some(b'n') => reader.literal(b"null")?,
        _ => report(misfit, unexpected(reader, "an RFC 3339 timestamp string")?),
    }
    Ok(())
}

/// A code (a reason, an extraction method): any string, turned into its enum when read.
fn code(
    reader: &mut Reader<'_>,
    into: &mut Option<Short>,
    decoded: &mut impl Decoded,
    misfit: &mut Option<Misfit>,
) -> Result<(), Syntax> {
    match reader.peek() {
        Some(b'"') => {
            let span = reader.string()?;
            *into = Some(decoded.text(span, reader.body()));
        }
        Some(b'n') => reader.literal(b"null")?,
        _ => report(misfit, unexpected(reader, "a string code")?),
    }
    Ok(())
}

/// An unsigned integer up to `max`, checked as serde checks `expected` (`u32`, `u64`).
fn unsigned(
    reader: &mut Reader<'_>,
    max: u64,
    expected: &'static str,
    into: &mut Option<u64>,
    misfit: &mut Option<Misfit>,
) -> Result<(), Syntax> {
    match reader.peek() {
        Some(b'-' | b'0'..=b'9') => {}
        Some(b'n') => return reader.literal(b"null"),
        _ => {
            report(misfit, unexpected(reader, expected)?);
            return Ok(());
        }
    }
    let number = reader.number()?;
    let message = match number.as_u64().map_or_else(|| classify(number.text), Ok) {
        Ok(value) if value <= max => {
            *into = Some(value);
            return Ok(());
        }
        Ok(value) => serde_json::Error::invalid_value(Unexpected::Unsigned(value), &expected),
        Err(Unexpected::Signed(value)) => {
            serde_json::Error::invalid_value(Unexpected::Signed(value), &expected)
        }
        Err(unexpected) => serde_json::Error::invalid_type(unexpected, &expected),
    };
    report(
        misfit,
        Misfit {
            message: message.to_string(),
            at: reader.at(),
        },
    );
    Ok(())
}

/// What serde_json makes of a number: a `u64`, or else how serde would describe it.
#[cold]
fn classify(text: &[u8]) -> Result<u64, Unexpected<'static>> {
    match serde_json::from_slice::<serde_json::Number>(text) {
        Ok(number) => match (number.as_u64(), number.as_i64(), number.as_f64()) {
            (Some(value), _, _) => Ok(value),
            (None, Some(value), _) => Err(Unexpected::Signed(value)),
            (None, None, value) => Err(Unexpected::Float(value.unwrap_or_default())),
        },
        Err(_) => Err(Unexpected::Other("a number")),
    }
}

/// Reads a value of the wrong shape and says what it is, as serde would.
#[cold]
fn unexpected(reader: &mut Reader<'_>, expected: &'static str) -> Result<Misfit, Syntax> {
    let first = reader.peek();
    let start = reader.at();
    let unexpected = match first {
        Some(b'"') => {
            let span = reader.string()?;
            let text = span.decode(reader.body());
            let message =
                serde_json::Error::invalid_type(Unexpected::Str(&shorten(&text)), &expected);
            return Ok(Misfit {
                message: message.to_string(),
                at: reader.at(),
            });
        }
        // serde reports a container where it starts, without reading it.
        Some(b'[') => {
            reader.skip()?;
            return Ok(Misfit {
                message: serde_json::Error::invalid_type(Unexpected::Seq, &expected).to_string(),
                at: start,
            });
        }
        Some(b'{') => {
            reader.skip()?;
            return Ok(Misfit {
                message: serde_json::Error::invalid_type(Unexpected::Map, &expected).to_string(),
                at: start,
            });
        }
        Some(b't') => reader.literal(b"true").map(|()| Unexpected::Bool(true))?,
        Some(b'f') => reader.literal(b"false").map(|()| Unexpected::Bool(false))?,
        Some(b'n') => reader.literal(b"null").map(|()| Unexpected::Unit)?,
        Some(b'-' | b'0'..=b'9') => {
            let number = reader.number()?;
            match number.as_u64().map_or_else(|| classify(number.text), Ok) {
                Ok(value) => Unexpected::Unsigned(value),
                Err(unexpected) => unexpected,
            }
        }
        _ => {
            reader.skip()?;
            Unexpected::Other("a value")
        }
    };
    Ok(Misfit {
        message: serde_json::Error::invalid_type(unexpected, &expected).to_string(),
        at: reader.at(),
    })
}

/// At most 40 characters of a string quoted in an error: enough to see the mistake,
/// without echoing an arbitrarily long value into a log line. serde escapes what it quotes.
fn shorten(text: &str) -> Cow<'_, str> {
    match text.char_indices().nth(40) {
        Some((cut, _)) => Cow::Owned(format!("{}…", text.get(..cut).unwrap_or_default())),
        None => Cow::Borrowed(text),
    }
}

/// Reads the object of `message` into `message`. The first misfit inside it (in a field,
/// a `cc` entry or an attachment) is the message's; the rest is still checked, no longer
/// indexed.
fn read_message(
    reader: &mut Reader<'_>,
    message: &mut Message,
    body: &Bytes,
    misfit: &mut Option<Misfit>,
) -> Result<(), Syntax> {
    let mut seen = Seen::default();
    reader.object(|reader, key| {
        if misfit.is_some() {
            return reader.skip();
        }
        let Some(field) = lookup(key, body, MessageField::of) else {
            return reader.skip();
        };
        if seen.again(field as u32) {
            reader.skip()?;
            *misfit = Some(Misfit::duplicate(field.name(), key));
            return Ok(());
        }
        let decoded = &mut message.decoded;
        match field {
            MessageField::Id => short(reader, &mut message.id, decoded, misfit),
            MessageField::RfcMessageId => {
                short(reader, &mut message.rfc_message_id, decoded, misfit)
            }
            MessageField::From => short(reader, &mut message.from, decoded, misfit),
            MessageField::To => short(reader, &mut message.to, decoded, misfit),
            MessageField::Subject => short(reader, &mut message.subject, decoded, misfit),
            MessageField::BodyText => text(reader, &mut message.body_text, misfit),
            MessageField::ReceivedAt => {
                timestamp(reader, &mut message.received_at, decoded, misfit)
            }
            // A list is counted and its place kept; its elements are read again when they
            // are asked for (`message::Walk`), in the same order, so what they decode goes
            // into `decoded` in that order.
            MessageField::Cc => match reader.peek() {
                Some(b'[') => {
                    let mut list = List {
                        start: reader.at(),
                        len: 0,
                        decoded: decoded.len(),
                    };
                    reader.array(|reader| {
                        if misfit.is_some() {
                            return reader.skip();
                        }
                        if reader.peek() == Some(b'"') {
                            let span = reader.string()?;
                            Short::new(span, body, decoded);
                            list.len = list.len.saturating_add(1);
                        } else {
                            *misfit = Some(unexpected(reader, "a string")?);
                        }
                        Ok(())
                    })?;
                    message.cc = list;
                    Ok(())
                }
                Some(b'n') => reader.literal(b"null"),
                _ => {
                    *misfit = Some(unexpected(reader, "a sequence")?);
                    Ok(())
                }
            },
            MessageField::Attachments => match reader.peek() {
                Some(b'[') => {
                    let mut list = List {
                        start: reader.at(),
                        len: 0,
                        decoded: decoded.len(),
                    };
                    reader.array(|reader| {
                        if misfit.is_some() {
                            return reader.skip();
                        }
                        if reader.peek() != Some(b'{') {
                            *misfit = Some(unexpected(reader, "struct Attachment")?);
                            return Ok(());
                        }
                        let mut attachment = AttachmentIndex::default();
                        attachment_fields(reader, &mut attachment, decoded, misfit)?;
                        list.len = list.len.saturating_add(1);
                        Ok(())
                    })?;
                    message.attachments = list;
                    Ok(())
                }
                Some(b'n') => reader.literal(b"null"),
                _ => {
                    *misfit = Some(unexpected(reader, "a sequence")?);
                    Ok(())
                }
            },
        }
    })
}

/// Reads one attachment again, for [`Message::attachments`]: the parse read it before,
/// without a misfit.
pub(super) fn read_attachment(
    reader: &mut Reader<'_>,
    attachment: &mut AttachmentIndex,
    decoded: &mut impl Decoded,
) -> Result<(), Syntax> {
    attachment_fields(reader, attachment, decoded, &mut None)
}

fn attachment_fields(
    reader: &mut Reader<'_>,
    attachment: &mut AttachmentIndex,
    decoded: &mut impl Decoded,
    misfit: &mut Option<Misfit>,
) -> Result<(), Syntax> {
    let body = reader.body();
    let mut seen = Seen::default();
    reader.object(|reader, key| {
        if misfit.is_some() {
            return reader.skip();
        }
        let Some(field) = lookup(key, body, AttachmentField::of) else {
            return reader.skip();
        };
        if seen.again(field as u32) {
            reader.skip()?;
            *misfit = Some(Misfit::duplicate(field.name(), key));
            return Ok(());
        }
        match field {
            AttachmentField::Filename => short(reader, &mut attachment.filename, decoded, misfit),
            AttachmentField::ContentType => {
                short(reader, &mut attachment.content_type, decoded, misfit)
            }
            AttachmentField::SizeBytes => {
                unsigned(reader, u64::MAX, "u64", &mut attachment.size_bytes, misfit)
            }
            AttachmentField::Url => short(reader, &mut attachment.url, decoded, misfit),
            AttachmentField::ParsedText => text(reader, &mut attachment.parsed_text, misfit),
            AttachmentField::ExtractionMethod => {
                code(reader, &mut attachment.extraction_method, decoded, misfit)
            }
        }
    })
}

/// Declares an object's documented fields: the names on the wire, grouped by length so
/// that a key is compared with at most the names of its own length.
macro_rules! fields {
    (
        $(#[$meta:meta])*
        $name:ident { $($length:literal => { $($variant:ident => $text:literal,)* })* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum $name {
            $($($variant,)*)*
        }

        impl $name {
            #[inline(always)]
            fn of(name: &[u8]) -> Option<Self> {
                match name.len() {
                    $($length => match name {
                        $($text => Some(Self::$variant),)*
                        _ => None,
                    },)*
                    _ => None,
                }
            }

            fn name(self) -> &'static str {
                match self {
                    $($(Self::$variant => match std::str::from_utf8($text) {
                        Ok(text) => text,
                        Err(_) => "",
                    },)*)*
                }
            }
        }
    };
}

fields! {
    /// The documented top-level fields.
    TopField {
        5 => { Event => b"event", }
        6 => { PodId => b"pod_id", Reason => b"reason", }
        7 => { Attempt => b"attempt", Message => b"message", }
        8 => { EventId => b"event_id", InboxId => b"inbox_id", }
        9 => { ThreadId => b"thread_id", }
        11 => { OccurredAt => b"occurred_at", ExternalId => b"external_id", }
        12 => { DeliveredAt => b"delivered_at", }
        13 => { InboxAddress => b"inbox_address", }
    }
}

fields! {
    /// The fields of `message`.
    MessageField {
        2 => { Id => b"id", To => b"to", Cc => b"cc", }
        4 => { From => b"from", }
        7 => { Subject => b"subject", }
        9 => { BodyText => b"body_text", }
        11 => { Attachments => b"attachments", ReceivedAt => b"received_at", }
        14 => { RfcMessageId => b"rfc_message_id", }
    }
}

fields! {
    /// The fields of an attachment, camelCase on the wire.
    AttachmentField {
        3 => { Url => b"url", }
        8 => { Filename => b"filename", }
        9 => { SizeBytes => b"sizeBytes", }
        10 => { ParsedText => b"parsedText", }
        11 => { ContentType => b"contentType", }
        16 => { ExtractionMethod => b"extractionMethod", }
    }
}

/// Builds the event once the whole body has been read.
fn assemble(top: &mut Top, body: Bytes) -> Event {
    // The event may be held long after the request (a queue): it keeps the decoded text
    // itself, not the room a growing string doubled into.
    top.decoded.shrink_to_fit();
    if let Some(message) = &mut top.message {
        message.decoded.shrink_to_fit();
    }
    if let Some((field, misfit)) = top.ambiguous.take() {
        let error = format!(
            "{}: the body names its `{}` twice, and JSON readers differ on which counts, so \
             its envelope (type, event_id, inbox_id) is not read",
            misfit.render(&body),
            field.name()
        );
        return unreadable(body, Some(field.name()), error);
    }
    if top.event.is_none() {
        let error = match top
            .misfits
            .iter()
            .find(|(field, _)| *field == TopField::Event)
        {
            Some((_, misfit)) => format!("`event` is not a string: {}", misfit.render(&body)),
            None => "the body has no `event` field".to_owned(),
        };
        return malformed(top, body, "event", error);
    }
    let Some(kind) = top.kind else {
        return Event::Unknown(UnknownEvent {
            envelope: envelope_of(top, body),
        });
    };
    let shape = kind.shape();
    let first = top
        .misfits
        .iter()
        .find(|(field, _)| shape.contains(field))
        .map(|(field, misfit)| (field.name(), misfit.render(&body)));
    if let Some((field, error)) = first {
        return malformed(top, body, field, error);
    }
    let Some(event_id) = top.event_id.take() else {
        let error = "missing field `event_id` (absent or null)".to_owned();
        return malformed(top, body, "event_id", error);
    };
    match kind {
        Kind::MessageReceived => Event::MessageReceived(MessageReceived {
            event_id,
            occurred_at: top.occurred_at,
            delivered_at: top.delivered_at,
            attempt: top.attempt,
            inbox_id: top.inbox_id,
            thread_id: top.thread_id,
            external_id: top.external_id,
            decoded: std::mem::take(&mut top.decoded),
            // The message holds the body for the whole event.
            message: Message {
                body,
                ..top.message.take().unwrap_or_default()
            },
        }),
        Kind::InboxSuspended => Event::InboxSuspended(lifecycle(top, event_id, body)),
        Kind::InboxReactivated => Event::InboxReactivated(lifecycle(top, event_id, body)),
        Kind::PodSuspended => Event::PodSuspended(lifecycle(top, event_id, body)),
        Kind::PodReactivated => Event::PodReactivated(lifecycle(top, event_id, body)),
    }
}

fn lifecycle(top: &mut Top, event_id: Short, body: Bytes) -> Lifecycle {
    Lifecycle {
        event_id,
        occurred_at: top.occurred_at,
        inbox_id: top.inbox_id,
        inbox_address: top.inbox_address,
        pod_id: top.pod_id,
        reason: top.reason,
        decoded: std::mem::take(&mut top.decoded),
        raw: RawJson(body),
    }
}

fn malformed(top: &mut Top, body: Bytes, field: &'static str, error: String) -> Event {
    Event::Malformed(MalformedEvent {
        envelope: envelope_of(top, body),
        field: Some(field),
        error,
    })
}

/// A body whose envelope cannot be read: not JSON, not an object, or naming an envelope
/// field twice. It has no type (the empty string), no ids and no time, as
/// `protocol::Claim` has none for it.
#[cold]
fn unreadable(body: Bytes, field: Option<&'static str>, error: String) -> Event {
    Event::Malformed(MalformedEvent {
        envelope: Envelope {
            event_type: Short::default(),
            event_id: None,
            inbox_id: None,
            occurred_at: None,
            decoded: String::new(),
            raw: RawJson(body),
        },
        field,
        error,
    })
}

/// The envelope of an event the model does not type: the usable fields, leniently.
fn envelope_of(top: &mut Top, body: Bytes) -> Envelope {
    // Without a string `event`, the type reads as the empty string.
    let event = top.event.unwrap_or(Span::EMPTY);
    let event_type = Short::new(event, &body, &mut top.decoded);
    Envelope {
        event_type,
        event_id: top.event_id,
        inbox_id: top.inbox_id,
        occurred_at: top.occurred_at,
        decoded: std::mem::take(&mut top.decoded),
        raw: RawJson(body),
    }
}
