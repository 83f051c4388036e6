//! Secrets never leave the process: not in `Debug` output, not in `Display`, not in what a
//! rejected client is told, and not in `tracing` logs. Nor does a signature computed with a
//! secret, which would let anyone who reads the logs sign the forged body it was made for.

use std::sync::{Arc, Mutex};

use crate::support;
use crate::support::{Frames, NOW, Step, read, signed};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::protocol::Secret;
use openmail_webhooks::tenant::InboxSecrets;
use openmail_webhooks::tenant::TenantSecrets;
use openmail_webhooks::verify::Rejection;
use openmail_webhooks::{Verifier, VerifyOpenMailLayer, sign};
use tower::{Layer, ServiceExt};

const SECRETS: [&str; 3] = [
    "whsec_NEVER_PRINT_ME_7f3a9c",
    "ключ-NEVER-PRINTED-🔑",
    "whsec_ROTATED_OUT_NEVER_PRINTED",
];

/// Fails if `shown` contains any secret, or any signature a secret makes over the
/// deliveries these tests send.
fn assert_no_secret(what: &str, shown: &str) {
    for secret in SECRETS {
        assert!(!shown.contains(secret), "{what} shows a secret: {shown}");
        // Also a fragment, in case something truncates it.
        assert!(
            !shown.contains(&secret[..12]),
            "{what} shows part of a secret: {shown}"
        );
        for timestamp in [NOW, NOW - 301] {
            for body in bodies() {
                let signature = sign(secret, timestamp.to_string(), &body);
                assert!(
                    !shown.contains(&signature) && !shown.contains(&signature[..16]),
                    "{what} shows a signature made with a secret: {shown}"
                );
            }
        }
    }
}

fn bodies() -> Vec<Vec<u8>> {
    vec![
        support::BODY.to_vec(),
        br#"{"event":"message.received","event_id":"evt_forged"}"#.to_vec(),
        b"not json".to_vec(),
    ]
}

fn layer() -> VerifyOpenMailLayer {
    VerifyOpenMailLayer::with_secrets(SECRETS)
        .unwrap()
        .clock(|| NOW)
        .body_limit(1024)
}

async fn ok(_: Request<VerifiedBody>) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(Response::new(Full::new(Bytes::from_static(b"ok"))))
}

/// Requests the layer refuses for every reason it has, each built from the secrets.
fn hostile_requests() -> Vec<Request<Frames>> {
    let forged = br#"{"event":"message.received","event_id":"evt_forged"}"#;
    let mut requests = vec![
        // The signature of another body: a mismatch.
        {
            let (parts, _) = signed(SECRETS[0], NOW, support::BODY).into_parts();
            Request::from_parts(parts, Frames::once(Bytes::from_static(forged)))
        },
        // Stale.
        signed(SECRETS[1], NOW - 301, support::BODY),
        // Over the limit.
        signed(SECRETS[0], NOW, &[b' '; 2048]),
        // A body that breaks off.
        {
            let (parts, _) = signed(SECRETS[0], NOW, support::BODY).into_parts();
            Request::from_parts(
                parts,
                Frames::new([
                    Step::Data(Bytes::from_static(&support::BODY[..5])),
                    Step::Error("connection reset"),
                ]),
            )
        },
    ];
    // Two signatures, and a signature with a prefix.
    let mut twice = signed(SECRETS[0], NOW, support::BODY);
    let value = twice.headers()["x-signature"].clone();
    twice.headers_mut().append("x-signature", value);
    requests.push(twice);
    let mut prefixed = signed(SECRETS[0], NOW, support::BODY);
    let value = format!(
        "sha256={}",
        sign(SECRETS[0], NOW.to_string(), support::BODY)
    );
    prefixed
        .headers_mut()
        .insert("x-signature", value.parse().unwrap());
    requests.push(prefixed);
    requests
}

#[test]
fn debug_output_never_shows_a_secret() {
    let secret = Secret::new(SECRETS[0]).unwrap();
    let verifier = Verifier::with_secrets(SECRETS).unwrap();
    let layer = layer();
    let service = layer.clone().layer(tower::service_fn(ok));
    let tenants = InboxSecrets::new()
        .inbox("inb_a", [SECRETS[0], SECRETS[2]])
        .unwrap()
        .inbox("inb_b", [SECRETS[1]])
        .unwrap()
        .account([SECRETS[2]])
        .unwrap();
    let tenant = TenantSecrets::for_inbox("inb_a", SECRETS).unwrap();
    let resolved = VerifyOpenMailLayer::with_resolver(tenants.clone());
    for (what, shown) in [
        ("Secret", format!("{secret:?} {secret:#?}")),
        ("Verifier", format!("{verifier:?} {verifier:#?}")),
        ("VerifyOpenMailLayer", format!("{layer:?} {layer:#?}")),
        ("VerifyOpenMail", format!("{service:?} {service:#?}")),
        ("InboxSecrets", format!("{tenants:?} {tenants:#?}")),
        ("TenantSecrets", format!("{tenant:?} {tenant:#?}")),
        ("resolver layer", format!("{resolved:?} {resolved:#?}")),
    ] {
        assert!(!shown.is_empty());
        assert_no_secret(what, &shown);
    }
}

#[cfg(feature = "test-util")]
#[test]
fn test_deliveries_never_show_their_secret() {
    let delivery = openmail_webhooks::test_util::TestDelivery::new(
        SECRETS[0],
        r#"{"event":"message.received","event_id":"evt_1"}"#,
    );
    assert_no_secret("TestDelivery", &format!("{delivery:?} {delivery:#?}"));
}

#[tokio::test]
async fn rejections_never_show_a_secret_to_the_client_or_the_application() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let hook = Arc::clone(&seen);
    let layer = layer().on_rejection(move |rejection: &Rejection| {
        hook.lock().unwrap().push(format!(
            "{rejection} | {rejection:?} | {} | {:?}",
            rejection.client_message(),
            std::error::Error::source(rejection).map(ToString::to_string),
        ));
    });
    let requests = hostile_requests();
    let count = requests.len();
    for request in requests {
        let service = layer.clone().layer(tower::service_fn(ok));
        let (status, text) = read(service.oneshot(request).await.unwrap()).await;
        assert!(status.is_client_error(), "{status} {text}");
        assert_no_secret("a rejection's response", &text);
    }
    let seen = seen.lock().unwrap();
    assert_eq!(
        seen.len(),
        count,
        "every request was rejected through the hook"
    );
    for shown in seen.iter() {
        assert_no_secret("a rejection's Display and Debug", shown);
    }
}

#[cfg(feature = "tracing")]
#[tokio::test(flavor = "current_thread")]
async fn tracing_logs_never_show_a_secret() {
    // Everything this test's requests log, at every level (they run on this thread).
    let captured = crate::logs::capture(tracing_subscriber::filter::LevelFilter::TRACE);

    for request in hostile_requests() {
        let service = layer().layer(tower::service_fn(ok));
        let _ = read(service.oneshot(request).await.unwrap()).await;
    }
    // And a genuine delivery, which must not log its signature either.
    let service = layer().layer(tower::service_fn(ok));
    let (status, _) = read(
        service
            .oneshot(signed(SECRETS[1], NOW, support::BODY))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(1)).await;

    let logs = captured.text();
    // The capture works: the rejections are there, with their reasons.
    assert!(logs.contains("OpenMail webhook rejected"), "{logs}");
    assert!(
        logs.contains("matches none of the configured secrets"),
        "{logs}"
    );
    assert!(logs.contains("appears more than once"), "{logs}");
    assert_no_secret("the tracing logs", &logs);
}
