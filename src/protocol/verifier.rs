use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::Mac;
use http::HeaderMap;
use subtle::ConstantTimeEq;

use super::secret::{HmacSha256, start_message};
use super::timestamp::{check_freshness, parse_timestamp};
use super::{
    Clock, ConfigError, SIGNATURE_HEADER, Secret, SystemClock, TIMESTAMP_HEADER, VerifyError,
    decode_signature,
};

/// OpenMail's replay window: deliveries more than 300 s from now, either way, are refused.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Checks OpenMail signatures against one or more secrets.
///
/// Cheap to clone: the keyed secrets and the clock sit behind `Arc`s.
///
/// # Secret rotation
///
/// Rotating a secret in OpenMail invalidates the old one at once, and OpenMail never signs
/// with two secrets. A receiver whose own configuration lags can list both; the check
/// reports which one matched ([`Verified::secret_index`]), so the application sees when the
/// old one stops being used. The secret that matched last is tried first, so during a
/// rotation each delivery still costs one MAC in the common case.
#[derive(Clone)]
pub struct Verifier {
    ring: Arc<SecretRing>,
    freshness: Freshness,
}

/// A fixed list of secrets, and which of them matched last.
pub(crate) struct SecretRing {
    secrets: Box<[Secret]>,
    last_matched: AtomicUsize,
}

/// The replay window: the tolerance and the clock it is measured against.
#[derive(Clone)]
pub(crate) struct Freshness {
    tolerance: u64,
    clock: Arc<dyn Clock>,
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            tolerance: DEFAULT_TOLERANCE.as_secs(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl Freshness {
    pub(crate) fn tolerance(&mut self, tolerance: Duration) {
        self.tolerance = tolerance.as_secs();
    }

    pub(crate) fn clock(&mut self, clock: impl Clock) {
        self.clock = Arc::new(clock);
    }

    /// Everything that needs no secret and no body: the timestamp's form, the signature's
    /// form, then the replay window.
    pub(crate) fn check_head(
        &self,
        timestamp: &[u8],
        signature: &[u8],
    ) -> Result<SignedHead, VerifyError> {
        let parsed = parse_timestamp(timestamp)?;
        let expected = decode_signature(signature)?;
        check_freshness(parsed, self.clock.now(), self.tolerance)?;
        Ok(SignedHead {
            timestamp: parsed,
            expected,
        })
    }
}

/// What the request head claims: a fresh timestamp and the MAC it was signed with.
#[derive(Clone, Copy)]
pub(crate) struct SignedHead {
    timestamp: i64,
    expected: [u8; 32],
}

impl SignedHead {
    /// Tries `secrets` in order over the whole message and returns the index of the first
    /// that matches.
    pub(crate) fn find_match<'a>(
        &self,
        secrets: impl IntoIterator<Item = &'a Secret>,
        timestamp: &[u8],
        body: &[u8],
    ) -> Option<usize> {
        secrets.into_iter().position(|secret| {
            let mut mac = secret.mac();
            start_message(&mut mac, timestamp);
            mac.update(body);
            matches(mac, &self.expected)
        })
    }

    /// Runs `count` MACs over the message with a key no one holds, and discards them: the
    /// work wrong signatures cost, for refusals that must not be told apart by timing.
    pub(crate) fn burn_macs(&self, count: usize, timestamp: &[u8], body: &[u8]) {
        static UNUSED: std::sync::OnceLock<Secret> = std::sync::OnceLock::new();
        let secret = UNUSED.get_or_init(|| {
            // A fixed key: its value does not matter, only that a MAC is computed.
            Secret::from_mac(super::secret::keyed_mac(
                b"openmail-webhooks: no such tenant",
            ))
        });
        for _ in 0..count {
            let _ = std::hint::black_box(self.find_match([secret], timestamp, body));
        }
    }

    /// The verified result once secret `secret_index` matched.
    pub(crate) fn verified(&self, secret_index: usize) -> Verified {
        Verified {
            timestamp: self.timestamp,
            secret_index,
        }
    }
}

impl SecretRing {
    /// How many secrets there are.
    pub(crate) fn len(&self) -> usize {
        self.secrets.len()
    }

    /// Checks the signature over the whole message against these secrets, the one that
    /// matched last first, so that a rotation costs one MAC per delivery in the common
    /// case.
    pub(crate) fn check(
        &self,
        head: &SignedHead,
        timestamp: &[u8],
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        let preferred = self.last_matched.load(Ordering::Relaxed);
        let order = self
            .secrets
            .get(preferred)
            .map(|secret| (preferred, secret))
            .into_iter()
            .chain(
                self.secrets
                    .iter()
                    .enumerate()
                    .filter(|(index, _)| *index != preferred),
            );
        for (index, secret) in order {
            if head.find_match([secret], timestamp, body).is_some() {
                if index != preferred {
                    self.last_matched.store(index, Ordering::Relaxed);
                }
                return Ok(head.verified(index));
            }
        }
        Err(VerifyError::SignatureMismatch)
    }
}

impl Verifier {
    /// A verifier for one secret, with the default tolerance and the system clock.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Self::with_secrets([secret])
    }

    /// A verifier that accepts any of `secrets`, tried in order. Indices in
    /// [`Verified::secret_index`] refer to this order.
    pub fn with_secrets<I>(secrets: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator,
        I::Item: AsRef<[u8]>,
    {
        let secrets = secrets
            .into_iter()
            .map(Secret::new)
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_keyed(secrets)
    }

    /// A verifier over secrets that are already keyed.
    pub fn from_keyed(secrets: impl IntoIterator<Item = Secret>) -> Result<Self, ConfigError> {
        let secrets: Box<[Secret]> = secrets.into_iter().collect();
        if secrets.is_empty() {
            return Err(ConfigError::NoSecrets);
        }
        Ok(Self::from_ring(secrets))
    }

    fn from_ring(secrets: Box<[Secret]>) -> Self {
        Self {
            ring: Arc::new(SecretRing {
                secrets,
                last_matched: AtomicUsize::new(0),
            }),
            freshness: Freshness::default(),
        }
    }

    /// The header checks alone: the timestamp's and the signature's form, then the replay
    /// window.
    pub(crate) fn check_head(
        &self,
        timestamp: &[u8],
        signature: &[u8],
    ) -> Result<SignedHead, VerifyError> {
        self.freshness.check_head(timestamp, signature)
    }

    /// How far `X-Timestamp` may be from now, in either direction. Whole seconds count;
    /// the boundary itself is accepted. 300 s unless set: OpenMail's replay window.
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.freshness.tolerance(tolerance);
        self
    }

    /// Where "now" comes from, in whole seconds since the Unix epoch; the system clock
    /// unless set. Tests pin time with a closure:
    ///
    /// ```
    /// use openmail_webhooks::Verifier;
    ///
    /// let verifier = Verifier::new("whsec_test")?.clock(|| 1_790_000_000);
    /// assert_eq!(verifier.now(), 1_790_000_000);
    /// # Ok::<(), openmail_webhooks::ConfigError>(())
    /// ```
    pub fn clock(mut self, clock: impl Fn() -> i64 + Send + Sync + 'static) -> Self {
        self.freshness.clock(clock);
        self
    }

    /// The configured tolerance.
    pub fn configured_tolerance(&self) -> Duration {
        Duration::from_secs(self.freshness.tolerance)
    }

    /// How many secrets are accepted.
    pub fn secret_count(&self) -> usize {
        self.ring.secrets.len()
    }

    /// The current time according to the configured clock.
    pub fn now(&self) -> i64 {
        self.freshness.clock.now()
    }

    /// Verifies one delivery from the raw `X-Timestamp` and `X-Signature` values and the
    /// body exactly as received.
    ///
    /// Checks run cheapest first: the timestamp's form, the signature's form, the replay
    /// window, and only then the MAC, compared in constant time.
    pub fn verify(
        &self,
        timestamp: impl AsRef<[u8]>,
        signature: impl AsRef<[u8]>,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        let timestamp = timestamp.as_ref();
        let head = self.check_head(timestamp, signature.as_ref())?;
        self.ring.check(&head, timestamp, body)
    }

    /// Verifies one delivery from its headers and body. A missing or repeated
    /// `X-Timestamp` or `X-Signature` is an error.
    pub fn verify_headers(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        let (timestamp, signature) = signed_headers(headers)?;
        self.verify(timestamp, signature, body)
    }

    /// The parts the layer keeps: the secrets and the replay window.
    pub(crate) fn into_parts(self) -> (Arc<SecretRing>, Freshness) {
        (self.ring, self.freshness)
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.ring.secrets.len())
            .field("tolerance", &self.configured_tolerance())
            .finish_non_exhaustive()
    }
}

/// Reads `X-Timestamp` and `X-Signature`, each of which must appear exactly once.
pub(crate) fn signed_headers(headers: &HeaderMap) -> Result<(&[u8], &[u8]), VerifyError> {
    Ok((
        single_header(headers, TIMESTAMP_HEADER)?,
        single_header(headers, SIGNATURE_HEADER)?,
    ))
}

fn single_header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a [u8], VerifyError> {
    let mut values = headers.get_all(name).iter();
    let first = values.next().ok_or(VerifyError::MissingHeader { name })?;
    if values.next().is_some() {
        return Err(VerifyError::DuplicateHeader { name });
    }
    Ok(first.as_bytes())
}

fn matches(mac: HmacSha256, expected: &[u8; 32]) -> bool {
    // Compared as four 64-bit words: still constant time, with a quarter of the
    // optimisation barriers `subtle` puts around each element.
    let words = |bytes: &[u8]| -> [u64; 4] {
        let mut words = [0u64; 4];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut le = [0u8; 8];
            le.copy_from_slice(chunk);
            *word = u64::from_le_bytes(le);
        }
        words
    };
    let computed = mac.finalize().into_bytes();
    words(computed.as_slice())
        .ct_eq(&words(expected.as_slice()))
        .into()
}

/// What a successful check established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verified {
    timestamp: i64,
    secret_index: usize,
}

impl Verified {
    /// What a check established earlier, as a store kept it.
    // Only the stores build one.
    #[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
    pub(crate) fn new(timestamp: i64, secret_index: usize) -> Self {
        Self {
            timestamp,
            secret_index,
        }
    }

    /// `X-Timestamp`, in Unix seconds.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// The index of the secret that matched, in the order the secrets were configured.
    pub fn secret_index(&self) -> usize {
        self.secret_index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign;

    const NOW: i64 = 1_790_000_000;
    const BODY: &[u8] = br#"{"event":"message.received","event_id":"evt_1"}"#;

    fn verifier() -> Verifier {
        Verifier::new("whsec_test").unwrap().clock(|| NOW)
    }

    #[test]
    fn a_genuine_delivery_verifies() {
        let signature = sign("whsec_test", "1790000000", BODY);
        let verified = verifier().verify("1790000000", &signature, BODY).unwrap();
        assert_eq!(verified.timestamp(), NOW);
        assert_eq!(verified.secret_index(), 0);
    }

    #[test]
    fn uppercase_hex_verifies() {
        let signature = sign("whsec_test", "1790000000", BODY).to_ascii_uppercase();
        assert!(verifier().verify("1790000000", &signature, BODY).is_ok());
    }

    #[test]
    fn the_timestamp_is_signed_exactly_as_received() {
        let signature = sign("whsec_test", "01790000000", BODY);
        assert!(verifier().verify("01790000000", &signature, BODY).is_ok());
        assert_eq!(
            verifier().verify("1790000000", &signature, BODY),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn error_table() {
        let good = sign("whsec_test", "1790000000", BODY);
        let stale = sign("whsec_test", "1789999699", BODY);
        let cases: Vec<(&str, &str, &[u8], VerifyError)> = vec![
            ("1790000000", &good, b"{}", VerifyError::SignatureMismatch),
            ("1790000001", &good, BODY, VerifyError::SignatureMismatch),
            ("abc", &good, BODY, VerifyError::TimestampMalformed),
            ("", &good, BODY, VerifyError::TimestampMalformed),
            (
                "99999999999999999999",
                &good,
                BODY,
                VerifyError::TimestampOutOfRange,
            ),
            (
                "1789999699",
                &stale,
                BODY,
                VerifyError::TimestampOutsideTolerance {
                    offset: 301,
                    tolerance: 300,
                },
            ),
            (
                "1790000000",
                &good[..63],
                BODY,
                VerifyError::SignatureMalformed {
                    length: 63,
                    invalid_at: None,
                },
            ),
        ];
        for (timestamp, signature, body, expected) in cases {
            assert_eq!(
                verifier().verify(timestamp, signature, body),
                Err(expected),
                "{timestamp} {signature}"
            );
        }
    }

    #[test]
    fn rotation_reports_which_secret_matched() {
        let verifier = Verifier::with_secrets(["whsec_new", "whsec_old"])
            .unwrap()
            .clock(|| NOW);
        let old = sign("whsec_old", "1790000000", BODY);
        let new = sign("whsec_new", "1790000000", BODY);
        let other = sign("whsec_other", "1790000000", BODY);
        assert_eq!(
            verifier
                .verify("1790000000", &old, BODY)
                .unwrap()
                .secret_index(),
            1
        );
        // The old secret is now tried first; the new one must still be found.
        assert_eq!(
            verifier
                .verify("1790000000", &new, BODY)
                .unwrap()
                .secret_index(),
            0
        );
        assert_eq!(
            verifier
                .verify("1790000000", &old, BODY)
                .unwrap()
                .secret_index(),
            1
        );
        assert_eq!(
            verifier.verify("1790000000", &other, BODY),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn no_secrets_and_empty_secrets_are_configuration_errors() {
        assert_eq!(
            Verifier::with_secrets(Vec::<String>::new()).unwrap_err(),
            ConfigError::NoSecrets
        );
        assert_eq!(
            Verifier::with_secrets(["whsec_ok", ""]).unwrap_err(),
            ConfigError::EmptySecret
        );
    }

    #[test]
    fn headers_must_be_present_once() {
        let signature = sign("whsec_test", "1790000000", BODY);
        let mut headers = HeaderMap::new();
        assert_eq!(
            verifier().verify_headers(&headers, BODY),
            Err(VerifyError::MissingHeader {
                name: TIMESTAMP_HEADER
            })
        );
        headers.insert(TIMESTAMP_HEADER, "1790000000".parse().unwrap());
        assert_eq!(
            verifier().verify_headers(&headers, BODY),
            Err(VerifyError::MissingHeader {
                name: SIGNATURE_HEADER
            })
        );
        headers.insert(SIGNATURE_HEADER, signature.parse().unwrap());
        assert!(verifier().verify_headers(&headers, BODY).is_ok());
        headers.append(SIGNATURE_HEADER, signature.parse().unwrap());
        assert_eq!(
            verifier().verify_headers(&headers, BODY),
            Err(VerifyError::DuplicateHeader {
                name: SIGNATURE_HEADER
            })
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let shown = format!("{:?}", Verifier::new("whsec_hidden_value").unwrap());
        assert!(!shown.contains("hidden_value"), "{shown}");
    }
}
