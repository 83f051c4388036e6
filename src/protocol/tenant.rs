//! Per-inbox secrets at the protocol level: which events a secret may authenticate, and the
//! check that a delivery's signature and the inbox it names agree.
//!
//! OpenMail signs an inbox's deliveries with that inbox's webhook secret when it has one,
//! and everything else (inboxes without their own webhook, pod events) with the account
//! webhook's secret. OpenMail has no pod-level secrets.

use std::fmt;

/// How many MACs every refused tenant delivery costs, whatever the tenant: a refusal that
/// tried fewer secrets computes the rest with a key no one holds. An unknown inbox, an
/// inbox with its own secret and the account's fallback, and one rotating its secret are
/// then refused in the same time. A tenant with more secrets than this takes longer to
/// refuse, which tells an attacker only that some inbox has many secrets.
pub const REFUSAL_MACS: usize = 4;

use super::verifier::SignedHead;
use super::{Claim, ConfigError, Secret, Verified, Verifier, VerifyError};
use crate::LogSafe;

/// Which events a secret may authenticate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SecretScope {
    /// Any event: the account webhook's secret (and, for events that arrive over the
    /// WebSocket, the account's API key).
    Account,
    /// Only events whose top-level `inbox_id` is this inbox.
    Inbox(String),
}

impl SecretScope {
    /// Whether a body whose top-level `inbox_id` is `inbox_id` is within this scope.
    pub fn covers(&self, inbox_id: Option<&str>) -> bool {
        match self {
            Self::Account => true,
            Self::Inbox(inbox) => inbox_id == Some(inbox.as_str()),
        }
    }
}

impl fmt::Display for SecretScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Account => f.write_str("the account"),
            Self::Inbox(inbox) => write!(f, "inbox {}", LogSafe::new(inbox)),
        }
    }
}

/// The secrets that may have signed one delivery, each with the scope it may authenticate.
///
/// Secrets are tried in order. List a tenant's new secret before its old one during a
/// rotation; [`Verified::secret_index`] says which matched.
#[derive(Debug, Clone)]
pub struct TenantSecrets {
    entries: Vec<(SecretScope, Secret)>,
}

impl TenantSecrets {
    /// Secrets that authenticate events naming `inbox_id` only.
    pub fn inbox<I>(inbox_id: impl Into<String>, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Self::scoped(SecretScope::Inbox(inbox_id.into()), secrets)
    }

    /// Account-wide secrets, which authenticate any event.
    pub fn account<I>(secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Self::scoped(SecretScope::Account, secrets)
    }

    /// Secrets that are already keyed, all with one scope. At least one is required.
    pub fn from_keyed(
        scope: SecretScope,
        secrets: impl IntoIterator<Item = Secret>,
    ) -> Result<Self, ConfigError> {
        let entries: Vec<_> = secrets
            .into_iter()
            .map(|secret| (scope.clone(), secret))
            .collect();
        if entries.is_empty() {
            return Err(ConfigError::NoSecrets);
        }
        Ok(Self { entries })
    }

    fn scoped<I>(scope: SecretScope, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let keyed = secrets
            .into_iter()
            .map(Secret::new)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_keyed(scope, keyed)
    }

    /// These secrets, then `other`'s: for example an inbox's own, then the account's.
    pub fn and(mut self, other: TenantSecrets) -> Self {
        self.entries.extend(other.entries);
        self
    }

    /// How many secrets there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always `false`: a `TenantSecrets` holds at least one secret.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The scopes, in order.
    pub fn scopes(&self) -> impl Iterator<Item = &SecretScope> {
        self.entries.iter().map(|(scope, _)| scope)
    }

    /// The signature check and the scope check, for the `inbox_id` of the claim already
    /// read from `body` (`None` when it names none or cannot be read, which only the
    /// account's secret covers). The one implementation behind
    /// [`Verifier::verify_tenant`] and the layer.
    pub(crate) fn check(
        &self,
        head: &SignedHead,
        timestamp: &[u8],
        body: &[u8],
        inbox_id: Option<&str>,
    ) -> Result<TenantVerified, VerifyError> {
        let secrets = self.entries.iter().map(|(_, secret)| secret);
        let Some(index) = head.find_match(secrets, timestamp, body) else {
            head.burn_macs(REFUSAL_MACS.saturating_sub(self.len()), timestamp, body);
            return Err(VerifyError::SignatureMismatch);
        };
        let scope = self
            .entries
            .get(index)
            .map(|(scope, _)| scope)
            .ok_or(VerifyError::SignatureMismatch)?;
        if !scope.covers(inbox_id) {
            let tried = index.saturating_add(1);
            head.burn_macs(REFUSAL_MACS.saturating_sub(tried), timestamp, body);
            return Err(VerifyError::TenantMismatch {
                scope: scope.clone(),
                inbox_id: inbox_id.map(str::to_owned),
            });
        }
        Ok(TenantVerified {
            verified: head.verified(index),
            scope: scope.clone(),
        })
    }
}

/// What a successful tenant check established: the signature, and the scope of the secret
/// that made it, which covers the inbox the body names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantVerified {
    verified: Verified,
    scope: SecretScope,
}

impl TenantVerified {
    /// The signature check's result; its secret index counts in the [`TenantSecrets`]'
    /// order.
    pub fn verified(&self) -> Verified {
        self.verified
    }

    /// The scope of the secret that matched.
    pub fn scope(&self) -> &SecretScope {
        &self.scope
    }

    pub(crate) fn into_parts(self) -> (Verified, SecretScope) {
        (self.verified, self.scope)
    }
}

impl Verifier {
    /// A verifier with no secrets of its own, for [`verify_tenant`](Self::verify_tenant):
    /// the default tolerance and the system clock. Its [`verify`](Self::verify) refuses
    /// every delivery.
    pub fn for_tenants() -> Self {
        Self::without_secrets()
    }

    /// Verifies a delivery for a multi-tenant receiver: the signature against `secrets`
    /// (looked up for the inbox the body claims, see [`Claim`]), then that the secret
    /// which matched covers the inbox the body names. Inbox A's secret never
    /// authenticates an event naming inbox B. A body whose claim cannot be read (not JSON,
    /// or naming its `inbox_id` twice) names no inbox it can be held to: only an account
    /// secret authenticates it.
    ///
    /// This verifier's tolerance and clock apply; its own secrets are not used.
    ///
    /// ```
    /// use openmail_webhooks::protocol::{Claim, TenantSecrets};
    /// use openmail_webhooks::{sign, Verifier, VerifyError};
    ///
    /// let verifier = Verifier::for_tenants().clock(|| 1_790_000_000);
    /// let body = br#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a"}"#;
    /// let claim = Claim::read(body)?;
    /// // Look up the claimed inbox's secrets, e.g. in a database:
    /// assert_eq!(claim.inbox_id(), Some("inb_a"));
    /// let secrets = TenantSecrets::inbox("inb_a", ["whsec_a"])?;
    ///
    /// let signature = sign("whsec_a", "1790000000", body);
    /// let verified = verifier.verify_tenant(&secrets, "1790000000", &signature, body)?;
    /// assert_eq!(verified.verified().timestamp(), 1_790_000_000);
    ///
    /// // Inbox b's secret does not speak for inbox a.
    /// let forged = sign("whsec_b", "1790000000", body);
    /// let b = TenantSecrets::inbox("inb_b", ["whsec_b"])?;
    /// assert!(matches!(
    ///     verifier.verify_tenant(&b, "1790000000", &forged, body),
    ///     Err(VerifyError::TenantMismatch { .. })
    /// ));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify_tenant(
        &self,
        secrets: &TenantSecrets,
        timestamp: impl AsRef<[u8]>,
        signature: impl AsRef<[u8]>,
        body: &[u8],
    ) -> Result<TenantVerified, VerifyError> {
        let timestamp = timestamp.as_ref();
        let head = self.check_head(timestamp, signature.as_ref())?;
        let claim = Claim::read(body).ok();
        let inbox_id = claim.as_ref().and_then(Claim::inbox_id);
        secrets.check(&head, timestamp, body, inbox_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign;

    const TS: &str = "1790000000";

    fn verifier() -> Verifier {
        Verifier::for_tenants().clock(|| 1_790_000_000)
    }

    #[test]
    fn an_inbox_secret_covers_only_its_inbox() {
        let secrets = TenantSecrets::inbox("inb_a", ["whsec_a"]).unwrap();
        for (body, ok) in [
            (&br#"{"event_id":"e","inbox_id":"inb_a"}"#[..], true),
            (br#"{"event_id":"e","inbox_id":"inb_b"}"#, false),
            (
                br#"{"event":"pod.suspended","inbox_id":null,"pod_id":"p"}"#,
                false,
            ),
            (br#"{"event_id":"e"}"#, false),
        ] {
            let signature = sign("whsec_a", TS, body);
            let result = verifier().verify_tenant(&secrets, TS, &signature, body);
            assert_eq!(result.is_ok(), ok, "{}", String::from_utf8_lossy(body));
            if !ok {
                assert!(matches!(result, Err(VerifyError::TenantMismatch { .. })));
            }
        }
    }

    #[test]
    fn the_account_secret_covers_every_inbox_and_reports_which_matched() {
        let secrets = TenantSecrets::inbox("inb_a", ["whsec_a"])
            .unwrap()
            .and(TenantSecrets::account(["whsec_account"]).unwrap());
        let body = br#"{"event_id":"e","inbox_id":"inb_z","pod_id":"p"}"#;
        let signature = sign("whsec_account", TS, body);
        let verified = verifier()
            .verify_tenant(&secrets, TS, &signature, body)
            .unwrap();
        assert_eq!(verified.scope(), &SecretScope::Account);
        assert_eq!(verified.verified().secret_index(), 1);
    }

    #[test]
    fn a_wrong_signature_is_refused_and_an_unreadable_claim_is_the_accounts_alone() {
        let account = TenantSecrets::account(["whsec_account"]).unwrap();
        let body = br#"{"event_id":"e","inbox_id":"inb_a"}"#;
        let wrong = sign("whsec_other", TS, body);
        assert_eq!(
            verifier().verify_tenant(&account, TS, &wrong, body),
            Err(VerifyError::SignatureMismatch)
        );
        let inbox = TenantSecrets::inbox("inb_a", ["whsec_a"]).unwrap();
        for unreadable in [
            &br#"{"inbox_id":"inb_a","inbox_id":"inb_b"}"#[..],
            b"not json",
        ] {
            let signature = sign("whsec_account", TS, unreadable);
            let verified = verifier()
                .verify_tenant(&account, TS, &signature, unreadable)
                .unwrap();
            assert_eq!(verified.scope(), &SecretScope::Account);
            let signature = sign("whsec_a", TS, unreadable);
            assert_eq!(
                verifier().verify_tenant(&inbox, TS, &signature, unreadable),
                Err(VerifyError::TenantMismatch {
                    scope: SecretScope::Inbox("inb_a".into()),
                    inbox_id: None
                })
            );
        }
    }

    #[test]
    fn a_verifier_for_tenants_verifies_nothing_on_its_own() {
        let body = br#"{}"#;
        let signature = sign("anything", TS, body);
        assert_eq!(
            verifier().verify(TS, &signature, body),
            Err(VerifyError::SignatureMismatch)
        );
    }
}
