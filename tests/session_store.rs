//! One conformance suite for every `SessionStore`: the embedded store (with a clock the test
//! moves) and Redis (a real `redis-server` on a free port, where expiry takes a short real wait).

mod common;

use common::*;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wxgate::config::RedisTarget;
use wxgate::secret::Secret;
use wxgate::session::{
    Clock, Created, ManualClock, MemoryStore, Phone, RedisStore, Rotation, Session, SessionStore,
    SharedValue, SystemClock, RETIRED_KEPT,
};

struct Harness {
    store: Arc<dyn SessionStore>,
    /// A ttl that [`Harness::pass`] outlives.
    short_ttl: Duration,
    pass: Box<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>,
}

const LONG: Duration = Duration::from_secs(3600);

fn now_s() -> u64 {
    SystemClock.now_ms() / 1000
}

fn session(sid: &str, unionid: Option<&str>) -> Session {
    Session {
        sid: sid.into(),
        openid: format!("o-{sid}"),
        unionid: unionid.map(str::to_string),
        session_key: Secret::new("tiihtNczf5v6AKRyjwEUhQ=="),
        created_at: 1_700_000_000,
        refresh_hash: "hash-0".into(),
        retired: Vec::new(),
        phone: None,
    }
}

fn phone() -> Phone {
    Phone {
        phone_number: "+86 13800001111".into(),
        pure_phone_number: "13800001111".into(),
        country_code: "86".into(),
    }
}

async fn conformance(h: Harness) {
    let s = &*h.store;

    // create / get, with and without unionid; the session_key comes back intact.
    let a = session("sid-a", None);
    let b = session("sid-b", Some("u-b"));
    s.create(&a, LONG).await.unwrap();
    s.create(&b, LONG).await.unwrap();
    assert_eq!(s.get("sid-a").await.unwrap(), Some(a.clone()));
    assert_eq!(s.get("sid-b").await.unwrap(), Some(b.clone()));
    assert_eq!(s.get("sid-none").await.unwrap(), None);

    // rotate: the current hash swaps; an old one is reuse and revokes the session.
    let cursor = s.revocations_since(0).await.unwrap().cursor;
    let until = now_s() + 600;
    match s
        .rotate_refresh("sid-a", "hash-0", "hash-1", LONG, until)
        .await
        .unwrap()
    {
        Rotation::Rotated(got) => {
            assert_eq!(got.refresh_hash, "hash-1");
            assert_eq!(got.retired, vec!["hash-0".to_string()]);
        }
        other => panic!("expected Rotated, got {other:?}"),
    }
    assert_eq!(
        s.get("sid-a").await.unwrap().unwrap().refresh_hash,
        "hash-1"
    );
    // A token this session was never issued (anyone who read a `sid` can make one) is unknown
    // and ends nothing.
    assert_eq!(
        s.rotate_refresh("sid-a", "hash-forged", "hash-y", LONG, until)
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert_eq!(
        s.get("sid-a").await.unwrap().unwrap().refresh_hash,
        "hash-1",
        "a forged token changes nothing"
    );
    assert_eq!(
        s.rotate_refresh("sid-a", "hash-0", "hash-x", LONG, until)
            .await
            .unwrap(),
        Rotation::Reused
    );
    assert_eq!(s.get("sid-a").await.unwrap(), None, "reuse revokes");
    let batch = s.revocations_since(cursor).await.unwrap();
    assert_eq!(batch.revoked.len(), 1);
    assert_eq!(batch.revoked[0].sid, "sid-a");
    assert_eq!(batch.revoked[0].until, until);
    assert_eq!(
        s.rotate_refresh("sid-a", "hash-1", "hash-2", LONG, until)
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert_eq!(
        s.rotate_refresh("sid-never", "h", "h2", LONG, until)
            .await
            .unwrap(),
        Rotation::Unknown
    );

    // revoke: gone, listed once after the cursor, not again after the new cursor.
    let cursor = batch.cursor;
    s.revoke("sid-b", until).await.unwrap();
    assert_eq!(s.get("sid-b").await.unwrap(), None);
    let batch = s.revocations_since(cursor).await.unwrap();
    assert_eq!(
        batch
            .revoked
            .iter()
            .map(|r| r.sid.as_str())
            .collect::<Vec<_>>(),
        vec!["sid-b"]
    );
    assert!(batch.cursor > cursor);
    assert!(s
        .revocations_since(batch.cursor)
        .await
        .unwrap()
        .revoked
        .is_empty());
    // From the start: every revocation still in force.
    let all = s.revocations_since(0).await.unwrap();
    let mut sids: Vec<_> = all.revoked.iter().map(|r| r.sid.clone()).collect();
    sids.sort();
    assert_eq!(sids, vec!["sid-a", "sid-b"]);
    // Revocations already over are not listed.
    s.revoke("sid-old", now_s().saturating_sub(10))
        .await
        .unwrap();
    assert!(!s
        .revocations_since(0)
        .await
        .unwrap()
        .revoked
        .iter()
        .any(|r| r.sid == "sid-old"));

    // Concurrent refreshes with one token: exactly one wins.
    s.create(&session("sid-c", None), LONG).await.unwrap();
    let results = futures::future::join_all((0..5).map(|i| {
        s.rotate_refresh(
            "sid-c",
            "hash-0",
            if i == 0 { "n0" } else { "n" },
            LONG,
            until,
        )
    }))
    .await;
    let rotated = results
        .iter()
        .filter(|r| matches!(r, Ok(Rotation::Rotated(_))))
        .count();
    assert_eq!(rotated, 1, "{results:?}");

    // The phone number joins a live session only.
    s.create(&session("sid-p", None), LONG).await.unwrap();
    assert!(s.set_phone("sid-p", &phone()).await.unwrap());
    assert_eq!(s.get("sid-p").await.unwrap().unwrap().phone, Some(phone()));
    assert!(!s.set_phone("sid-gone", &phone()).await.unwrap());
    assert_eq!(
        s.get("sid-gone").await.unwrap(),
        None,
        "set_phone creates nothing"
    );
    let with_phone = Session {
        phone: Some(phone()),
        ..session("sid-p2", None)
    };
    s.create(&with_phone, LONG).await.unwrap();
    assert_eq!(s.get("sid-p2").await.unwrap(), Some(with_phone));

    // Shared values: put, get, compare-and-delete.
    let now = SystemClock.now_ms();
    let v = SharedValue {
        value: "tok-1".into(),
        expires_at_ms: now + 60_000,
        refresh_at_ms: now + 30_000,
    };
    assert_eq!(s.get_shared("access_token").await.unwrap(), None);
    s.put_shared("access_token", &v).await.unwrap();
    assert_eq!(s.get_shared("access_token").await.unwrap(), Some(v.clone()));
    s.delete_shared("access_token", "tok-other").await.unwrap();
    assert_eq!(s.get_shared("access_token").await.unwrap(), Some(v.clone()));
    s.delete_shared("access_token", "tok-1").await.unwrap();
    assert_eq!(s.get_shared("access_token").await.unwrap(), None);
    // A minute ago on the wall clock: also past for the memory store's manual clock, which
    // started at the wall clock's time when the test began and only moves forward.
    let past = SharedValue {
        expires_at_ms: now.saturating_sub(60_000),
        ..v.clone()
    };
    s.put_shared("old", &past).await.unwrap();
    assert_eq!(
        s.get_shared("old").await.unwrap(),
        None,
        "expired values are not served"
    );

    // Locks: one holder at a time; unlock needs the holder's token.
    let t1 = s.try_lock("fetch", LONG).await.unwrap().expect("free lock");
    assert_eq!(s.try_lock("fetch", LONG).await.unwrap(), None);
    s.unlock("fetch", "not-the-token").await.unwrap();
    assert_eq!(s.try_lock("fetch", LONG).await.unwrap(), None);
    s.unlock("fetch", &t1).await.unwrap();
    let t2 = s
        .try_lock("fetch", h.short_ttl)
        .await
        .unwrap()
        .expect("released");
    assert_ne!(t1, t2);

    // Revoking a user: every session of that openid ends and is listed as revoked; the user's
    // other sessions, and other users, are untouched; a new login works afterwards.
    let of = |sid: &str, openid: &str| Session {
        openid: openid.into(),
        ..session(sid, None)
    };
    for sid in ["u1-a", "u1-b", "u1-c"] {
        assert_eq!(
            s.create(&of(sid, "o-user1"), LONG).await.unwrap(),
            Created::Stored
        );
    }
    s.create(&of("u2-a", "o-user2"), LONG).await.unwrap();
    s.revoke("u1-c", until).await.unwrap();
    let cursor = s.revocations_since(0).await.unwrap().cursor;
    assert_eq!(
        s.revoke_user("o-user1", until, None).await.unwrap(),
        2,
        "live ones"
    );
    for sid in ["u1-a", "u1-b"] {
        assert_eq!(s.get(sid).await.unwrap(), None);
    }
    assert!(s.get("u2-a").await.unwrap().is_some());
    let mut listed: Vec<_> = s
        .revocations_since(cursor)
        .await
        .unwrap()
        .revoked
        .into_iter()
        .map(|r| {
            assert_eq!(r.until, until);
            r.sid
        })
        .collect();
    listed.sort();
    listed.dedup();
    assert!(listed.contains(&"u1-a".to_string()) && listed.contains(&"u1-b".to_string()));
    assert!(!listed.contains(&"u2-a".to_string()), "{listed:?}");
    assert_eq!(
        s.revoke_user("o-user1", until, None).await.unwrap(),
        0,
        "index gone"
    );
    assert_eq!(s.revoke_user("o-nobody", until, None).await.unwrap(), 0);
    assert_eq!(
        s.create(&of("u1-d", "o-user1"), LONG).await.unwrap(),
        Created::Stored
    );
    assert!(s.get("u1-d").await.unwrap().is_some(), "logs in again");

    // A block refuses the user's new sessions, atomically with the check, until it ends.
    let block_until_ms = SystemClock.now_ms() + h.short_ttl.as_millis() as u64;
    assert_eq!(
        s.revoke_user("o-user1", until, Some(block_until_ms))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.create(&of("u1-e", "o-user1"), LONG).await.unwrap(),
        Created::Blocked {
            until_ms: block_until_ms
        }
    );
    assert_eq!(s.get("u1-e").await.unwrap(), None, "nothing stored");
    assert_eq!(
        s.create(&of("u2-b", "o-user2"), LONG).await.unwrap(),
        Created::Stored
    );

    // Expiry; and a refresh gives the session its ttl again.
    s.create(&session("sid-short", None), h.short_ttl)
        .await
        .unwrap();
    s.create(&session("sid-kept", None), h.short_ttl)
        .await
        .unwrap();
    assert!(matches!(
        s.rotate_refresh("sid-kept", "hash-0", "hash-1", LONG, until)
            .await
            .unwrap(),
        Rotation::Rotated(_)
    ));
    (h.pass)().await;
    assert_eq!(s.get("sid-short").await.unwrap(), None, "expired");
    assert_eq!(
        s.rotate_refresh("sid-short", "hash-0", "x", LONG, until)
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert!(
        s.get("sid-kept").await.unwrap().is_some(),
        "refresh restarted the ttl"
    );
    assert_eq!(
        s.create(&of("u1-f", "o-user1"), LONG).await.unwrap(),
        Created::Stored,
        "the block ended"
    );

    // The retired tokens remembered are the last RETIRED_KEPT: an older one is unknown.
    s.create(&session("sid-r", None), LONG).await.unwrap();
    for i in 0..RETIRED_KEPT + 1 {
        let (from, to) = (format!("hash-{i}"), format!("hash-{}", i + 1));
        let rotated = s.rotate_refresh("sid-r", &from, &to, LONG, until).await;
        assert!(matches!(rotated, Ok(Rotation::Rotated(_))), "{rotated:?}");
    }
    let kept = s.get("sid-r").await.unwrap().unwrap().retired;
    assert_eq!(kept.len(), RETIRED_KEPT);
    assert_eq!(kept[0], format!("hash-{RETIRED_KEPT}"), "newest first");
    assert_eq!(
        s.rotate_refresh("sid-r", "hash-0", "x", LONG, until)
            .await
            .unwrap(),
        Rotation::Unknown
    );
    assert_eq!(
        s.rotate_refresh("sid-r", "hash-1", "x", LONG, until)
            .await
            .unwrap(),
        Rotation::Reused
    );
    assert_eq!(s.get("sid-r").await.unwrap(), None, "reuse revokes");
}

#[tokio::test]
async fn memory_store_conforms() {
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let store = Arc::new(MemoryStore::with_clock(1000, clock.clone()));
    assert!(!store.is_shared());
    conformance(Harness {
        store,
        short_ttl: Duration::from_secs(60),
        pass: Box::new(move || {
            let clock = clock.clone();
            Box::pin(async move { clock.advance_ms(61_000) })
        }),
    })
    .await;
}

fn redis_store(redis: &Proc, appid: &str) -> Arc<RedisStore> {
    let url = Secret::new(format!("redis://{}/", redis.addr));
    Arc::new(RedisStore::new(&url, appid, Duration::from_millis(500)).unwrap())
}

#[tokio::test]
async fn redis_store_conforms() {
    let redis = redis_server();
    let store = redis_store(&redis, "wxconformance");
    assert!(store.is_shared());
    conformance(Harness {
        store,
        short_ttl: Duration::from_millis(300),
        pass: Box::new(|| Box::pin(tokio::time::sleep(Duration::from_millis(450)))),
    })
    .await;
}

#[tokio::test]
async fn redis_keys_are_namespaced_by_appid() {
    let redis = redis_server();
    let one = redis_store(&redis, "wxone");
    let two = redis_store(&redis, "wxtwo");
    one.create(&session("same-sid", None), LONG).await.unwrap();
    assert!(two.get("same-sid").await.unwrap().is_none());
    one.revoke("same-sid", now_s() + 60).await.unwrap();
    assert!(two.revocations_since(0).await.unwrap().revoked.is_empty());
    assert_eq!(one.revocations_since(0).await.unwrap().revoked.len(), 1);
}

/// The user index outlives a refreshed session: a refresh restarts the index's ttl too.
#[tokio::test]
async fn redis_user_index_follows_refreshes() {
    let redis = redis_server();
    let store = redis_store(&redis, "wxindex");
    let short = Duration::from_millis(400);
    store.create(&session("s1", None), short).await.unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let rotated = store
        .rotate_refresh("s1", "hash-0", "hash-1", short, now_s() + 60)
        .await
        .unwrap();
    assert!(matches!(rotated, Rotation::Rotated(_)), "{rotated:?}");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(store.get("s1").await.unwrap().is_some());
    assert_eq!(
        store.revoke_user("o-s1", now_s() + 60, None).await.unwrap(),
        1,
        "the index lived as long as the session"
    );
}

#[tokio::test]
async fn redis_outage_fails_fast_and_recovers_without_a_restart() {
    let port = free_port();
    let redis = redis_on(port);
    let store = redis_store(&redis, "wxoutage");
    store.create(&session("s1", None), LONG).await.unwrap();
    drop(redis);

    let started = Instant::now();
    assert!(store.get("s1").await.is_err());
    assert!(store.create(&session("s2", None), LONG).await.is_err());
    assert!(store.revocations_since(0).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let _back = redis_on(port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if store.create(&session("s3", None), LONG).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the store did not reconnect");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.get("s3").await.unwrap().is_some());
    // The new server starts empty: a cursor from before must not hide its revocations.
    store.revoke("s3", now_s() + 60).await.unwrap();
    assert_eq!(store.revocations_since(99).await.unwrap().revoked.len(), 1);
}

/// With passwords on the sentinel and the servers, and database 1 on the primary.
#[tokio::test]
async fn redis_sentinel_store_conforms() {
    let set = SentinelSet::start_with(Some("sentinel-pw"));
    let target = RedisTarget::Sentinel {
        sentinels: vec![Secret::new(format!(
            "redis://:sentinel-pw@{}/",
            set.sentinel.addr
        ))],
        primary: Secret::new(format!("redis://:sentinel-pw@{SENTINEL_PRIMARY}/1")),
    };
    let store = Arc::new(
        RedisStore::for_target(&target, "wxsentinel", Duration::from_millis(500)).unwrap(),
    );
    assert!(store.is_shared());
    conformance(Harness {
        store,
        short_ttl: Duration::from_millis(300),
        pass: Box::new(|| Box::pin(tokio::time::sleep(Duration::from_millis(450)))),
    })
    .await;
    let primary = set.primary.as_ref().expect("primary").addr.port();
    let pw = Some("sentinel-pw");
    let in_db1 = redis_cli_as(primary, pw, &["-n", "1", "KEYS", "wxgate:*"]);
    assert!(in_db1.lines().count() >= 3, "{in_db1}");
    let in_db0 = redis_cli_as(primary, pw, &["KEYS", "wxgate:*"]);
    assert_eq!(in_db0.trim(), "", "database 1 only");
}

/// With a password on every node.
#[tokio::test]
async fn redis_cluster_store_conforms() {
    let cluster = Cluster::start_with(Some("cluster-pw"));
    let target = RedisTarget::Cluster {
        nodes: vec![Secret::new(cluster.urls()[2].clone())],
    };
    let store =
        Arc::new(RedisStore::for_target(&target, "wxcluster", Duration::from_millis(500)).unwrap());
    conformance(Harness {
        store: store.clone(),
        short_ttl: Duration::from_millis(300),
        pass: Box::new(|| Box::pin(tokio::time::sleep(Duration::from_millis(450)))),
    })
    .await;
    // Every key the suite left shares the app's slot, on the one primary that serves it.
    let pw = Some("cluster-pw");
    let port = cluster.primary_of("wxgate:{wxcluster}:revoked");
    let keys = redis_cli_as(port, pw, &["KEYS", "wxgate:*"]);
    assert!(keys.lines().count() >= 3, "{keys}");
    let slot = redis_cli_as(
        port,
        pw,
        &["CLUSTER", "KEYSLOT", "wxgate:{wxcluster}:revoked"],
    );
    for key in keys.lines() {
        assert_eq!(
            redis_cli_as(port, pw, &["CLUSTER", "KEYSLOT", key]),
            slot,
            "{key}"
        );
    }
}
