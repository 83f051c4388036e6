//! Per-inbox secrets: tenant isolation, URL- and body-routed tenants, pod events (account
//! secrets only), unknown tenants answered like forgeries, failing and slow resolvers,
//! rotation for one inbox, and the cache.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::{Frames, NOW, read};
use crate::{support, tenants_sqlite};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use openmail_webhooks::body::VerifiedBody;
use openmail_webhooks::tenant::TenantSecrets;
use openmail_webhooks::tenant::{CachedResolver, InboxSecrets, SecretResolver, Tenant};
use openmail_webhooks::verify::Rejection;
use openmail_webhooks::{Delivery, VerifyOpenMailLayer};
use tower::{Layer, ServiceExt};

/// What a resolver's `lookup` returns.
type ResolveFuture = std::pin::Pin<
    Box<
        dyn std::future::Future<
                Output = Result<Option<openmail_webhooks::tenant::TenantSecrets>, tower::BoxError>,
            > + Send,
    >,
>;

fn message(inbox: &str) -> Vec<u8> {
    format!(r#"{{"event":"message.received","event_id":"evt_{inbox}","inbox_id":"{inbox}"}}"#)
        .into_bytes()
}

fn pod_event(pod: &str) -> Vec<u8> {
    format!(r#"{{"event":"pod.suspended","event_id":"evt_{pod}","inbox_id":null,"inbox_address":null,"pod_id":"{pod}","reason":"abuse"}}"#)
        .into_bytes()
}

fn delivery(path: &str, secret: &str, body: &[u8]) -> Request<Frames> {
    let (parts, body_frames) = support::signed(secret, NOW, body).into_parts();
    let mut request = Request::from_parts(parts, body_frames);
    *request.uri_mut() = path.parse().unwrap();
    request
}

/// Answers with the scope and secret index the layer reported.
async fn whoami(request: Request<VerifiedBody>) -> Result<Response<Full<Bytes>>, Infallible> {
    let delivery = request.extensions().get::<Delivery>().unwrap();
    let scope = match delivery.scope() {
        Tenant::Inbox(inbox) => format!("inbox:{inbox}"),
        Tenant::Account => "account".to_owned(),
        other => format!("{other:?}"),
    };
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{scope}#{}",
        delivery.secret_index().unwrap()
    )))))
}

struct Recorded {
    layer: VerifyOpenMailLayer,
    reasons: Arc<Mutex<Vec<String>>>,
}

fn layer(resolver: impl SecretResolver) -> Recorded {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let layer = VerifyOpenMailLayer::with_resolver(resolver)
        .clock(|| NOW)
        .on_rejection({
            let reasons = Arc::clone(&reasons);
            move |rejection: &Rejection| {
                // The whole chain: the reason, then its causes.
                let mut shown = rejection.to_string();
                let mut cause = std::error::Error::source(rejection);
                while let Some(error) = cause {
                    shown.push_str(&format!(": {error}"));
                    cause = error.source();
                }
                reasons.lock().unwrap().push(shown)
            }
        });
    Recorded { layer, reasons }
}

async fn send(layer: &VerifyOpenMailLayer, request: Request<Frames>) -> (StatusCode, String) {
    read(
        layer
            .layer(tower::service_fn(whoami))
            .oneshot(request)
            .await
            .unwrap(),
    )
    .await
}

fn two_inboxes() -> InboxSecrets {
    InboxSecrets::new()
        .inbox("inb_a", ["whsec_a"])
        .unwrap()
        .inbox("inb_b", ["whsec_b"])
        .unwrap()
}

#[tokio::test]
async fn body_routed_tenants_on_one_url() {
    let recorded = layer(two_inboxes());
    let cases = [
        ("whsec_a", "inb_a", StatusCode::OK, "inbox:inb_a#0"),
        ("whsec_b", "inb_b", StatusCode::OK, "inbox:inb_b#0"),
        (
            "whsec_wrong",
            "inb_a",
            StatusCode::BAD_REQUEST,
            "signature mismatch",
        ),
    ];
    for (secret, inbox, status, text) in cases {
        let (got, body) = send(
            &recorded.layer,
            delivery("/webhooks", secret, &message(inbox)),
        )
        .await;
        assert_eq!((got, body.as_str()), (status, text), "{secret} {inbox}");
    }
}

#[tokio::test]
async fn isolation_one_inbox_secret_never_authenticates_another_inbox() {
    // Body-routed: the claim picks inbox b's secrets, so inbox a's signature cannot match.
    let recorded = layer(two_inboxes());
    for (secret, inbox) in [("whsec_a", "inb_b"), ("whsec_b", "inb_a")] {
        let (status, _) = send(
            &recorded.layer,
            delivery("/webhooks", secret, &message(inbox)),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{secret} signing for {inbox}"
        );
    }

    // URL-routed: the path picks inbox a's secrets and a's signature matches, but the body
    // names inbox b. That is the attack isolation exists for.
    let recorded = layer(two_inboxes().route_by_path());
    for (path, secret, inbox) in [
        ("/webhooks/inb_a", "whsec_a", "inb_b"),
        ("/webhooks/inb_b", "whsec_b", "inb_a"),
    ] {
        let (status, text) = send(&recorded.layer, delivery(path, secret, &message(inbox))).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::BAD_REQUEST, "signature mismatch")
        );
    }
    let reasons = recorded.reasons.lock().unwrap();
    assert!(
        reasons[0].starts_with(
            "the signature verified under a secret of inbox inb_a, but the body names inbox inb_b"
        ),
        "{reasons:?}"
    );
}

#[tokio::test]
async fn url_routed_tenants() {
    let recorded = layer(two_inboxes().route_by_path());
    let (status, text) = send(
        &recorded.layer,
        delivery("/webhooks/inb_a", "whsec_a", &message("inb_a")),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "inbox:inb_a#0"));
    let (status, _) = send(
        &recorded.layer,
        delivery("/webhooks/inb_b/", "whsec_b", &message("inb_b")),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a trailing slash still names the inbox"
    );
    let (status, _) = send(
        &recorded.layer,
        delivery("/webhooks/inb_c", "whsec_a", &message("inb_c")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn pod_events_verify_under_the_account_secret_only() {
    let without_fallback = layer(two_inboxes());
    let (status, text) = send(
        &without_fallback.layer,
        delivery("/webhooks", "whsec_account", &pod_event("pod_1")),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_REQUEST, "signature mismatch")
    );

    let with_account = layer(two_inboxes().account(["whsec_account"]).unwrap());
    let (status, text) = send(
        &with_account.layer,
        delivery("/webhooks", "whsec_account", &pod_event("pod_1")),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "account#0"));
    // An inbox's secret does not authenticate pod events.
    let (status, _) = send(
        &with_account.layer,
        delivery("/webhooks", "whsec_a", &pod_event("pod_1")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Regression: a pod-level secret once spoke for every inbox of the pod that had no secret
/// of its own. OpenMail has no pod secrets; whatever signs a body naming an inbox must be
/// that inbox's secret or the account's.
#[tokio::test]
async fn no_secret_but_the_inboxs_own_or_the_accounts_speaks_for_an_inbox() {
    let victim = br#"{"event":"message.received","event_id":"evt_v","inbox_id":"inb_victim","pod_id":"pod_p"}"#;
    let recorded = layer(two_inboxes().account(["whsec_account"]).unwrap());
    for secret in ["whsec_pod_p", "whsec_a", "whsec_b"] {
        let (status, text) = send(&recorded.layer, delivery("/webhooks", secret, victim)).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::BAD_REQUEST, "signature mismatch"),
            "{secret}"
        );
    }
    let (status, text) = send(
        &recorded.layer,
        delivery("/webhooks", "whsec_account", victim),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "account#0"));
}

#[tokio::test]
async fn unknown_inbox_with_and_without_the_account_fallback() {
    let strict = layer(two_inboxes());
    let (status, text) = send(
        &strict.layer,
        delivery("/webhooks", "whsec_account", &message("inb_new")),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::BAD_REQUEST, "signature mismatch")
    );
    assert!(strict.reasons.lock().unwrap()[0].starts_with("no secret is known for inbox inb_new"));

    let fallback = layer(two_inboxes().account(["whsec_account"]).unwrap());
    let (status, text) = send(
        &fallback.layer,
        delivery("/webhooks", "whsec_account", &message("inb_new")),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "account#0"));
    // A known inbox accepts its own secret first, and the account's as a second choice.
    let (_, text) = send(
        &fallback.layer,
        delivery("/webhooks", "whsec_account", &message("inb_a")),
    )
    .await;
    assert_eq!(text, "account#1");
}

#[tokio::test]
async fn rotation_for_one_inbox_leaves_the_others_alone() {
    let recorded = layer(
        two_inboxes()
            .inbox("inb_a", ["whsec_a_new", "whsec_a"])
            .unwrap(),
    );
    let (_, new) = send(
        &recorded.layer,
        delivery("/webhooks", "whsec_a_new", &message("inb_a")),
    )
    .await;
    let (_, old) = send(
        &recorded.layer,
        delivery("/webhooks", "whsec_a", &message("inb_a")),
    )
    .await;
    let (_, b) = send(
        &recorded.layer,
        delivery("/webhooks", "whsec_b", &message("inb_b")),
    )
    .await;
    let (status, _) = send(
        &recorded.layer,
        delivery("/webhooks", "whsec_a_new", &message("inb_b")),
    )
    .await;
    assert_eq!(
        (new.as_str(), old.as_str(), b.as_str()),
        ("inbox:inb_a#0", "inbox:inb_a#1", "inbox:inb_b#0")
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// A resolver with a script: errors for `inb_down`, waits for `release` for `inb_slow`,
/// counts calls.
#[derive(Clone, Default)]
struct Scripted {
    calls: Arc<AtomicUsize>,
    release: Arc<tokio::sync::Notify>,
}

impl SecretResolver for Scripted {
    fn lookup(&self, tenant: &Tenant) -> ResolveFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let inbox = match tenant {
            Tenant::Inbox(inbox) => Some(inbox.clone()),
            _ => None,
        };
        let release = Arc::clone(&self.release);
        Box::pin(async move {
            match inbox.as_deref() {
                Some("inb_down") => Err("database unreachable".into()),
                Some("inb_slow") => {
                    release.notified().await;
                    Ok(Some(TenantSecrets::for_inbox("inb_slow", ["whsec_slow"])?))
                }
                Some("inb_missing") => Ok(None),
                Some(inbox) => Ok(Some(TenantSecrets::for_inbox(
                    inbox,
                    [format!("whsec_{inbox}")],
                )?)),
                None => Ok(None),
            }
        })
    }
}

#[tokio::test]
async fn a_failing_resolver_is_a_503_so_openmail_retries() {
    let recorded = layer(Scripted::default());
    let (status, text) = send(
        &recorded.layer,
        delivery("/webhooks", "whsec_inb_down", &message("inb_down")),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "secret lookup failed, retry later"
        )
    );
    assert!(recorded.reasons.lock().unwrap()[0].contains("database unreachable"));
}

#[tokio::test]
async fn a_slow_resolver_does_not_block_other_requests() {
    let scripted = Scripted::default();
    let (calls, release) = (Arc::clone(&scripted.calls), Arc::clone(&scripted.release));
    let recorded = layer(scripted);
    let service = recorded.layer.layer(tower::service_fn(whoami));
    let slow = tokio::spawn(service.clone().oneshot(delivery(
        "/webhooks",
        "whsec_slow",
        &message("inb_slow"),
    )));
    // The slow lookup has started, and waits until released.
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // Generous, for a busy machine: the slow lookup never ends on its own.
    let fast = tokio::time::timeout(
        Duration::from_secs(10),
        service.oneshot(delivery(
            "/webhooks",
            "whsec_inb_fast",
            &message("inb_fast"),
        )),
    )
    .await
    .expect("another tenant's delivery must not wait for a slow lookup")
    .unwrap();
    assert_eq!(fast.status(), StatusCode::OK);
    assert!(!slow.is_finished());
    release.notify_one();
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn the_cache_keeps_answers_but_never_errors() {
    let scripted = Scripted::default();
    let calls = Arc::clone(&scripted.calls);
    // TTLs no test run outlasts, however busy the machine: hits are hits.
    let cached = CachedResolver::new(scripted.clone())
        .ttl(Duration::from_secs(3600))
        .negative_ttl(Duration::from_secs(3600))
        .capacity(2);
    let send_for = |layer: VerifyOpenMailLayer, inbox: &'static str| async move {
        send(
            &layer,
            delivery("/webhooks", &format!("whsec_{inbox}"), &message(inbox)),
        )
        .await
        .0
    };
    let recorded = layer(cached);
    let cached = || recorded.layer.clone();
    assert_eq!(send_for(cached(), "inb_a").await, StatusCode::OK);
    assert_eq!(send_for(cached(), "inb_a").await, StatusCode::OK);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "the second delivery is served from the cache"
    );
    assert_eq!(
        send_for(cached(), "inb_missing").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send_for(cached(), "inb_missing").await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "an unknown tenant is cached too"
    );
    assert_eq!(
        send_for(cached(), "inb_down").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        send_for(cached(), "inb_down").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "errors are asked again every time"
    );

    // A short TTL, and a wait longer than it: expired entries are looked up again.
    let expiring = layer(CachedResolver::new(scripted).ttl(Duration::from_millis(100)));
    assert_eq!(
        send_for(expiring.layer.clone(), "inb_a").await,
        StatusCode::OK
    );
    assert_eq!(calls.load(Ordering::SeqCst), 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        send_for(expiring.layer.clone(), "inb_a").await,
        StatusCode::OK
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        6,
        "expired entries are looked up again"
    );
}

/// A body naming its inbox twice can be held to neither: only the account's secret
/// verifies it (and the handler gets it, malformed); an inbox's secret is refused as any
/// forgery is, after the same MACs.
#[tokio::test]
async fn an_ambiguous_claim_verifies_only_under_the_account_secret() {
    let recorded = layer(two_inboxes().account(["whsec_account"]).unwrap());
    let body =
        br#"{"event":"message.received","event_id":"evt_1","inbox_id":"inb_a","inbox_id":"inb_b"}"#;
    let (status, text) = send(
        &recorded.layer,
        delivery("/webhooks", "whsec_account", body),
    )
    .await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "account#0"));
    for secret in ["whsec_a", "whsec_b"] {
        let (status, text) = send(&recorded.layer, delivery("/webhooks", secret, body)).await;
        assert_eq!(
            (status, text.as_str()),
            (StatusCode::BAD_REQUEST, "signature mismatch")
        );
    }
}

#[tokio::test]
async fn forged_heads_are_still_refused_before_the_body_is_read() {
    let recorded = layer(Scripted::default());
    let request = support::signed("whsec_inb_a", NOW - 1_000, &message("inb_a"));
    let polls = request.body().polls();
    let (status, _) = send(&recorded.layer, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(polls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn secrets_in_a_real_database_over_real_http() {
    use support::{client, post, signed_headers, unix_now};

    let connection = rusqlite::Connection::open_in_memory().unwrap();
    tenants_sqlite::create_schema(&connection).unwrap();
    tenants_sqlite::add_secret(&connection, "inb_alice", "whsec_alice", 1).unwrap();
    tenants_sqlite::add_secret(&connection, "inb_bob", "whsec_bob_old", 1).unwrap();
    tenants_sqlite::add_secret(&connection, "inb_bob", "whsec_bob_new", 2).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = tenants_sqlite::app(connection);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = client();
    let now = unix_now();
    let cases = [
        (
            "whsec_alice",
            "inb_alice",
            StatusCode::OK,
            "ok: inbox inb_alice\n",
        ),
        (
            "whsec_bob_new",
            "inb_bob",
            StatusCode::OK,
            "ok: inbox inb_bob\n",
        ),
        (
            "whsec_bob_old",
            "inb_bob",
            StatusCode::OK,
            "ok: inbox inb_bob\n",
        ),
        (
            "whsec_alice",
            "inb_bob",
            StatusCode::BAD_REQUEST,
            "signature mismatch",
        ),
        (
            "whsec_bob_new",
            "inb_alice",
            StatusCode::BAD_REQUEST,
            "signature mismatch",
        ),
        (
            "whsec_carol",
            "inb_carol",
            StatusCode::BAD_REQUEST,
            "signature mismatch",
        ),
    ];
    for (secret, inbox, status, text) in cases {
        let body = message(inbox);
        let (got, answer) = post(
            &client,
            addr,
            "/webhooks",
            &signed_headers(secret, now, &body),
            body,
        )
        .await;
        assert_eq!(
            (got, answer.as_str()),
            (status, text),
            "{secret} for {inbox}"
        );
    }
}

#[tokio::test]
async fn url_routed_tenants_behind_an_axum_path_route_over_real_http() {
    use axum::{Router, routing};
    use support::{client, post, signed_headers, unix_now};

    let layer = VerifyOpenMailLayer::with_resolver(two_inboxes().route_by_path());
    let app = Router::new()
        .route("/webhooks/{inbox_id}", routing::post(|| async { "ok" }))
        .layer(layer);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let client = client();
    let now = unix_now();
    let cases = [
        ("/webhooks/inb_a", "whsec_a", "inb_a", StatusCode::OK),
        ("/webhooks/inb_b", "whsec_b", "inb_b", StatusCode::OK),
        (
            "/webhooks/inb_a",
            "whsec_a",
            "inb_b",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/webhooks/inb_b",
            "whsec_a",
            "inb_a",
            StatusCode::BAD_REQUEST,
        ),
        (
            "/webhooks/inb_z",
            "whsec_a",
            "inb_z",
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (path, secret, inbox, status) in cases {
        let body = message(inbox);
        let (got, _) = post(
            &client,
            addr,
            path,
            &signed_headers(secret, now, &body),
            body,
        )
        .await;
        assert_eq!(got, status, "{path} {secret} {inbox}");
    }
}

// ---------------------------------------------------------------------------------------
// What a refusal costs and says, counted rather than timed.

/// Inboxes `inb_*` exist with the secret `whsec_<inbox>`; a lookup for `inb_flood_*` waits
/// until `gate` opens. Counts lookups.
#[derive(Clone, Default)]
struct Gated {
    lookups: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Notify>,
}

impl SecretResolver for Gated {
    fn lookup(&self, tenant: &Tenant) -> ResolveFuture {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        let tenant = tenant.clone();
        let gate = Arc::clone(&self.gate);
        Box::pin(async move {
            let Tenant::Inbox(inbox) = tenant else {
                return Ok(None);
            };
            if inbox.starts_with("inb_flood_") {
                gate.notified().await;
            }
            if !inbox.starts_with("inb_") {
                return Ok(None);
            }
            let secret = format!("whsec_{inbox}");
            Ok(Some(TenantSecrets::for_inbox(inbox, [secret])?))
        })
    }
}

/// What a client sees of an answer, and what it cost: status, headers, body, the MACs
/// verification ran (counted on this thread, which `oneshot` polls on) and the lookups.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cost {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: String,
    macs: u64,
    lookups: usize,
}

async fn cost(
    layer: &VerifyOpenMailLayer,
    lookups: &AtomicUsize,
    request: Request<Frames>,
) -> Cost {
    let (macs, looked) = (
        openmail_webhooks::test_util::TestDelivery::macs_on_this_thread(),
        lookups.load(Ordering::SeqCst),
    );
    let response = layer
        .layer(tower::service_fn(whoami))
        .oneshot(request)
        .await
        .unwrap();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
        .collect();
    let (status, body) = read(response).await;
    Cost {
        status,
        headers,
        body,
        macs: openmail_webhooks::test_util::TestDelivery::macs_on_this_thread() - macs,
        lookups: lookups.load(Ordering::SeqCst) - looked,
    }
}

/// Finding B4 of issue 19 (refresh path): a forgery naming a known inbox whose cached
/// secret was due for a refresh cost 8 MACs and a lookup (the cached secrets, then a
/// fresh lookup awaited and 4 more MACs), against 4 MACs for an unknown inbox. Now the
/// refusal is answered at once; the next delivery for either tenant looks it up again.
#[tokio::test]
async fn a_refusal_costs_the_same_macs_and_lookups_whether_or_not_the_inbox_exists() {
    let database = Gated::default();
    let lookups = Arc::clone(&database.lookups);
    // Long enough that nothing falls due within one request on a busy machine.
    let interval = Duration::from_secs(2);
    let resolver = CachedResolver::new(database).refresh_interval(interval);
    let layer = layer(resolver).layer;
    let pad = "p".repeat(64 * 1024);
    let forged = |inbox: &str| {
        let body = format!(
            r#"{{"event":"message.received","event_id":"evt_f","inbox_id":"{inbox}","pad":"{pad}"}}"#
        );
        delivery("/webhooks", "whsec_forger", body.as_bytes())
    };
    // Both tenants cached: the known inbox's secrets, and "no such inbox".
    let genuine = cost(
        &layer,
        &lookups,
        delivery("/webhooks", "whsec_inb_known", &message("inb_known")),
    )
    .await;
    assert_eq!((genuine.status, genuine.lookups), (StatusCode::OK, 1));
    let first = cost(&layer, &lookups, forged("unknown_x")).await;
    assert_eq!(
        (first.status, first.macs, first.lookups),
        (StatusCode::BAD_REQUEST, 4, 1)
    );
    // Both answers are now due for a refresh.
    tokio::time::sleep(interval + Duration::from_millis(100)).await;

    // Due: the refusal forgets the answer without a lookup of its own. Then the next
    // delivery looks the tenant up, and the one after is served from the cache.
    for (round, expected_lookups) in [0, 1, 0].into_iter().enumerate() {
        let known = cost(&layer, &lookups, forged("inb_known")).await;
        let unknown = cost(&layer, &lookups, forged("unknown_x")).await;
        assert_eq!(known, unknown, "round {round}");
        assert_eq!(known.status, StatusCode::BAD_REQUEST);
        assert_eq!(known.body, "signature mismatch");
        assert_eq!(
            (known.macs, known.lookups),
            (4, expected_lookups),
            "round {round}"
        );
    }
}

/// Finding B4 of issue 19 (lookup slots): once tenants never seen to verify held their
/// half of the lookups, a forgery naming a recently verified inbox got `400` (a lookup
/// from the reserve, then a failed check) while one naming any other inbox got `503`.
/// The status told which inboxes had verified. Now every refusal gets the `503` then.
#[tokio::test]
async fn while_the_lookups_are_full_every_inbox_is_refused_alike() {
    let database = Gated::default();
    let lookups = Arc::clone(&database.lookups);
    let gate = Arc::clone(&database.gate);
    let resolver = Arc::new(CachedResolver::new(database).max_lookups_in_flight(4));
    let layer = layer(Arc::clone(&resolver)).layer;
    let genuine = cost(
        &layer,
        &lookups,
        delivery("/webhooks", "whsec_inb_real", &message("inb_real")),
    )
    .await;
    assert_eq!(genuine.status, StatusCode::OK);
    // Out of the cache, but remembered as a tenant that verified.
    resolver.invalidate(&Tenant::Inbox("inb_real".to_owned()));

    // Two forgeries naming random inboxes hold the strangers' half of the lookups.
    let service = layer.layer(tower::service_fn(whoami));
    let flood: Vec<_> = (0..2)
        .map(|index| {
            tokio::spawn(service.clone().oneshot(delivery(
                "/webhooks",
                "whsec_forger",
                &message(&format!("inb_flood_{index}")),
            )))
        })
        .collect();
    while resolver.lookups_in_flight() < 2 {
        tokio::task::yield_now().await;
    }

    let verified_before = cost(
        &layer,
        &lookups,
        delivery("/webhooks", "whsec_forger", &message("inb_real")),
    )
    .await;
    let stranger = cost(
        &layer,
        &lookups,
        delivery("/webhooks", "whsec_forger", &message("inb_other")),
    )
    .await;
    let (verified_lookups, stranger_lookups) = (verified_before.lookups, stranger.lookups);
    assert_eq!(
        (verified_lookups, stranger_lookups),
        (1, 0),
        "the reserve is used"
    );
    let alike = |cost: Cost| Cost { lookups: 0, ..cost };
    assert_eq!(alike(verified_before), alike(stranger.clone()));
    assert_eq!(stranger.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        stranger
            .headers
            .contains(&("retry-after".to_owned(), "30".to_owned())),
        "{:?}",
        stranger.headers
    );
    assert_eq!(stranger.macs, 4);
    // A cached tenant's forgery is answered the same while the lookups are full.
    let cached = cost(
        &layer,
        &lookups,
        delivery("/webhooks", "whsec_forger", &message("inb_real")),
    )
    .await;
    assert_eq!(
        (cached.status, cached.macs, cached.lookups),
        (StatusCode::SERVICE_UNAVAILABLE, 4, 0)
    );
    // The reserve still serves the tenant's genuine deliveries.
    resolver.invalidate(&Tenant::Inbox("inb_real".to_owned()));
    let genuine = cost(
        &layer,
        &lookups,
        delivery("/webhooks", "whsec_inb_real", &message("inb_real")),
    )
    .await;
    assert_eq!(genuine.status, StatusCode::OK);

    gate.notify_waiters();
    for forged in flood {
        let status = forged.await.unwrap().unwrap().status();
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
    // The flood is over: refusals are told apart from a busy store again.
    let after = cost(
        &layer,
        &lookups,
        delivery("/webhooks", "whsec_forger", &message("inb_real")),
    )
    .await;
    assert_eq!(after.status, StatusCode::BAD_REQUEST);
}
