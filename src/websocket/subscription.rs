use serde::Serialize;

/// Which events the connection asks for: some inboxes, some event types, or everything.
///
/// An empty filter means "all", as in OpenMail's protocol, so [`Subscription::all`] (the
/// default) receives every event of the account.
///
/// ```
/// use openmail_webhooks::websocket::Subscription;
///
/// let support = Subscription::all()
///     .inbox_ids(["inb_support", "inb_sales"])
///     .event_types(["message.received"]);
/// assert_eq!(support.inbox_filter(), ["inb_support", "inb_sales"]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    inbox_ids: Vec<String>,
    event_types: Vec<String>,
}

impl Subscription {
    /// Every inbox and every event type of the account.
    pub fn all() -> Self {
        Self::default()
    }

    /// Adds inboxes to the filter. Subscribing to an inbox the account does not own is
    /// refused by the server, and the client stops with
    /// [`WebSocketError::SubscribeRefused`](super::WebSocketError::SubscribeRefused).
    pub fn inbox_ids<I, T>(mut self, inbox_ids: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.inbox_ids.extend(inbox_ids.into_iter().map(Into::into));
        self
    }

    /// Adds event types (such as `message.received`) to the filter.
    pub fn event_types<I, T>(mut self, event_types: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.event_types
            .extend(event_types.into_iter().map(Into::into));
        self
    }

    /// The inboxes asked for; empty means all.
    pub fn inbox_filter(&self) -> &[String] {
        &self.inbox_ids
    }

    /// The event types asked for; empty means all.
    pub fn event_type_filter(&self) -> &[String] {
        &self.event_types
    }

    /// The `subscribe` message, asking for a replay after `last_event_id` when given.
    pub(crate) fn message(&self, last_event_id: Option<&str>) -> String {
        #[derive(Serialize)]
        struct Subscribe<'a> {
            #[serde(rename = "type")]
            kind: &'static str,
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            inbox_ids: &'a [String],
            #[serde(skip_serializing_if = "<[String]>::is_empty")]
            event_types: &'a [String],
            #[serde(skip_serializing_if = "Option::is_none")]
            last_event_id: Option<&'a str>,
        }
        let message = Subscribe {
            kind: "subscribe",
            inbox_ids: &self.inbox_ids,
            event_types: &self.event_types,
            last_event_id,
        };
        // Serializing strings into a String cannot fail; an empty subscribe would still be
        // answered, by an error the client reports.
        serde_json::to_string(&message).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscribe_message_carries_only_what_is_set() {
        assert_eq!(Subscription::all().message(None), r#"{"type":"subscribe"}"#);
        let filtered = Subscription::all()
            .inbox_ids(["inb_a"])
            .event_types(vec!["message.received".to_owned()]);
        assert_eq!(
            filtered.message(Some("evt_9")),
            r#"{"type":"subscribe","inbox_ids":["inb_a"],"event_types":["message.received"],"last_event_id":"evt_9"}"#
        );
        let quoted = Subscription::all().message(Some("evt_\"x\n"));
        let parsed: serde_json::Value = serde_json::from_str(&quoted).unwrap();
        assert_eq!(parsed["last_event_id"], "evt_\"x\n");
    }
}
