use std::collections::HashMap;
use std::future::ready;

use super::{ResolveFuture, SecretResolver, TenantRequest, TenantSecrets};
use crate::ConfigError;

/// A fixed map of per-inbox (and per-pod) secrets, with an optional account-wide fallback.
///
/// The tenant is the inbox the body names (its top-level `inbox_id`), or, with
/// [`route_by_path`](Self::route_by_path), the last segment of the URL path, as in
/// `/webhooks/{inbox_id}`. An event that names no known inbox resolves through its `pod_id`,
/// then through the account secrets. Either way the event is accepted only if the secret
/// that verifies it covers the inbox or pod the body names.
///
/// ```
/// use openmail_webhooks::tenant::InboxSecrets;
/// use openmail_webhooks::VerifyOpenMailLayer;
///
/// let secrets = InboxSecrets::new()
///     .inbox("inb_a", ["whsec_a"])?
///     .inbox("inb_b", ["whsec_b_new", "whsec_b_old"])? // rotating, for inbox b only
///     .account(["whsec_account"])?;                   // pod events, and inboxes without their own
/// let layer = VerifyOpenMailLayer::with_resolver(secrets);
/// # Ok::<(), openmail_webhooks::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct InboxSecrets {
    inboxes: HashMap<String, TenantSecrets>,
    pods: HashMap<String, TenantSecrets>,
    account: Option<TenantSecrets>,
    by_path: bool,
}

impl InboxSecrets {
    /// An empty map. Every delivery is refused until secrets are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the secrets of one inbox (several during its rotation), replacing earlier ones.
    pub fn inbox<I>(mut self, inbox_id: impl Into<String>, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let inbox_id = inbox_id.into();
        let secrets = TenantSecrets::inbox(inbox_id.clone(), secrets)?;
        self.inboxes.insert(inbox_id, secrets);
        Ok(self)
    }

    /// Sets the secrets that authenticate events of one pod, such as `pod.suspended`.
    pub fn pod<I>(mut self, pod_id: impl Into<String>, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let pod_id = pod_id.into();
        let secrets = TenantSecrets::pod(pod_id.clone(), secrets)?;
        self.pods.insert(pod_id, secrets);
        Ok(self)
    }

    /// Sets the account webhook's secrets: the fallback for events of inboxes and pods that
    /// have none of their own, and a second choice for those that do.
    pub fn account<I>(mut self, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        self.account = Some(TenantSecrets::account(secrets)?);
        Ok(self)
    }

    /// Takes the tenant from the last segment of the URL path instead of the body, for one
    /// webhook URL per inbox such as `/webhooks/inb_a`. The body must still name that inbox.
    pub fn route_by_path(mut self) -> Self {
        self.by_path = true;
        self
    }

    /// Parses `inb_a:secret_a,inb_b:secret_b`. An inbox listed twice gets both secrets, in
    /// order, for a rotation. Whitespace around entries and inbox ids is ignored; the secret
    /// is everything after the first `:`.
    pub fn parse(list: &str) -> Result<Self, ConfigError> {
        let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
        for (position, entry) in list.split(',').map(str::trim).enumerate() {
            let entry_number = position.saturating_add(1);
            if entry.is_empty() {
                continue;
            }
            let Some((inbox, secret)) = entry.split_once(':') else {
                return Err(ConfigError::InvalidSecretList {
                    entry: entry_number,
                    problem: "it has no ':' between the inbox id and the secret",
                });
            };
            let inbox = inbox.trim();
            if inbox.is_empty() {
                return Err(ConfigError::InvalidSecretList {
                    entry: entry_number,
                    problem: "its inbox id is empty",
                });
            }
            if secret.is_empty() {
                return Err(ConfigError::InvalidSecretList {
                    entry: entry_number,
                    problem: "its secret is empty",
                });
            }
            match grouped.iter_mut().find(|(known, _)| known == inbox) {
                Some((_, secrets)) => secrets.push(secret.to_owned()),
                None => grouped.push((inbox.to_owned(), vec![secret.to_owned()])),
            }
        }
        grouped
            .into_iter()
            .try_fold(Self::new(), |map, (inbox, secrets)| {
                map.inbox(inbox, secrets)
            })
    }

    /// How many inboxes have secrets of their own.
    pub fn inbox_count(&self) -> usize {
        self.inboxes.len()
    }

    /// The secrets for one delivery, own ones first, then the account's.
    fn lookup(&self, request: &TenantRequest<'_>) -> Option<TenantSecrets> {
        let inbox = if self.by_path {
            request.last_path_segment()
        } else {
            request.inbox_id()
        };
        let own = inbox
            .and_then(|inbox| self.inboxes.get(inbox))
            .or_else(|| request.pod_id().and_then(|pod| self.pods.get(pod)));
        match (own, &self.account) {
            (Some(own), Some(account)) => Some(own.clone().and(account.clone())),
            (Some(own), None) => Some(own.clone()),
            (None, account) => account.clone(),
        }
    }
}

impl SecretResolver for InboxSecrets {
    fn resolve(&self, request: &TenantRequest<'_>) -> ResolveFuture {
        Box::pin(ready(Ok(self.lookup(request))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_groups_rotations_and_reports_bad_entries_without_secrets() {
        let map = InboxSecrets::parse(" inb_a:s1 , inb_b:s:with:colons,inb_a:s2,").unwrap();
        assert_eq!(map.inbox_count(), 2);
        assert_eq!(map.inboxes["inb_a"].len(), 2);
        for (list, entry) in [
            ("inb_a:x,nocolon_secret", 2),
            ("inb_a:", 1),
            (":secret_value", 1),
        ] {
            let error = InboxSecrets::parse(list).unwrap_err();
            assert!(matches!(error, ConfigError::InvalidSecretList { entry: e, .. } if e == entry));
            let shown = error.to_string();
            assert!(
                !shown.contains("secret_value") && !shown.contains("nocolon"),
                "{shown}"
            );
        }
    }
}
