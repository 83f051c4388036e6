use std::fmt;

use hmac::{KeyInit, Mac};

use super::ConfigError;

pub(crate) type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// One webhook secret, already keyed into an HMAC-SHA256 state.
///
/// The key is the secret's bytes exactly as OpenMail shows them: a `whsec_` prefix is part
/// of the key, and nothing is base64- or hex-decoded. The raw secret is not kept, and
/// `Debug` never shows it.
#[derive(Clone)]
pub struct Secret {
    keyed: HmacSha256,
}

impl Secret {
    /// Keys a secret. An empty secret is refused (anyone could sign with it), and so is
    /// one that starts or ends with whitespace ([`ConfigError::SecretWhitespace`]).
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let secret = secret.as_ref();
        if secret.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        let is_space = |byte: &&u8| byte.is_ascii_whitespace();
        if secret.first().filter(is_space).is_some() || secret.last().filter(is_space).is_some() {
            return Err(ConfigError::SecretWhitespace);
        }
        Ok(Self {
            keyed: keyed_mac(secret),
        })
    }

    /// A secret from a MAC state keyed elsewhere.
    pub(crate) fn from_mac(keyed: HmacSha256) -> Self {
        Self { keyed }
    }

    /// A fresh MAC state, keyed with this secret and ready for input.
    pub(crate) fn mac(&self) -> HmacSha256 {
        #[cfg(feature = "test-util")]
        MACS_ON_THIS_THREAD.with(|count| count.set(count.get().wrapping_add(1)));
        self.keyed.clone()
    }
}

// Every MAC a check runs starts from `Secret::mac`, so counting here counts the work of
// every verification and every refusal (`burn_macs` included), and nothing else: signing
// keys its own state. Per thread, so that tests running in parallel do not see each
// other's MACs.
#[cfg(feature = "test-util")]
thread_local! {
    static MACS_ON_THIS_THREAD: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many MAC states [`Secret::mac`] has handed out on this thread.
#[cfg(feature = "test-util")]
pub(crate) fn macs_on_this_thread() -> u64 {
    MACS_ON_THIS_THREAD.with(std::cell::Cell::get)
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Keys HMAC-SHA256 with any byte string.
pub(crate) fn keyed_mac(key: &[u8]) -> HmacSha256 {
    // HMAC is defined for keys of every length (longer ones are hashed first), and hmac's
    // `new_from_slice` for `Hmac<D>` never returns `Err`. Going through the error path would
    // only add an unreachable branch.
    #[allow(clippy::expect_used)]
    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length")
}

/// Feeds `timestamp` and the `.` separator, the part of the message before the body.
pub(crate) fn start_message(mac: &mut HmacSha256, timestamp: &[u8]) {
    mac.update(timestamp);
    mac.update(b".");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_secret_is_a_configuration_error() {
        assert_eq!(Secret::new("").unwrap_err(), ConfigError::EmptySecret);
        assert_eq!(
            Secret::new(Vec::<u8>::new()).unwrap_err(),
            ConfigError::EmptySecret
        );
    }

    #[test]
    fn secrets_with_stray_whitespace_are_configuration_errors() {
        for secret in [
            "whsec_abc\n",
            " whsec_abc",
            "whsec_abc\r\n",
            "\twhsec_abc",
            " ",
        ] {
            assert_eq!(
                Secret::new(secret).unwrap_err(),
                ConfigError::SecretWhitespace,
                "{secret:?}"
            );
        }
        assert!(
            Secret::new("whsec a b").is_ok(),
            "inner spaces are part of the key"
        );
        assert!(
            ConfigError::SecretWhitespace
                .to_string()
                .contains("trailing newline")
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = Secret::new("whsec_do_not_print").unwrap();
        let shown = format!("{secret:?} {secret:#?}");
        assert!(!shown.contains("do_not_print"), "{shown}");
        assert!(shown.contains("redacted"));
    }
}
