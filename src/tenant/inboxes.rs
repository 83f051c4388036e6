use std::collections::HashMap;
use std::fmt;
use std::future::{Future, ready};
use std::pin::Pin;

use tower::BoxError;

use super::{SecretResolver, Tenant, TenantRequest, TenantSecrets};
use crate::ConfigError;

/// A fixed map of per-inbox secrets, with an optional account-wide fallback.
///
/// The tenant is the inbox the body names (its top-level `inbox_id`), or, with
/// [`route_by_path`](Self::route_by_path), the last segment of the URL path, as in
/// `/webhooks/{inbox_id}`. An inbox with secrets of its own is checked against those, then
/// the account's; every other event (pod events, inboxes without a webhook of their own)
/// against the account's. Either way the event is accepted only if the secret that
/// verifies it covers the inbox the body names.
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
    account: Option<TenantSecrets>,
    by_path: bool,
}

/// Why a list such as `inb_a:secret_a,inb_b:secret_b` cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretListError {
    /// An entry is not `inbox_id:secret`.
    Malformed {
        /// The 1-based position of the entry.
        entry: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// An entry's secret cannot be used; [`source`](std::error::Error::source) says why.
    Secret {
        /// The 1-based position of the entry.
        entry: usize,
        /// Why the secret was refused.
        error: ConfigError,
    },
}

impl fmt::Display for SecretListError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed { entry, problem } => write!(
                f,
                "entry {entry} of the secret list cannot be read: {problem}; \
                 expected inbox_id:secret entries separated by commas"
            ),
            Self::Secret { entry, .. } => {
                write!(
                    f,
                    "entry {entry} of the secret list has a secret that cannot be used"
                )
            }
        }
    }
}

impl std::error::Error for SecretListError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Malformed { .. } => None,
            Self::Secret { error, .. } => Some(error),
        }
    }
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
        let secrets = TenantSecrets::for_inbox(inbox_id.clone(), secrets)?;
        self.inboxes.insert(inbox_id, secrets);
        Ok(self)
    }

    /// Sets the account webhook's secrets: the fallback for events of inboxes that have
    /// none of their own and for pod events, and a second choice for inboxes that do.
    pub fn account<I>(mut self, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        self.account = Some(TenantSecrets::for_account(secrets)?);
        Ok(self)
    }

    /// Takes the tenant from the last segment of the URL path instead of the body, for one
    /// webhook URL per inbox such as `/webhooks/inb_a`. The body must still name that inbox,
    /// unless the account's secret signed it.
    pub fn route_by_path(mut self) -> Self {
        self.by_path = true;
        self
    }

    /// Parses `inb_a:secret_a,inb_b:secret_b`. An inbox listed twice gets both secrets, in
    /// order, for a rotation. Whitespace around entries and inbox ids is ignored; the secret
    /// is everything after the first `:`, and one that starts or ends with whitespace is
    /// refused.
    pub fn parse(list: &str) -> Result<Self, SecretListError> {
        let mut grouped: Vec<(usize, String, Vec<String>)> = Vec::new();
        for (position, raw) in list.split(',').enumerate() {
            let entry = position.saturating_add(1);
            let trimmed = raw.trim_start();
            if trimmed.trim_end().is_empty() {
                continue;
            }
            let malformed = |problem| SecretListError::Malformed { entry, problem };
            let Some((inbox, secret)) = trimmed.split_once(':') else {
                return Err(malformed(
                    "it has no ':' between the inbox id and the secret",
                ));
            };
            let inbox = inbox.trim();
            if inbox.is_empty() {
                return Err(malformed("its inbox id is empty"));
            }
            match grouped.iter_mut().find(|(_, known, _)| known == inbox) {
                Some((_, _, secrets)) => secrets.push(secret.to_owned()),
                None => grouped.push((entry, inbox.to_owned(), vec![secret.to_owned()])),
            }
        }
        grouped
            .into_iter()
            .try_fold(Self::new(), |map, (entry, inbox, secrets)| {
                map.inbox(inbox, secrets)
                    .map_err(|error| SecretListError::Secret { entry, error })
            })
    }

    /// How many inboxes have secrets of their own.
    pub fn inbox_count(&self) -> usize {
        self.inboxes.len()
    }

    /// The secrets for one tenant: its own first, then the account's.
    fn secrets_of(&self, tenant: &Tenant) -> Option<TenantSecrets> {
        let own = match tenant {
            Tenant::Inbox(inbox) => self.inboxes.get(inbox),
            Tenant::Account => None,
        };
        match (own, &self.account) {
            (Some(own), Some(account)) => Some(own.clone().and(account.clone())),
            (Some(own), None) => Some(own.clone()),
            (None, account) => account.clone(),
        }
    }
}

impl SecretResolver for InboxSecrets {
    fn route(&self, request: &TenantRequest<'_>) -> Tenant {
        let inbox = if self.by_path {
            request.last_path_segment()
        } else {
            request.inbox_id()
        };
        match inbox {
            Some(inbox) => Tenant::Inbox(inbox.to_owned()),
            None => Tenant::Account,
        }
    }

    fn lookup(
        &self,
        tenant: &Tenant,
    ) -> Pin<Box<dyn Future<Output = Result<Option<TenantSecrets>, BoxError>> + Send>> {
        Box::pin(ready(Ok(self.secrets_of(tenant))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::Tenant;

    #[test]
    fn parse_groups_rotations_and_reports_bad_entries_without_secrets() {
        let map = InboxSecrets::parse(" inb_a:s1 , inb_b:s:with:colons,inb_a:s2,").unwrap_err();
        // " s1 " keeps its trailing space: a secret is taken as written, and refused.
        assert!(matches!(map, SecretListError::Secret { entry: 1, .. }));
        let map = InboxSecrets::parse("inb_a:s1, inb_b:s:with:colons,inb_a:s2").unwrap();
        assert_eq!(map.inbox_count(), 2);
        assert_eq!(map.inboxes["inb_a"].len(), 2);
        for (list, entry) in [
            ("inb_a:x,nocolon_secret", 2),
            ("inb_a:", 1),
            (":secret_value", 1),
            ("inb_a:secret_value ,inb_b:y", 1),
            ("inb_a:x,inb_b:secret_value\n", 2),
        ] {
            let error = InboxSecrets::parse(list).unwrap_err();
            let found = match &error {
                SecretListError::Malformed { entry, .. }
                | SecretListError::Secret { entry, .. } => *entry,
            };
            assert_eq!(found, entry, "{list}");
            let shown = error.to_string();
            assert!(
                !shown.contains("secret_value") && !shown.contains("nocolon"),
                "{shown}"
            );
        }
    }

    #[test]
    fn an_inbox_gets_its_own_secrets_then_the_accounts_and_others_only_the_accounts() {
        let map = InboxSecrets::new()
            .inbox("inb_a", ["whsec_a"])
            .unwrap()
            .account(["whsec_account"])
            .unwrap();
        let scopes = |tenant: &Tenant| -> Vec<Tenant> {
            map.secrets_of(tenant)
                .map(|secrets| secrets.scopes().cloned().collect())
                .unwrap_or_default()
        };
        assert_eq!(
            scopes(&Tenant::Inbox("inb_a".into())),
            [Tenant::Inbox("inb_a".into()), Tenant::Account]
        );
        assert_eq!(scopes(&Tenant::Inbox("inb_b".into())), [Tenant::Account]);
        assert_eq!(scopes(&Tenant::Account), [Tenant::Account]);
        let without_account = InboxSecrets::new().inbox("inb_a", ["whsec_a"]).unwrap();
        assert!(without_account.secrets_of(&Tenant::Account).is_none());
    }
}
