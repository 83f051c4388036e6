//! Properties of the check over generated inputs: tampering with any bit is caught, the
//! frame split never changes a verdict, signing round-trips for any secret and body, and the
//! replay window is exactly `|now - ts| <= tolerance` over the whole `i64` range and beyond.

use std::time::Duration;

use crate::support;
use crate::support::{Frames, Step, read};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::{Verifier, VerifyError, VerifyOpenMailLayer, sign};
use proptest::prelude::*;
use tower::{Layer, ServiceExt};

const NOW: i64 = 1_790_000_000;

fn verifier(secret: &str) -> Verifier {
    Verifier::new(secret).unwrap().clock(|| NOW)
}

/// Any secret the crate accepts, ASCII or not: non-empty, and with no whitespace at either
/// end (such a secret is a configuration error, tested below).
fn secret() -> impl Strategy<Value = String> {
    prop_oneof!["whsec_[A-Za-z0-9]{1,40}", "\\PC{1,40}", any::<String>(),].prop_filter(
        "an accepted secret",
        |s| {
            !s.is_empty()
                && !s.as_bytes()[0].is_ascii_whitespace()
                && !s.as_bytes()[s.len() - 1].is_ascii_whitespace()
        },
    )
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..600)
}

/// A timestamp inside the default tolerance of [`NOW`].
fn fresh_timestamp() -> impl Strategy<Value = String> {
    (-300i64..=300).prop_map(|offset| (NOW + offset).to_string())
}

fn flip(bytes: &mut [u8], bit: usize) {
    let bit = bit % (bytes.len() * 8);
    bytes[bit / 8] ^= 1 << (bit % 8);
}

proptest! {
    #![proptest_config(crate::proptest_config(ProptestConfig::with_cases(512)))]

    #[test]
    fn flipping_any_bit_of_the_body_is_rejected(
        secret in secret(), timestamp in fresh_timestamp(), body in body(), bit in any::<usize>(),
    ) {
        prop_assume!(!body.is_empty());
        let signature = sign(&secret, &timestamp, &body);
        let mut tampered = body.clone();
        flip(&mut tampered, bit);
        prop_assert_eq!(
            verifier(&secret).verify(&timestamp, &signature, &tampered),
            Err(VerifyError::SignatureMismatch)
        );
    }

    #[test]
    fn flipping_any_bit_of_the_timestamp_is_rejected(
        secret in secret(), timestamp in fresh_timestamp(), body in body(), bit in any::<usize>(),
    ) {
        let signature = sign(&secret, &timestamp, &body);
        let mut tampered = timestamp.clone().into_bytes();
        flip(&mut tampered, bit);
        prop_assert!(verifier(&secret).verify(&tampered, &signature, &body).is_err());
    }

    /// Hex is read in either case, so flipping the case bit of a letter digit spells the
    /// same signature. Every other flip is rejected.
    #[test]
    fn flipping_any_bit_of_the_signature_is_rejected(
        secret in secret(), timestamp in fresh_timestamp(), body in body(), bit in any::<usize>(),
    ) {
        let signature = sign(&secret, &timestamp, &body);
        let mut tampered = signature.clone().into_bytes();
        flip(&mut tampered, bit);
        let result = verifier(&secret).verify(&timestamp, &tampered, &body);
        if tampered.eq_ignore_ascii_case(signature.as_bytes()) {
            prop_assert!(result.is_ok());
        } else {
            prop_assert!(result.is_err());
        }
    }

    #[test]
    fn sign_then_verify_round_trips(
        secret in secret(), other in secret(), timestamp in fresh_timestamp(), body in body(),
    ) {
        let signature = sign(&secret, &timestamp, &body);
        prop_assert_eq!(signature.len(), 64);
        prop_assert!(signature.bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')));
        let verified = verifier(&secret).verify(&timestamp, &signature, &body).unwrap();
        prop_assert_eq!(verified.timestamp(), timestamp.parse::<i64>().unwrap());
        // The secret's bytes are the key: any other secret fails, and both verify during
        // a rotation, each reporting its own index.
        if other != secret {
            prop_assert_eq!(
                verifier(&other).verify(&timestamp, &signature, &body),
                Err(VerifyError::SignatureMismatch)
            );
            let rotation = Verifier::with_secrets([&other, &secret]).unwrap().clock(|| NOW);
            prop_assert_eq!(
                rotation.verify(&timestamp, &signature, &body).unwrap().secret_index(),
                1
            );
        }
    }
}

/// A timestamp and a clock anywhere in `i64`, with the interesting places (the ends of the
/// range, and the edges of the window) drawn more often than chance would.
fn instant() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        Just(i64::MIN),
        Just(i64::MAX),
        Just(0),
        (i64::MIN..i64::MIN + 1000),
        (i64::MAX - 1000..=i64::MAX),
    ]
}

fn tolerance() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        Just(0u64),
        Just(300u64),
        Just(u64::MAX),
        0u64..1000,
        Just(i64::MAX as u64),
        Just(i64::MAX as u64 + 1),
    ]
}

proptest! {
    #![proptest_config(crate::proptest_config(ProptestConfig::with_cases(2048)))]

    #[test]
    fn a_timestamp_is_accepted_exactly_within_the_tolerance(
        now in instant(), timestamp in instant(), tolerance in tolerance(), nudge in -2i64..=2,
        near in any::<bool>(), direction in any::<bool>(),
    ) {
        // Half the time, put the timestamp right at the window's edge, give or take `nudge`.
        let timestamp = if near {
            let edge = if direction {
                i128::from(now) + i128::from(tolerance)
            } else {
                i128::from(now) - i128::from(tolerance)
            };
            i64::try_from(edge + i128::from(nudge)).unwrap_or(timestamp)
        } else {
            timestamp
        };
        let raw = timestamp.to_string();
        let signature = sign("whsec_test", &raw, b"{}");
        let verifier = Verifier::new("whsec_test")
            .unwrap()
            .tolerance(Duration::from_secs(tolerance))
            .clock(move || now);
        let distance = (i128::from(now) - i128::from(timestamp)).unsigned_abs();
        let result = verifier.verify(&raw, &signature, b"{}");
        if distance <= u128::from(tolerance) {
            prop_assert_eq!(result.unwrap().timestamp(), timestamp);
        } else {
            let offset = i128::from(now) - i128::from(timestamp);
            let saturated = i64::try_from(offset)
                .unwrap_or(if offset > 0 { i64::MAX } else { i64::MIN });
            prop_assert_eq!(
                result,
                Err(VerifyError::TimestampOutsideTolerance { offset: saturated, tolerance })
            );
        }
    }

    /// Integers past either end of `i64`, and digit strings of any length, are refused
    /// without overflowing, even with the widest tolerance.
    #[test]
    fn timestamps_beyond_i64_are_out_of_range(
        beyond in prop_oneof![
            (i128::from(i64::MAX) + 1..=i128::MAX).prop_map(|value| value.to_string()),
            (i128::MIN..=i128::from(i64::MIN) - 1).prop_map(|value| value.to_string()),
            "[1-9][0-9]{19,400}",
            "-[1-9][0-9]{19,400}",
        ],
        now in instant(),
    ) {
        prop_assume!(beyond.parse::<i64>().is_err());
        let signature = sign("whsec_test", &beyond, b"{}");
        let verifier = Verifier::new("whsec_test")
            .unwrap()
            .tolerance(Duration::from_secs(u64::MAX))
            .clock(move || now);
        prop_assert_eq!(
            verifier.verify(&beyond, &signature, b"{}"),
            Err(VerifyError::TimestampOutOfRange)
        );
    }
}

/// An inner service that answers with what it received.
async fn echo(
    request: Request<VerifiedBody>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    use http_body_util::BodyExt;
    let body = request.into_body().collect().await.unwrap().to_bytes();
    Ok(Response::new(Full::new(body)))
}

/// Runs one request through the layer and returns the status and body.
fn verdict(request: Request<Frames>, limit: usize) -> (StatusCode, String) {
    let layer = VerifyOpenMailLayer::new(support::SECRET)
        .unwrap()
        .clock(|| NOW)
        .body_limit(limit)
        .parse_events(false);
    let service = layer.layer(tower::service_fn(echo));
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async move { read(service.oneshot(request).await.unwrap()).await })
}

proptest! {
    #![proptest_config(crate::proptest_config(ProptestConfig::with_cases(256)))]

    /// Splitting the body into frames, anywhere and with empty frames, never changes the
    /// verdict or what the inner service receives. This holds for genuine bodies, for
    /// tampered ones, and for bodies on either side of the limit.
    #[test]
    fn any_frame_split_gives_the_same_verdict_as_one_frame(
        body in body(),
        cuts in proptest::collection::vec(any::<usize>(), 0..12),
        tamper in proptest::option::of(any::<usize>()),
        limit in prop_oneof![Just(usize::MAX), 0usize..700],
        declare in any::<bool>(),
    ) {
        let signed_body = body.clone();
        let mut sent = body;
        if let Some(bit) = tamper {
            if !sent.is_empty() {
                flip(&mut sent, bit);
            }
        }
        let head = || support::signed(support::SECRET, NOW, &signed_body).into_parts().0;

        let whole = Request::from_parts(head(), Frames::once(Bytes::from(sent.clone())));

        let mut cuts: Vec<usize> = cuts.into_iter().map(|cut| cut % (sent.len() + 1)).collect();
        cuts.sort_unstable();
        let mut steps = Vec::new();
        let mut start = 0;
        for cut in cuts {
            steps.push(Step::Data(Bytes::copy_from_slice(&sent[start..cut])));
            start = cut;
        }
        steps.push(Step::Data(Bytes::copy_from_slice(&sent[start..])));
        let mut frames = Frames::new(steps);
        if declare {
            frames = frames.exact(sent.len() as u64);
        }
        let split = Request::from_parts(head(), frames);

        let expected = verdict(whole, limit);
        prop_assert_eq!(verdict(split, limit), expected.clone());
        // And the one-frame verdict is the right one.
        let genuine = sent == signed_body;
        let status = if sent.len() > limit {
            StatusCode::PAYLOAD_TOO_LARGE
        } else if genuine {
            StatusCode::OK
        } else {
            StatusCode::BAD_REQUEST
        };
        prop_assert_eq!(expected.0, status);
        if status == StatusCode::OK {
            prop_assert_eq!(expected.1, String::from_utf8_lossy(&sent).into_owned());
        }
    }
}
