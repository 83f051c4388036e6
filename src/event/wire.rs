//! The parse: one serde pass into a flat struct, a second pass only when the first fails.
//!
//! The first pass reads the body into [`Wire`], which holds every documented top-level
//! field as an `Option`. Once it has seen `event` (OpenMail sends it first) it reads only
//! that type's fields and skips the rest unparsed, so a stray field of another event type
//! cannot spoil a good event, and an unknown type costs no more than a scan. Before `event`
//! is known, it reads every documented field strictly.
//!
//! When the first pass fails, the second ([`Pass::Envelope`]) reads only `event`, and
//! `event_id`, `inbox_id` and `occurred_at` when they are usable. It fails only when the
//! body is not a JSON object with a single string `event`: that is the one case
//! [`Event::parse`](super::Event::parse) rejects. If the first pass failed before it saw
//! `event`, in a field the type may not even have, a third pass reads the body again
//! knowing the type. So the outcome never depends on the order of the keys, which a
//! re-serialised event does not keep.
//!
//! Both passes avoid serde's buffering attributes (`tag`, `untagged`, `flatten`), which
//! would copy the whole body into an intermediate tree first.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use super::{Message, Reason, Timestamp};

/// The documented event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    MessageReceived,
    InboxSuspended,
    InboxReactivated,
    PodSuspended,
    PodReactivated,
}

impl Kind {
    pub(super) fn of(event_type: &str) -> Option<Self> {
        Some(match event_type {
            "message.received" => Self::MessageReceived,
            "inbox.suspended" => Self::InboxSuspended,
            "inbox.reactivated" => Self::InboxReactivated,
            "pod.suspended" => Self::PodSuspended,
            "pod.reactivated" => Self::PodReactivated,
            _ => return None,
        })
    }
}

/// Every documented top-level field.
#[derive(Default)]
pub(super) struct Wire {
    pub(super) event: String,
    pub(super) kind: Option<Kind>,
    pub(super) event_id: Option<String>,
    pub(super) occurred_at: Option<Timestamp>,
    pub(super) delivered_at: Option<Timestamp>,
    pub(super) attempt: Option<u32>,
    pub(super) inbox_id: Option<String>,
    pub(super) thread_id: Option<String>,
    pub(super) external_id: Option<String>,
    pub(super) message: Option<Message>,
    pub(super) inbox_address: Option<String>,
    pub(super) pod_id: Option<String>,
    pub(super) reason: Option<Reason>,
}

/// Why a pass failed.
pub(super) struct Failure {
    pub(super) error: serde_json::Error,
    /// The top-level field being read, if any.
    pub(super) field: Option<&'static str>,
    /// Whether the pass had not yet seen `event`, and so was reading every documented
    /// field: the failure may be in a field that the event's type does not even have.
    pub(super) before_event: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pass {
    /// The fields of the event's type, strictly. With `None`, the type is learnt from
    /// `event`, and fields before it are read as if they all belonged.
    Typed(Option<Kind>),
    /// Only the envelope, leniently.
    Envelope,
}

/// Runs one pass over `body`.
pub(super) fn read(body: &[u8], pass: Pass) -> Result<Wire, Failure> {
    let mut progress = Progress {
        field: None,
        before_event: false,
    };
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let result = deserializer
        .deserialize_map(WireVisitor {
            pass,
            progress: &mut progress,
        })
        .and_then(|wire| deserializer.end().map(|()| wire));
    result.map_err(|error| Failure {
        error,
        field: progress.field,
        before_event: progress.before_event,
    })
}

/// Where the visitor is, for the error report: a serde error cannot carry it.
struct Progress {
    field: Option<&'static str>,
    before_event: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Event,
    EventId,
    OccurredAt,
    DeliveredAt,
    Attempt,
    InboxId,
    ThreadId,
    ExternalId,
    Message,
    InboxAddress,
    PodId,
    Reason,
    #[serde(other)]
    Other,
}

impl Field {
    fn name(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::EventId => "event_id",
            Self::OccurredAt => "occurred_at",
            Self::DeliveredAt => "delivered_at",
            Self::Attempt => "attempt",
            Self::InboxId => "inbox_id",
            Self::ThreadId => "thread_id",
            Self::ExternalId => "external_id",
            Self::Message => "message",
            Self::InboxAddress => "inbox_address",
            Self::PodId => "pod_id",
            Self::Reason => "reason",
            Self::Other => "",
        }
    }
}

/// Which fields the pass reads, given what it knows of the type so far.
#[derive(Clone, Copy)]
enum Shape {
    /// `event` not seen yet: read every documented field.
    Pending,
    Message,
    Lifecycle,
    /// An unknown type, or the envelope pass.
    Envelope,
}

enum Treatment {
    Strict,
    Lenient,
    Skip,
}

impl Shape {
    fn of(kind: Option<Kind>) -> Self {
        match kind {
            Some(Kind::MessageReceived) => Self::Message,
            Some(_) => Self::Lifecycle,
            None => Self::Envelope,
        }
    }

    fn treatment(self, field: Field) -> Treatment {
        use Field as F;
        match (self, field) {
            (_, F::Other) => Treatment::Skip,
            (Self::Pending, _) => Treatment::Strict,
            (
                Self::Message,
                F::EventId
                | F::OccurredAt
                | F::DeliveredAt
                | F::Attempt
                | F::InboxId
                | F::ThreadId
                | F::ExternalId
                | F::Message,
            )
            | (
                Self::Lifecycle,
                F::EventId | F::OccurredAt | F::InboxId | F::InboxAddress | F::PodId | F::Reason,
            ) => Treatment::Strict,
            (Self::Envelope, F::EventId | F::InboxId | F::OccurredAt) => Treatment::Lenient,
            _ => Treatment::Skip,
        }
    }
}

struct WireVisitor<'a> {
    pass: Pass,
    progress: &'a mut Progress,
}

impl<'de> Visitor<'de> for WireVisitor<'_> {
    type Value = Wire;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with a string `event` field")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire, A::Error> {
        let mut wire = Wire::default();
        let mut seen_event = false;
        let mut shape = match self.pass {
            Pass::Typed(None) => Shape::Pending,
            Pass::Typed(kind) => Shape::of(kind),
            Pass::Envelope => Shape::Envelope,
        };
        let progress = self.progress;
        while let Some(field) = map.next_key::<Field>()? {
            progress.field = (field != Field::Other).then(|| field.name());
            progress.before_event = matches!(shape, Shape::Pending);
            if field == Field::Event {
                if seen_event {
                    return Err(de::Error::duplicate_field("event"));
                }
                wire.event = map.next_value()?;
                wire.kind = Kind::of(&wire.event);
                seen_event = true;
                if self.pass != Pass::Envelope {
                    shape = Shape::of(wire.kind);
                }
            } else {
                match shape.treatment(field) {
                    Treatment::Skip => {
                        map.next_value::<IgnoredAny>()?;
                    }
                    Treatment::Lenient => lenient(&mut map, field, &mut wire)?,
                    Treatment::Strict => strict(&mut map, field, &mut wire)?,
                }
            }
            progress.field = None;
            progress.before_event = false;
        }
        if !seen_event {
            return Err(de::Error::missing_field("event"));
        }
        Ok(wire)
    }
}

/// Reads a field the event's type defines: it must fit, and appear once.
fn strict<'de, A: MapAccess<'de>>(
    map: &mut A,
    field: Field,
    wire: &mut Wire,
) -> Result<(), A::Error> {
    fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
        map: &mut A,
        slot: &mut Option<T>,
        name: &'static str,
    ) -> Result<(), A::Error> {
        if slot.is_some() {
            return Err(de::Error::duplicate_field(name));
        }
        *slot = map.next_value()?;
        Ok(())
    }
    let name = field.name();
    match field {
        Field::EventId => once(map, &mut wire.event_id, name),
        Field::OccurredAt => once(map, &mut wire.occurred_at, name),
        Field::DeliveredAt => once(map, &mut wire.delivered_at, name),
        Field::Attempt => once(map, &mut wire.attempt, name),
        Field::InboxId => once(map, &mut wire.inbox_id, name),
        Field::ThreadId => once(map, &mut wire.thread_id, name),
        Field::ExternalId => once(map, &mut wire.external_id, name),
        Field::Message => once(map, &mut wire.message, name),
        Field::InboxAddress => once(map, &mut wire.inbox_address, name),
        Field::PodId => once(map, &mut wire.pod_id, name),
        Field::Reason => once(map, &mut wire.reason, name),
        Field::Event | Field::Other => map.next_value::<IgnoredAny>().map(|_| ()),
    }
}

/// Reads an envelope field of an event that is not typed: kept when usable, else dropped.
fn lenient<'de, A: MapAccess<'de>>(
    map: &mut A,
    field: Field,
    wire: &mut Wire,
) -> Result<(), A::Error> {
    let LenientString(value) = map.next_value()?;
    match field {
        Field::EventId => wire.event_id = value.or(wire.event_id.take()),
        Field::InboxId => wire.inbox_id = value.or(wire.inbox_id.take()),
        Field::OccurredAt => {
            if let Some(timestamp) = value.and_then(|text| Timestamp::parse_owned(text).ok()) {
                wire.occurred_at = Some(timestamp);
            }
        }
        _ => {}
    }
    Ok(())
}

/// Any JSON value: a string is kept, anything else is read through and dropped.
struct LenientString(Option<String>);

impl<'de> Deserialize<'de> for LenientString {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor;

        impl<'de> Visitor<'de> for LenientVisitor {
            type Value = LenientString;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<LenientString, E> {
                Ok(LenientString(Some(value.to_owned())))
            }

            fn visit_string<E: de::Error>(self, value: String) -> Result<LenientString, E> {
                Ok(LenientString(Some(value)))
            }

            fn visit_bool<E: de::Error>(self, _: bool) -> Result<LenientString, E> {
                Ok(LenientString(None))
            }

            fn visit_i64<E: de::Error>(self, _: i64) -> Result<LenientString, E> {
                Ok(LenientString(None))
            }

            fn visit_u64<E: de::Error>(self, _: u64) -> Result<LenientString, E> {
                Ok(LenientString(None))
            }

            fn visit_f64<E: de::Error>(self, _: f64) -> Result<LenientString, E> {
                Ok(LenientString(None))
            }

            fn visit_unit<E: de::Error>(self) -> Result<LenientString, E> {
                Ok(LenientString(None))
            }

            fn visit_none<E: de::Error>(self) -> Result<LenientString, E> {
                Ok(LenientString(None))
            }

            fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<LenientString, D::Error> {
                inner.deserialize_any(self)
            }

            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<LenientString, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(LenientString(None))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LenientString, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(LenientString(None))
            }
        }

        deserializer.deserialize_any(LenientVisitor)
    }
}
