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

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

use super::{Mailbox, Mailboxes, RawJson, Timestamp};

/// The `message.received` event.
///
/// Equality ignores [`raw`](Self::raw): two events are equal when they carry the same
/// fields, however the JSON was formatted.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct MessageReceived {
    /// The event's id, stable across retries: deduplicate on it.
    pub event_id: String,
    /// When the email arrived; use it to order events, which may arrive out of order.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub occurred_at: Option<Timestamp>,
    /// When this delivery attempt was sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_at: Option<Timestamp>,
    /// Which delivery attempt this is, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The inbox that received the email: route to the inbox's agent on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub inbox_id: Option<String>,
    /// The conversation thread, for the API's thread and reply calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread_id: Option<String>,
    /// The inbox's external id, in older payloads only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    /// The email. An absent `message` reads as an empty one.
    pub message: Message,
    #[serde(skip)]
    pub(super) raw: RawJson,
}

impl MessageReceived {
    /// The verified body, byte for byte.
    pub fn raw(&self) -> &Bytes {
        &self.raw.0
    }
}

impl PartialEq for MessageReceived {
    fn eq(&self, other: &Self) -> bool {
        let Self {
            event_id,
            occurred_at,
            delivered_at,
            attempt,
            inbox_id,
            thread_id,
            external_id,
            message,
            raw: _,
        } = self;
        *event_id == other.event_id
            && *occurred_at == other.occurred_at
            && *delivered_at == other.delivered_at
            && *attempt == other.attempt
            && *inbox_id == other.inbox_id
            && *thread_id == other.thread_id
            && *external_id == other.external_id
            && *message == other.message
    }
}

/// An inbound email.
///
/// ```
/// use openmail_webhooks::event::Message;
///
/// let message: Message = serde_json::from_str(r#"{
///     "from": "Ada Lovelace <ada@example.com>",
///     "to": "inbox@openmail.sh, \"Smith, Jane\" <jane@example.com>",
///     "attachments": [{"filename": "scan.png", "extractionMethod": "unsupported"}]
/// }"#)?;
///
/// let sender = message.sender().unwrap();
/// assert_eq!((sender.name(), sender.address()), (Some("Ada Lovelace"), "ada@example.com"));
/// let to: Vec<_> = message.to_mailboxes().map(|to| to.address()).collect();
/// assert_eq!(to, ["inbox@openmail.sh", "jane@example.com"]);
/// assert!(!message.attachments[0].text_extracted());
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Message {
    /// OpenMail's id for the message, such as `msg_4c8d5e6f`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The `Message-ID` header, angle brackets included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rfc_message_id: Option<String>,
    /// The sender, `Name <address>` or a bare address; see [`sender`](Self::sender).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The recipients as one comma-separated string; see
    /// [`to_mailboxes`](Self::to_mailboxes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The copied recipients, one mailbox per entry; empty when there are none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub cc: Vec<String>,
    /// The subject line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The plain-text body. OpenMail sends no HTML body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_text: Option<String>,
    /// The attachments, in order; empty when there are none.
    #[serde(default, deserialize_with = "null_as_empty")]
    pub attachments: Vec<Attachment>,
    /// When OpenMail received the email.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_at: Option<Timestamp>,
}

impl Message {
    /// The sender's address and display name, split out of `from`.
    pub fn sender(&self) -> Option<Mailbox<'_>> {
        self.from.as_deref().and_then(Mailbox::parse)
    }

    /// The mailboxes in `to`, which may list several, separated by commas.
    pub fn to_mailboxes(&self) -> Mailboxes<'_> {
        Mailboxes::new(self.to.as_deref().unwrap_or_default())
    }

    /// The mailboxes in `cc`, skipping entries without an address.
    pub fn cc_mailboxes(&self) -> impl Iterator<Item = Mailbox<'_>> {
        self.cc.iter().filter_map(|entry| Mailbox::parse(entry))
    }
}

/// One attachment. Its keys are camelCase on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct Attachment {
    /// The file name, as the sender gave it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filename: Option<String>,
    /// The MIME type, such as `application/pdf`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The size in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Where to download it. It needs the API key and redirects to a signed URL that
    /// expires after 15 minutes: fetch it promptly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The extracted text, at most 50,000 characters; absent when extraction failed, was
    /// skipped or is unsupported.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parsed_text: Option<String>,
    /// How the text was extracted, or why it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub extraction_method: Option<ExtractionMethod>,
}

impl Attachment {
    /// Whether OpenMail extracted text from the attachment: `parsedText` is present (it may
    /// still be empty, for a blank page).
    ///
    /// This looks at the text rather than at
    /// [`extraction_method`](Self::extraction_method), whose set of values is open: a
    /// method this crate does not know could mean success or failure.
    pub fn text_extracted(&self) -> bool {
        self.parsed_text.is_some()
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

/// Reads `null` like an absent field: an empty list.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<Vec<T>>::deserialize(deserializer).map(Option::unwrap_or_default)
}
