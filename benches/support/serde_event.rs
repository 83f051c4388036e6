//! The event model parsed with `serde_json` instead of the crate's own reader, for the
//! `events` bench only: the measurement behind BENCHMARKS.md's "The parse: serde_json
//! borrowed against the bespoke reader".
//!
//! It is written as the crate would write it if it replaced `src/json.rs` and
//! `src/event/wire.rs`:
//!
//! - `str::from_utf8` over the whole body first, then `serde_json::from_str` into
//!   `#[derive(Deserialize)]` structs whose short fields are `Cow<'a, str>` borrowed from
//!   the body (owned only when their JSON holds escapes);
//! - the large texts (`body_text`, `parsedText`) and the ids as `&'a RawValue`, decoded
//!   on access (ids at once, since they are short), so that a text is never copied by the
//!   parse;
//! - the event that is kept holds the verified `Bytes` and, for each field, its offsets in
//!   it, found by pointer difference in safe code (`as_ptr() as usize`), plus one string
//!   of the short fields that held escapes, decoded;
//! - the lossless rule: a body that is not UTF-8 or not JSON, is not an object, or has no
//!   string `event` still becomes an event (`Malformed`), and so does a known type whose
//!   fields do not fit.
//!
//! serde_json refuses a lone surrogate escape (`"\ud83d"`) in a string it decodes,
//! `Cow<str>` and `&str` alike, with "lone leading surrogate in hex escape"; inside a
//! `RawValue` it only checks the four hex digits. The crate reads a lone surrogate as
//! U+FFFD in a text and keeps its escape in an id, so this parse falls back, when a body
//! fails, to a copy of the body with each lone surrogate's escape rewritten as `\ufffd`
//! (the same length, so offsets stay the body's) and parses that copy again; ids are
//! decoded from the original bytes with the escape kept. The bench measures what that
//! fallback costs.
//!
//! The lists (`cc`, `attachments`) are what `#[derive(Deserialize)]` makes of them: one
//! entry per element, kept in the event. The bench counts what that holds.
#![allow(dead_code)]

use std::borrow::Cow;

use bytes::Bytes;
use openmail_webhooks::Event;
use openmail_webhooks::event::Timestamp;
use serde::Deserialize;
use serde_json::value::RawValue;

/// Which event arrived, as [`Event`]'s variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    MessageReceived,
    InboxSuspended,
    InboxReactivated,
    PodSuspended,
    PodReactivated,
    Unknown,
    Malformed,
}

impl Kind {
    fn of(event_type: &str) -> Self {
        match event_type {
            "message.received" => Self::MessageReceived,
            "inbox.suspended" => Self::InboxSuspended,
            "inbox.reactivated" => Self::InboxReactivated,
            "pod.suspended" => Self::PodSuspended,
            "pod.reactivated" => Self::PodReactivated,
            _ => Self::Unknown,
        }
    }

    fn lifecycle(self) -> bool {
        matches!(
            self,
            Self::InboxSuspended
                | Self::InboxReactivated
                | Self::PodSuspended
                | Self::PodReactivated
        )
    }
}

/// Where a field's text is: in the body (undecoded JSON when `raw`), or in `decoded`.
#[derive(Debug, Clone, Copy)]
struct Text {
    start: u32,
    end: u32,
    place: Place,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    /// Plain text in the body.
    Body,
    /// A JSON string in the body, quotes included, decoded when read.
    Raw,
    /// Text in the event's `decoded`.
    Decoded,
}

/// One attachment, as the event keeps it.
#[derive(Debug, Clone, Copy, Default)]
struct AttachmentIndex {
    filename: Option<Text>,
    content_type: Option<Text>,
    size_bytes: Option<u64>,
    url: Option<Text>,
    parsed_text: Option<Text>,
    extraction_method: Option<Text>,
}

/// The parsed event, held: the body, offsets into it, and the decoded short fields.
#[derive(Debug, Clone)]
pub struct SerdeEvent {
    kind: Kind,
    body: Bytes,
    decoded: String,
    event_type: Option<Text>,
    event_id: Option<Text>,
    occurred_at: Option<Text>,
    delivered_at: Option<Text>,
    attempt: Option<u32>,
    inbox_id: Option<Text>,
    thread_id: Option<Text>,
    external_id: Option<Text>,
    inbox_address: Option<Text>,
    pod_id: Option<Text>,
    reason: Option<Text>,
    message: Option<MessageIndex>,
    /// A malformed event's field, when known.
    field: Option<&'static str>,
}

#[derive(Debug, Clone, Default)]
struct MessageIndex {
    id: Option<Text>,
    rfc_message_id: Option<Text>,
    from: Option<Text>,
    to: Option<Text>,
    cc: Vec<Text>,
    subject: Option<Text>,
    body_text: Option<Text>,
    attachments: Vec<AttachmentIndex>,
    received_at: Option<Text>,
}

// The wire: what serde_json reads. Every field is optional and unknown fields are
// ignored, as the crate's model does.

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    event: Option<Str<'a>>,
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    occurred_at: Option<Str<'a>>,
    #[serde(borrow, default)]
    delivered_at: Option<Str<'a>>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(borrow, default)]
    inbox_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thread_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    external_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<WireMessage<'a>>,
    #[serde(borrow, default)]
    inbox_address: Option<Str<'a>>,
    #[serde(borrow, default)]
    pod_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    reason: Option<Str<'a>>,
}

/// The fields `message.received` reads, for a body the union above refused.
#[derive(Deserialize)]
struct WireReceived<'a> {
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    occurred_at: Option<Str<'a>>,
    #[serde(borrow, default)]
    delivered_at: Option<Str<'a>>,
    #[serde(default)]
    attempt: Option<u32>,
    #[serde(borrow, default)]
    inbox_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    thread_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    external_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    message: Option<WireMessage<'a>>,
}

/// The fields the lifecycle events read, for a body the union above refused.
#[derive(Deserialize)]
struct WireLifecycle<'a> {
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    occurred_at: Option<Str<'a>>,
    #[serde(borrow, default)]
    inbox_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    inbox_address: Option<Str<'a>>,
    #[serde(borrow, default)]
    pod_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    reason: Option<Str<'a>>,
}

/// The envelope alone, any value accepted, for an unknown or malformed event.
#[derive(Deserialize)]
struct WireEnvelope<'a> {
    #[serde(borrow, default)]
    event: Option<&'a RawValue>,
    #[serde(borrow, default)]
    event_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    inbox_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pod_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    occurred_at: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    id: Option<Str<'a>>,
    #[serde(borrow, default)]
    rfc_message_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    from: Option<Str<'a>>,
    #[serde(borrow, default)]
    to: Option<Str<'a>>,
    #[serde(borrow, default)]
    cc: Option<Vec<Str<'a>>>,
    #[serde(borrow, default)]
    subject: Option<Str<'a>>,
    #[serde(borrow, default)]
    body_text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    attachments: Option<Vec<WireAttachment<'a>>>,
    #[serde(borrow, default)]
    received_at: Option<Str<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAttachment<'a> {
    #[serde(borrow, default)]
    filename: Option<Str<'a>>,
    #[serde(borrow, default)]
    content_type: Option<Str<'a>>,
    #[serde(default)]
    size_bytes: Option<u64>,
    #[serde(borrow, default)]
    url: Option<Str<'a>>,
    #[serde(borrow, default)]
    parsed_text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    extraction_method: Option<Str<'a>>,
}

/// A string borrowed from the body unless its JSON holds escapes. serde borrows a
/// `#[serde(borrow)] Cow<'a, str>` field only when the field's type is the `Cow` itself:
/// inside an `Option` or a `Vec`, a `Cow<str>` always comes back owned, a copy of every
/// string. The newtype keeps the borrowing `Cow` as a field of its own.
#[derive(Deserialize)]
#[serde(transparent)]
struct Str<'a>(#[serde(borrow)] Cow<'a, str>);

/// A field whose value does not fit the model.
struct Misfit(&'static str);

/// Turns borrowed wire values into offsets: `text` is what serde_json read (the body, or
/// its copy without lone surrogates: the same length), `original` the verified bytes.
struct Builder<'a> {
    base: usize,
    len: usize,
    original: &'a [u8],
    decoded: String,
}

impl<'a> Builder<'a> {
    fn new(text: &str, original: &'a [u8]) -> Self {
        Self {
            base: text.as_ptr() as usize,
            len: text.len(),
            original,
            decoded: String::new(),
        }
    }

    /// Where `part` (a slice of what serde_json read) is, by pointer difference.
    fn offsets(&self, part: &str) -> Option<(u32, u32)> {
        let start = (part.as_ptr() as usize).checked_sub(self.base)?;
        let end = start.checked_add(part.len())?;
        if end > self.len {
            return None;
        }
        Some((u32::try_from(start).ok()?, u32::try_from(end).ok()?))
    }

    fn keep(&mut self, text: &str) -> Text {
        let start = self.decoded.len();
        self.decoded.push_str(text);
        Text {
            start: start as u32,
            end: self.decoded.len() as u32,
            place: Place::Decoded,
        }
    }

    fn short(&mut self, value: Option<Str<'_>>) -> Option<Text> {
        let value = value?;
        Some(match value.0 {
            Cow::Borrowed(text) => match self.offsets(text) {
                Some((start, end)) => Text {
                    start,
                    end,
                    place: Place::Body,
                },
                None => self.keep(text),
            },
            Cow::Owned(text) => self.keep(&text),
        })
    }

    /// A large text: the JSON string's place, decoded when read.
    fn large(
        &mut self,
        value: Option<&RawValue>,
        field: &'static str,
    ) -> Result<Option<Text>, Misfit> {
        let Some(raw) = value else { return Ok(None) };
        let raw = raw.get();
        if !raw.starts_with('"') {
            return Err(Misfit(field));
        }
        let (start, end) = self.offsets(raw).ok_or(Misfit(field))?;
        Ok(Some(Text {
            start,
            end,
            place: Place::Raw,
        }))
    }

    /// An id: a string, a lone surrogate kept as its escape, read from the original bytes.
    fn id(
        &mut self,
        value: Option<&RawValue>,
        field: &'static str,
    ) -> Result<Option<Text>, Misfit> {
        let Some(raw) = value else { return Ok(None) };
        let raw = raw.get();
        if raw == "null" {
            return Ok(None);
        }
        if !raw.starts_with('"') {
            return Err(Misfit(field));
        }
        let (start, end) = self.offsets(raw).ok_or(Misfit(field))?;
        let original = self
            .original
            .get(start as usize..end as usize)
            .ok_or(Misfit(field))?;
        if !original.contains(&b'\\') {
            return Ok(Some(Text {
                start: start + 1,
                end: end - 1,
                place: Place::Body,
            }));
        }
        let text = decode_string(original, Lone::Escape).ok_or(Misfit(field))?;
        Ok(Some(self.keep(&text)))
    }

    /// A timestamp: validated now, read when asked for.
    fn stamp(
        &mut self,
        value: Option<Str<'_>>,
        field: &'static str,
    ) -> Result<Option<Text>, Misfit> {
        if let Some(text) = &value {
            Timestamp::parse(&text.0).map_err(|_| Misfit(field))?;
        }
        Ok(self.short(value))
    }

    fn message(
        &mut self,
        message: Option<WireMessage<'_>>,
    ) -> Result<Option<MessageIndex>, Misfit> {
        let Some(message) = message else {
            return Ok(None);
        };
        let cc = message.cc.unwrap_or_default();
        let attachments = message.attachments.unwrap_or_default();
        let mut index = MessageIndex {
            id: self.short(message.id),
            rfc_message_id: self.short(message.rfc_message_id),
            from: self.short(message.from),
            to: self.short(message.to),
            cc: Vec::with_capacity(cc.len()),
            subject: self.short(message.subject),
            body_text: self.large(message.body_text, "message")?,
            attachments: Vec::with_capacity(attachments.len()),
            received_at: self.stamp(message.received_at, "message")?,
        };
        for entry in cc {
            index.cc.extend(self.short(Some(entry)));
        }
        for attachment in attachments {
            let entry = AttachmentIndex {
                filename: self.short(attachment.filename),
                content_type: self.short(attachment.content_type),
                size_bytes: attachment.size_bytes,
                url: self.short(attachment.url),
                parsed_text: self.large(attachment.parsed_text, "message")?,
                extraction_method: self.short(attachment.extraction_method),
            };
            index.attachments.push(entry);
        }
        Ok(Some(index))
    }

    fn event(self, kind: Kind, body: Bytes, parts: Parts) -> SerdeEvent {
        let mut decoded = self.decoded;
        decoded.shrink_to_fit();
        SerdeEvent {
            kind,
            body,
            decoded,
            event_type: parts.event_type,
            event_id: parts.event_id,
            occurred_at: parts.occurred_at,
            delivered_at: parts.delivered_at,
            attempt: parts.attempt,
            inbox_id: parts.inbox_id,
            thread_id: parts.thread_id,
            external_id: parts.external_id,
            inbox_address: parts.inbox_address,
            pod_id: parts.pod_id,
            reason: parts.reason,
            message: parts.message,
            field: parts.field,
        }
    }
}

#[derive(Default)]
struct Parts {
    event_type: Option<Text>,
    event_id: Option<Text>,
    occurred_at: Option<Text>,
    delivered_at: Option<Text>,
    attempt: Option<u32>,
    inbox_id: Option<Text>,
    thread_id: Option<Text>,
    external_id: Option<Text>,
    inbox_address: Option<Text>,
    pod_id: Option<Text>,
    reason: Option<Text>,
    message: Option<MessageIndex>,
    field: Option<&'static str>,
}

impl SerdeEvent {
    /// Parses a verified body. It cannot fail, as [`Event::parse`] cannot.
    pub fn parse(body: Bytes) -> Self {
        let Ok(text) = std::str::from_utf8(&body) else {
            return Self::unreadable(body);
        };
        if let Some(event) = Self::parse_text(text, &body, &body) {
            return event;
        }
        // serde_json refused the body: a lone surrogate in a string it decodes, or a
        // misfit, or not JSON. Only a body with a lone surrogate is copied.
        let copy = without_lone_surrogates(text.as_bytes());
        if let Cow::Owned(copy) = &copy {
            if let Some(event) = std::str::from_utf8(copy)
                .ok()
                .and_then(|copy| Self::parse_text(copy, &body, &body))
            {
                return event;
            }
        }
        let text = std::str::from_utf8(&copy).unwrap_or_default();
        Self::fallback(text, body.clone())
    }

    /// The fast path: the union of every type's fields, read in one pass.
    fn parse_text(text: &str, original: &[u8], body: &Bytes) -> Option<Self> {
        let wire: Wire<'_> = serde_json::from_str(text).ok()?;
        let mut builder = Builder::new(text, original);
        let event = wire.event?;
        let kind = Kind::of(&event.0);
        let event_type = builder.short(Some(event));
        let mut parts = Parts {
            event_type,
            ..Parts::default()
        };
        let built = (|| -> Result<(), Misfit> {
            parts.event_id = builder.id(wire.event_id, "event_id")?;
            parts.inbox_id = builder.id(wire.inbox_id, "inbox_id")?;
            parts.occurred_at = builder.stamp(wire.occurred_at, "occurred_at")?;
            match kind {
                Kind::MessageReceived => {
                    parts.delivered_at = builder.stamp(wire.delivered_at, "delivered_at")?;
                    parts.attempt = wire.attempt;
                    parts.thread_id = builder.short(wire.thread_id);
                    parts.external_id = builder.short(wire.external_id);
                    parts.message = builder.message(wire.message)?;
                }
                kind if kind.lifecycle() => {
                    parts.inbox_address = builder.short(wire.inbox_address);
                    parts.pod_id = builder.short(wire.pod_id);
                    parts.reason = builder.short(wire.reason);
                }
                _ => {}
            }
            if kind != Kind::Unknown && parts.event_id.is_none() {
                return Err(Misfit("event_id"));
            }
            Ok(())
        })();
        // A misfit the union could not see (a timestamp, a text of the wrong type): the
        // slow path decides, as it does for a body serde_json refused.
        built.ok()?;
        Some(builder.event(kind, body.clone(), parts))
    }

    /// A body the fast path refused: the envelope alone, then the type's own fields.
    #[cold]
    fn fallback(text: &str, body: Bytes) -> Self {
        let Ok(envelope) = serde_json::from_str::<WireEnvelope<'_>>(text) else {
            return Self::unreadable(body);
        };
        let mut builder = Builder::new(text, &body);
        // Leniently: what does not fit is left out.
        let event_id = builder.id(envelope.event_id, "event_id").ok().flatten();
        let inbox_id = builder.id(envelope.inbox_id, "inbox_id").ok().flatten();
        let occurred_at = envelope
            .occurred_at
            .and_then(|raw| serde_json::from_str::<Str<'_>>(raw.get()).ok())
            .and_then(|stamp| builder.stamp(Some(stamp), "occurred_at").ok().flatten());
        let mut parts = Parts {
            event_id,
            inbox_id,
            occurred_at,
            ..Parts::default()
        };
        let event = envelope
            .event
            .and_then(|raw| serde_json::from_str::<Str<'_>>(raw.get()).ok());
        let Some(event) = event else {
            parts.field = Some("event");
            return builder.event(Kind::Malformed, body.clone(), parts);
        };
        let kind = Kind::of(&event.0);
        parts.event_type = builder.short(Some(event));
        let typed = match kind {
            Kind::MessageReceived => Self::received(text, &mut builder, &mut parts),
            kind if kind.lifecycle() => Self::lifecycle(text, &mut builder, &mut parts),
            _ => return builder.event(Kind::Unknown, body.clone(), parts),
        };
        match typed {
            Ok(()) => builder.event(kind, body.clone(), parts),
            Err(Misfit(field)) => {
                parts.field = Some(field);
                builder.event(Kind::Malformed, body.clone(), parts)
            }
        }
    }

    fn received(text: &str, builder: &mut Builder<'_>, parts: &mut Parts) -> Result<(), Misfit> {
        let wire: WireReceived<'_> = serde_json::from_str(text).map_err(|_| Misfit("message"))?;
        parts.event_id = Some(
            builder
                .id(wire.event_id, "event_id")?
                .ok_or(Misfit("event_id"))?,
        );
        parts.inbox_id = builder.id(wire.inbox_id, "inbox_id")?;
        parts.occurred_at = builder.stamp(wire.occurred_at, "occurred_at")?;
        parts.delivered_at = builder.stamp(wire.delivered_at, "delivered_at")?;
        parts.attempt = wire.attempt;
        parts.thread_id = builder.short(wire.thread_id);
        parts.external_id = builder.short(wire.external_id);
        parts.message = builder.message(wire.message)?;
        Ok(())
    }

    fn lifecycle(text: &str, builder: &mut Builder<'_>, parts: &mut Parts) -> Result<(), Misfit> {
        let wire: WireLifecycle<'_> = serde_json::from_str(text).map_err(|_| Misfit("reason"))?;
        parts.event_id = Some(
            builder
                .id(wire.event_id, "event_id")?
                .ok_or(Misfit("event_id"))?,
        );
        parts.inbox_id = builder.id(wire.inbox_id, "inbox_id")?;
        parts.occurred_at = builder.stamp(wire.occurred_at, "occurred_at")?;
        parts.inbox_address = builder.short(wire.inbox_address);
        parts.pod_id = builder.short(wire.pod_id);
        parts.reason = builder.short(wire.reason);
        Ok(())
    }

    /// Not UTF-8, not JSON, not an object, or an envelope field named twice.
    #[cold]
    fn unreadable(body: Bytes) -> Self {
        Builder::new("", &[]).event(Kind::Malformed, body, Parts::default())
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    fn get(&self, text: Option<Text>) -> Option<Cow<'_, str>> {
        let text = text?;
        let (start, end) = (text.start as usize, text.end as usize);
        Some(match text.place {
            Place::Body => Cow::Borrowed(
                std::str::from_utf8(self.body.get(start..end).unwrap_or_default())
                    .unwrap_or_default(),
            ),
            Place::Decoded => Cow::Borrowed(self.decoded.get(start..end).unwrap_or_default()),
            Place::Raw => {
                let raw = self.body.get(start..end).unwrap_or_default();
                decode_string(raw, Lone::Replace).unwrap_or_default()
            }
        })
    }

    fn short(&self, text: Option<Text>) -> Option<&str> {
        match self.get(text)? {
            Cow::Borrowed(text) => Some(text),
            Cow::Owned(_) => None,
        }
    }

    pub fn event_type(&self) -> &str {
        self.short(self.event_type).unwrap_or_default()
    }

    pub fn event_id(&self) -> Option<&str> {
        self.short(self.event_id)
    }

    pub fn inbox_id(&self) -> Option<&str> {
        self.short(self.inbox_id)
    }

    pub fn occurred_at(&self) -> Option<Timestamp> {
        self.short(self.occurred_at)
            .and_then(|text| Timestamp::parse(text).ok())
    }

    pub fn body_text(&self) -> Option<Cow<'_, str>> {
        self.get(self.message.as_ref()?.body_text)
    }

    pub fn raw(&self) -> &Bytes {
        &self.body
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lone {
    /// A lone surrogate reads as U+FFFD (texts).
    Replace,
    /// A lone surrogate keeps its escape, `\udXXX` in lowercase (ids).
    Escape,
}

/// A JSON string (quotes included) decoded: borrowed when it holds no escapes; a lone
/// surrogate read as `lone` says. `None` if it is not a string.
fn decode_string(raw: &[u8], lone: Lone) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return std::str::from_utf8(inner).ok().map(Cow::Borrowed);
    }
    let text = std::str::from_utf8(raw).ok()?;
    match serde_json::from_str::<String>(text) {
        Ok(decoded) => Some(Cow::Owned(decoded)),
        // A lone surrogate: rewritten, then decoded.
        Err(_) => {
            let rewritten = match lone {
                Lone::Replace => without_lone_surrogates(raw),
                Lone::Escape => lone_surrogates_escaped(raw),
            };
            serde_json::from_slice::<String>(&rewritten)
                .ok()
                .map(Cow::Owned)
        }
    }
}

/// Each lone surrogate's `\u` escape in the JSON's strings, as `(offset of the backslash,
/// its four hex digits)`.
fn lone_surrogates(body: &[u8]) -> Vec<(usize, [u8; 4])> {
    let mut found = Vec::new();
    let mut in_string = false;
    let mut at = 0_usize;
    while let Some(&byte) = body.get(at) {
        match (in_string, byte) {
            (_, b'"') => in_string = !in_string,
            (true, b'\\') => {
                let escape = body.get(at + 1..).unwrap_or_default();
                let unit = match escape {
                    [b'u', a, b, c, d, ..] => {
                        hex(&[*a, *b, *c, *d]).map(|unit| (unit, [*a, *b, *c, *d]))
                    }
                    _ => None,
                };
                let Some((unit, digits)) = unit.filter(|(unit, _)| (0xD800..0xE000).contains(unit))
                else {
                    at += 2;
                    continue;
                };
                let low = match escape.get(5..) {
                    Some([b'\\', b'u', a, b, c, d, ..]) if unit < 0xDC00 => hex(&[*a, *b, *c, *d]),
                    _ => None,
                };
                if low.is_some_and(|low| (0xDC00..0xE000).contains(&low)) {
                    at += 12;
                    continue;
                }
                found.push((at, digits));
                at += 6;
                continue;
            }
            _ => {}
        }
        at += 1;
    }
    found
}

fn hex(digits: &[u8; 4]) -> Option<u16> {
    u16::from_str_radix(std::str::from_utf8(digits).ok()?, 16).ok()
}

/// The body with each lone surrogate's escape rewritten as `\ufffd`: the same length.
fn without_lone_surrogates(body: &[u8]) -> Cow<'_, [u8]> {
    let found = lone_surrogates(body);
    if found.is_empty() {
        return Cow::Borrowed(body);
    }
    let mut copy = body.to_vec();
    for (at, _) in found {
        if let Some(slot) = copy.get_mut(at + 2..at + 6) {
            slot.copy_from_slice(b"fffd");
        }
    }
    Cow::Owned(copy)
}

/// The string with each lone surrogate's escape itself escaped, so that it decodes to the
/// six characters `\udXXX` (lowercase), as the crate reads an id.
fn lone_surrogates_escaped(raw: &[u8]) -> Cow<'_, [u8]> {
    let found = lone_surrogates(raw);
    if found.is_empty() {
        return Cow::Borrowed(raw);
    }
    let mut copy = Vec::with_capacity(raw.len() + found.len());
    let mut from = 0;
    for (at, digits) in found {
        copy.extend_from_slice(raw.get(from..at).unwrap_or_default());
        copy.extend_from_slice(b"\\\\u");
        copy.extend(digits.iter().map(u8::to_ascii_lowercase));
        from = at + 6;
    }
    copy.extend_from_slice(raw.get(from..).unwrap_or_default());
    Cow::Owned(copy)
}

/// Panics unless the serde parse exposes what [`Event::parse`] exposes for `body`,
/// field for field. Malformed events are compared by what they keep (type, ids, time).
pub fn assert_same(body: &Bytes) {
    let event = Event::parse(body.clone());
    let serde = SerdeEvent::parse(body.clone());
    let name =
        String::from_utf8_lossy(body.get(..body.len().min(120)).unwrap_or_default()).into_owned();
    let kind = match &event {
        Event::MessageReceived(_) => Kind::MessageReceived,
        Event::InboxSuspended(_) => Kind::InboxSuspended,
        Event::InboxReactivated(_) => Kind::InboxReactivated,
        Event::PodSuspended(_) => Kind::PodSuspended,
        Event::PodReactivated(_) => Kind::PodReactivated,
        Event::Unknown(_) => Kind::Unknown,
        _ => Kind::Malformed,
    };
    assert_eq!(serde.kind, kind, "{name}");
    assert_eq!(serde.event_type(), event.event_type(), "{name}");
    assert_eq!(serde.event_id(), event.event_id(), "{name}");
    assert_eq!(serde.inbox_id(), event.inbox_id(), "{name}");
    let stamp = |stamp: Option<Timestamp>| stamp.map(|stamp| stamp.as_str().to_owned());
    assert_eq!(
        stamp(serde.occurred_at()),
        stamp(event.occurred_at()),
        "{name}"
    );
    assert_eq!(serde.raw(), event.raw());
    match &event {
        Event::MessageReceived(received) => {
            assert_eq!(
                stamp(serde.stamp(serde.delivered_at)),
                stamp(received.delivered_at()),
                "{name}"
            );
            assert_eq!(serde.attempt, received.attempt(), "{name}");
            assert_eq!(serde.short(serde.thread_id), received.thread_id(), "{name}");
            assert_eq!(
                serde.short(serde.external_id),
                received.external_id(),
                "{name}"
            );
            let message = &received.message;
            let ours = serde.message.clone().unwrap_or_default();
            assert_eq!(serde.short(ours.id), message.id(), "{name}");
            assert_eq!(
                serde.short(ours.rfc_message_id),
                message.rfc_message_id(),
                "{name}"
            );
            assert_eq!(serde.short(ours.from), message.from(), "{name}");
            assert_eq!(serde.short(ours.to), message.to(), "{name}");
            let cc: Vec<_> = ours
                .cc
                .iter()
                .map(|entry| serde.short(Some(*entry)).unwrap_or_default())
                .collect();
            assert_eq!(cc, message.cc().collect::<Vec<_>>(), "{name}");
            assert_eq!(serde.short(ours.subject), message.subject(), "{name}");
            assert_eq!(serde.get(ours.body_text), message.body_text(), "{name}");
            assert_eq!(
                stamp(serde.stamp(ours.received_at)),
                stamp(message.received_at()),
                "{name}"
            );
            assert_eq!(
                ours.attachments.len(),
                message.attachments().len(),
                "{name}"
            );
            for (index, theirs) in ours.attachments.iter().zip(message.attachments()) {
                assert_eq!(serde.short(index.filename), theirs.filename(), "{name}");
                assert_eq!(
                    serde.short(index.content_type),
                    theirs.content_type(),
                    "{name}"
                );
                assert_eq!(index.size_bytes, theirs.size_bytes(), "{name}");
                assert_eq!(serde.short(index.url), theirs.url(), "{name}");
                assert_eq!(serde.get(index.parsed_text), theirs.parsed_text(), "{name}");
                assert_eq!(
                    serde.short(index.extraction_method),
                    theirs
                        .extraction_method()
                        .as_ref()
                        .map(|method| method.as_str()),
                    "{name}"
                );
            }
        }
        Event::InboxSuspended(lifecycle)
        | Event::InboxReactivated(lifecycle)
        | Event::PodSuspended(lifecycle)
        | Event::PodReactivated(lifecycle) => {
            assert_eq!(
                serde.short(serde.inbox_address),
                lifecycle.inbox_address(),
                "{name}"
            );
            assert_eq!(serde.short(serde.pod_id), lifecycle.pod_id(), "{name}");
            assert_eq!(
                serde.short(serde.reason),
                lifecycle.reason().as_ref().map(|reason| reason.as_str()),
                "{name}"
            );
        }
        _ => {}
    }
}

impl SerdeEvent {
    fn stamp(&self, text: Option<Text>) -> Option<Timestamp> {
        self.short(text)
            .and_then(|text| Timestamp::parse(text).ok())
    }
}
