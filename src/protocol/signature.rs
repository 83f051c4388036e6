use hmac::Mac;

use super::VerifyError;
use super::secret::{keyed_mac, start_message};

/// The length of `X-Signature`: the hex digits of a 32-byte HMAC-SHA256.
const SIGNATURE_HEX_LEN: usize = 64;

/// Computes the `X-Signature` OpenMail sends for `body` at `timestamp`.
///
/// `hex(HMAC-SHA256(key = secret, msg = timestamp + "." + body))`, in lowercase hex, with
/// no prefix. `timestamp` goes into the MAC byte for byte, exactly as it will be sent in
/// `X-Timestamp`.
///
/// This is the signer's side, for tests and local tools. It signs with any key, including
/// an empty one, which a [`Verifier`](crate::Verifier) refuses to be configured with.
///
/// ```
/// // The protocol's known-answer vector, cross-checked with python3's hmac module.
/// let signature = openmail_webhooks::sign(
///     "whsec_test",
///     "1790000000",
///     br#"{"event":"message.received"}"#,
/// );
/// assert_eq!(
///     signature,
///     "fe895ac02777d173d059ec01d7a0c53fb3a92f211147c10e23a4863ad84cb7f8",
/// );
/// ```
pub fn sign(secret: impl AsRef<[u8]>, timestamp: impl AsRef<[u8]>, body: &[u8]) -> String {
    let mut mac = keyed_mac(secret.as_ref());
    start_message(&mut mac, timestamp.as_ref());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Each byte's value as a hex digit, or `NOT_HEX`. A table lookup per digit keeps the decode
/// at a few nanoseconds; `hex::decode_to_slice` costs about as much as hashing a 256-byte
/// body, which the benchmarks measured as most of the check's cost beyond the HMAC.
const HEX_VALUE: [u8; 256] = {
    let mut table = [NOT_HEX; 256];
    let mut digit = 0u8;
    // Evaluated at compile time: an index out of range or an overflow would fail the build.
    #[allow(clippy::indexing_slicing, clippy::arithmetic_side_effects)]
    while digit < 16 {
        let lower = b"0123456789abcdef"[digit as usize];
        let upper = b"0123456789ABCDEF"[digit as usize];
        table[lower as usize] = digit;
        table[upper as usize] = digit;
        digit += 1;
    }
    table
};
const NOT_HEX: u8 = 0xff;

/// Decodes `X-Signature` into the 32 bytes of the MAC. Either hex case is accepted;
/// anything but exactly 64 hex digits is refused.
pub(crate) fn decode_signature(raw: &[u8]) -> Result<[u8; 32], VerifyError> {
    if raw.len() != SIGNATURE_HEX_LEN {
        return Err(VerifyError::SignatureMalformed {
            length: raw.len(),
            invalid_at: None,
        });
    }
    let value = |digit: &u8| {
        HEX_VALUE
            .get(usize::from(*digit))
            .copied()
            .unwrap_or(NOT_HEX)
    };
    let mut decoded = [0u8; 32];
    // Every valid digit is below 16, so any invalid one leaves high bits in `seen`.
    let mut seen = 0u8;
    for (byte, pair) in decoded.iter_mut().zip(raw.chunks_exact(2)) {
        let mut digits = pair.iter().map(value);
        let (high, low) = (
            digits.next().unwrap_or(NOT_HEX),
            digits.next().unwrap_or(NOT_HEX),
        );
        seen |= high | low;
        *byte = high.wrapping_shl(4) | low;
    }
    if seen < 16 {
        return Ok(decoded);
    }
    Err(VerifyError::SignatureMalformed {
        length: raw.len(),
        invalid_at: Some(
            raw.iter()
                .position(|digit| value(digit) == NOT_HEX)
                .unwrap_or(0),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // Every expected value below was computed outside this crate, with python3's `hmac`:
    //   hmac.new(secret, timestamp + b"." + body, hashlib.sha256).hexdigest()
    // and the first one also with `openssl dgst -sha256 -hmac whsec_test`.
    #[test]
    fn known_answer_vectors_from_python_hmac() {
        let vectors: &[(&[u8], &str, &[u8], &str)] = &[
            (
                b"whsec_test",
                "1790000000",
                br#"{"event":"message.received"}"#,
                "fe895ac02777d173d059ec01d7a0c53fb3a92f211147c10e23a4863ad84cb7f8",
            ),
            (
                b"whsec_test",
                "1790000000",
                b"",
                "0dfc313933a8f5bd97813f1ea8487570309cfa2e3403b1405460e9600d0a815a",
            ),
            (
                "sécret-ключ-🔑".as_bytes(),
                "1790000000",
                br#"{"event":"message.received"}"#,
                "5f63a689cb5d5de6d28378e8c4cd93f6d9dadc1e5444e8b83d8935fd74d6661a",
            ),
            (
                b"whsec_test",
                "1790000000",
                b"\xff\xfe\x00\x80not utf-8",
                "940210de02cdddc812795960e20a46c9e1d203f8cf1d4ecb5df815af556f8aaa",
            ),
            (
                b"whsec_test",
                "0001790000000",
                br#"{"event":"message.received"}"#,
                "facd3d377bfd3cdd02fd14b9e8aa86041b646ad772a217e3d7f07ffde7f9de3a",
            ),
        ];
        for (secret, timestamp, body, expected) in vectors {
            assert_eq!(
                sign(secret, timestamp, body),
                *expected,
                "{timestamp} {body:?}"
            );
        }
    }

    #[test]
    fn signature_accepts_either_hex_case() {
        let lower = "fe895ac02777d173d059ec01d7a0c53fb3a92f211147c10e23a4863ad84cb7f8";
        let upper = lower.to_ascii_uppercase();
        assert_eq!(
            decode_signature(lower.as_bytes()).unwrap(),
            decode_signature(upper.as_bytes()).unwrap()
        );
    }

    #[test]
    fn signature_of_any_other_shape_is_malformed() {
        let good = "fe895ac02777d173d059ec01d7a0c53fb3a92f211147c10e23a4863ad84cb7f8";
        let prefixed = format!("sha256={good}");
        let cases: Vec<(&[u8], Option<usize>)> = vec![
            (b"", None),
            (&good.as_bytes()[..63], None),
            (&good.as_bytes()[..62], None),
            (prefixed.as_bytes(), None),
            (
                b"fe895ac02777d173d059ec01d7a0c53fb3a92f211147c10e23a4863ad84cb7f8a",
                None,
            ),
            (
                b"ge895ac02777d173d059ec01d7a0c53fb3a92f211147c10e23a4863ad84cb7f8",
                Some(0),
            ),
            (
                b"fe895ac02777d173d059ec01d7a0c53fb3a92f211147c10e23a4863ad84cb7f ",
                Some(63),
            ),
            (
                b"fe895ac02777d173d059ec01d7a0c53fb3a92f211147c10e23a4863ad84cb7\xc3\xa9",
                Some(62),
            ),
        ];
        for (raw, invalid_at) in cases {
            assert_eq!(
                decode_signature(raw),
                Err(VerifyError::SignatureMalformed {
                    length: raw.len(),
                    invalid_at
                }),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    proptest::proptest! {
        /// The table decode gives exactly `hex::decode_to_slice`'s verdicts, byte for byte,
        /// and reports the same first invalid position.
        #[test]
        fn decoding_agrees_with_the_hex_crate(
            raw in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => proptest::sample::select(b"0123456789abcdefABCDEF".to_vec()),
                    1 => proptest::num::u8::ANY,
                ],
                64,
            ),
        ) {
            let mut expected = [0u8; 32];
            let reference = hex::decode_to_slice(&raw, &mut expected);
            match (decode_signature(&raw), reference) {
                (Ok(decoded), Ok(())) => proptest::prop_assert_eq!(decoded, expected),
                (
                    Err(VerifyError::SignatureMalformed { length: 64, invalid_at: Some(at) }),
                    Err(hex::FromHexError::InvalidHexCharacter { index, .. }),
                ) => proptest::prop_assert_eq!(at, index),
                (mine, theirs) => proptest::prop_assert!(false, "{mine:?} vs {theirs:?}"),
            }
        }
    }
}
