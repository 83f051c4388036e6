//! The secrets that may have signed one delivery, and the check that a delivery's signature
//! and the inbox it names agree.
//!
//! OpenMail signs an inbox's deliveries with that inbox's webhook secret when it has one,
//! and everything else (inboxes without their own webhook, pod events) with the account
//! webhook's secret. OpenMail has no pod-level secrets.

use std::fmt;
use std::time::Duration;

use http::HeaderMap;

use super::Tenant;
use crate::protocol::{Claim, Freshness, Secret, SignedHead, Verified, signed_headers};
use crate::{ConfigError, VerifyError};

/// How many MACs every refused tenant delivery costs, whatever the tenant: a refusal that
/// tried fewer secrets computes the rest with a key no one holds. An unknown inbox, an
/// inbox with its own secret and the account's fallback, and one rotating its secret are
/// then refused in the same time. A tenant with more secrets than this takes longer to
/// refuse, which tells an attacker only that some inbox has many secrets.
pub(crate) const REFUSAL_MACS: usize = 4;

/// The secrets that may have signed one delivery, each with the [`Tenant`] it belongs to,
/// which is what it may authenticate: an inbox's secret only events naming that inbox, the
/// account's any event.
///
/// Secrets are tried in order. List a tenant's new secret before its old one during a
/// rotation; [`Verified::secret_index`] says which matched.
#[derive(Debug, Clone)]
pub struct TenantSecrets {
    entries: Vec<(Tenant, Secret)>,
}

impl TenantSecrets {
    /// Secrets of the inbox `inbox_id`, which authenticate events naming that inbox only.
    pub fn for_inbox<I>(inbox_id: impl Into<String>, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Self::scoped(Tenant::Inbox(inbox_id.into()), secrets)
    }

    /// Secrets of the account, which authenticate any event.
    pub fn for_account<I>(secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        Self::scoped(Tenant::Account, secrets)
    }

    /// Secrets that are already keyed, all of one tenant. At least one is required.
    pub fn from_keyed(
        tenant: Tenant,
        secrets: impl IntoIterator<Item = Secret>,
    ) -> Result<Self, ConfigError> {
        let entries: Vec<_> = secrets
            .into_iter()
            .map(|secret| (tenant.clone(), secret))
            .collect();
        if entries.is_empty() {
            return Err(ConfigError::NoSecrets);
        }
        Ok(Self { entries })
    }

    fn scoped<I>(tenant: Tenant, secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let keyed = secrets
            .into_iter()
            .map(Secret::new)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_keyed(tenant, keyed)
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

    /// The tenant each secret belongs to, in order: the `n`th is the scope of the secret
    /// whose [`Verified::secret_index`] is `n`.
    pub fn scopes(&self) -> impl Iterator<Item = &Tenant> {
        self.entries.iter().map(|(tenant, _)| tenant)
    }

    /// The signature check and the scope check, for the `inbox_id` of the claim already
    /// read from `body` (`None` when it names none or cannot be read, which only the
    /// account's secret covers). The one implementation behind [`TenantVerifier::verify`]
    /// and the layer; the tenant is the one whose secret matched.
    pub(crate) fn check(
        &self,
        head: &SignedHead,
        timestamp: &[u8],
        body: &[u8],
        inbox_id: Option<&str>,
    ) -> Result<(Verified, Tenant), VerifyError> {
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
        Ok((head.verified(index), scope.clone()))
    }
}

/// The tenant check without tower, for a multi-tenant receiver that runs on its own (a
/// serverless function, another HTTP stack): the signature against the secrets looked up
/// for the delivery's tenant, then that the secret which matched covers the inbox the body
/// names. The layer with [`with_resolver`](crate::VerifyOpenMailLayer::with_resolver) runs
/// the same check.
///
/// Inbox A's secret never authenticates an event naming inbox B. A body whose claim cannot
/// be read (not JSON, or naming its `inbox_id` twice) names no inbox it can be held to:
/// only an account secret authenticates it.
///
/// Cheap to clone: the clock sits behind an `Arc`.
///
/// ```
/// use openmail_webhooks::tenant::{Tenant, TenantSecrets, TenantVerifier};
/// use openmail_webhooks::{sign, VerifyError};
///
/// let verifier = TenantVerifier::new().clock(|| 1_790_000_000);
/// let body = br#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a"}"#;
/// // Look up the claimed inbox's secrets, e.g. in a database:
/// assert_eq!(Tenant::claimed_by(body), Tenant::Inbox("inb_a".into()));
/// let secrets = TenantSecrets::for_inbox("inb_a", ["whsec_a"])?;
///
/// let signature = sign("whsec_a", "1790000000", body);
/// let verified = verifier.verify(&secrets, "1790000000", &signature, body)?;
/// assert_eq!(verified.timestamp(), 1_790_000_000);
///
/// // Inbox b's secret does not speak for inbox a.
/// let forged = sign("whsec_b", "1790000000", body);
/// let b = TenantSecrets::for_inbox("inb_b", ["whsec_b"])?;
/// assert!(matches!(
///     verifier.verify(&b, "1790000000", &forged, body),
///     Err(VerifyError::TenantMismatch { .. })
/// ));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct TenantVerifier {
    freshness: Freshness,
}

impl TenantVerifier {
    /// A verifier with the default tolerance (300 s, OpenMail's replay window) and the
    /// system clock.
    pub fn new() -> Self {
        Self::default()
    }

    /// How far `X-Timestamp` may be from now, in either direction. Whole seconds count;
    /// the boundary itself is accepted. 300 s unless set.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.freshness.tolerance(tolerance);
        self
    }

    /// Where "now" comes from, in Unix seconds; the system clock unless set.
    pub fn clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.freshness.clock(clock);
        self
    }

    /// Verifies one delivery from the raw `X-Timestamp` and `X-Signature` values and the
    /// body exactly as received, against `secrets` (looked up for
    /// [`Tenant::claimed_by`] the body, or however the receiver routes). Its
    /// [`secret_index`](Verified::secret_index) counts in `secrets`' order, so
    /// [`TenantSecrets::scopes`] says whose secret matched.
    pub fn verify(
        &self,
        secrets: &TenantSecrets,
        timestamp: impl AsRef<[u8]>,
        signature: impl AsRef<[u8]>,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        let timestamp = timestamp.as_ref();
        let head = self.freshness.check_head(timestamp, signature.as_ref())?;
        let claim = Claim::read(body).ok();
        let inbox_id = claim.as_ref().and_then(|claim| claim.inbox_id(body));
        secrets
            .check(&head, timestamp, body, inbox_id)
            .map(|(verified, _)| verified)
    }

    /// Verifies one delivery from its headers and body, as [`verify`](Self::verify) does.
    /// A missing or repeated `X-Timestamp` or `X-Signature` is an error.
    pub fn verify_headers(
        &self,
        secrets: &TenantSecrets,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        let (timestamp, signature) = signed_headers(headers)?;
        self.verify(secrets, timestamp, signature, body)
    }
}

impl fmt::Debug for TenantVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantVerifier").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign;

    const TS: &str = "1790000000";

    fn verifier() -> TenantVerifier {
        TenantVerifier::new().clock(|| 1_790_000_000)
    }

    #[test]
    fn an_inbox_secret_covers_only_its_inbox() {
        let secrets = TenantSecrets::for_inbox("inb_a", ["whsec_a"]).unwrap();
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
            let result = verifier().verify(&secrets, TS, &signature, body);
            assert_eq!(result.is_ok(), ok, "{}", String::from_utf8_lossy(body));
            if !ok {
                assert!(matches!(result, Err(VerifyError::TenantMismatch { .. })));
            }
        }
    }

    #[test]
    fn the_account_secret_covers_every_inbox_and_reports_which_matched() {
        let secrets = TenantSecrets::for_inbox("inb_a", ["whsec_a"])
            .unwrap()
            .and(TenantSecrets::for_account(["whsec_account"]).unwrap());
        let body = br#"{"event_id":"e","inbox_id":"inb_z","pod_id":"p"}"#;
        let signature = sign("whsec_account", TS, body);
        let verified = verifier().verify(&secrets, TS, &signature, body).unwrap();
        assert_eq!(
            secrets.scopes().nth(verified.secret_index()),
            Some(&Tenant::Account)
        );
        assert_eq!(verified.secret_index(), 1);
    }

    #[test]
    fn a_wrong_signature_is_refused_and_an_unreadable_claim_is_the_accounts_alone() {
        let account = TenantSecrets::for_account(["whsec_account"]).unwrap();
        let body = br#"{"event_id":"e","inbox_id":"inb_a"}"#;
        let wrong = sign("whsec_other", TS, body);
        assert_eq!(
            verifier().verify(&account, TS, &wrong, body),
            Err(VerifyError::SignatureMismatch)
        );
        let inbox = TenantSecrets::for_inbox("inb_a", ["whsec_a"]).unwrap();
        for unreadable in [
            &br#"{"inbox_id":"inb_a","inbox_id":"inb_b"}"#[..],
            b"not json",
        ] {
            let signature = sign("whsec_account", TS, unreadable);
            let verified = verifier()
                .verify(&account, TS, &signature, unreadable)
                .unwrap();
            assert_eq!(verified.secret_index(), 0);
            let signature = sign("whsec_a", TS, unreadable);
            assert_eq!(
                verifier().verify(&inbox, TS, &signature, unreadable),
                Err(VerifyError::TenantMismatch {
                    scope: Tenant::Inbox("inb_a".into()),
                    inbox_id: None
                })
            );
        }
    }
}
