//! The Redis session store against a real `redis-server` on a free loopback port: records
//! with `PX` expiry, removal, the refresh lock across two store instances (two replicas),
//! token-checked unlock and renewal, bounded operations while Redis is frozen or stopped,
//! recovery after a restart on the same port, a Redis dump that shows no plaintext, and a
//! 3-master Redis Cluster where record and lock share a slot.
//!
//! Needs Debian's `redis-server` and `redis-cli` (`apt-get install -y redis-server`).

mod common;

use common::redis::{redis_cli, redis_cli_raw, RedisCluster, RedisServer};
use std::time::{Duration, Instant};

use meshgate_filters::bff::crypto::{SessionHandle, SessionKey};
use meshgate_filters::bff::redis_store::{
    lock_key, record_key, RedisSessionStore, DEFAULT_TIMEOUT,
};
use meshgate_filters::bff::store::SessionStore;
use ring::rand::SystemRandom;

/// Per-operation deadline for the functional tests: larger than the 50 ms default so a
/// loaded machine running a debug build does not turn slow answers into errors.
const TIMEOUT: Duration = Duration::from_millis(200);
/// What a failing operation may take beyond its timeout: scheduling noise, not waiting.
const SLACK: Duration = Duration::from_millis(100);

fn store(redis: &RedisServer) -> RedisSessionStore {
    RedisSessionStore::standalone(&redis.url())
        .expect("url")
        .with_timeout(TIMEOUT)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_saved_loaded_expired_and_removed() {
    let redis = RedisServer::start();
    let s = store(&redis);
    assert_eq!(s.load("nobody").await, Ok(None));

    s.save("a", b"sealed-1".to_vec(), Duration::from_millis(300))
        .await
        .expect("save");
    assert_eq!(
        s.load("a").await,
        Ok(Some(bytes::Bytes::from_static(b"sealed-1")))
    );
    assert!(s.is_connected());
    // Stored under the hash-tagged key, with a millisecond TTL.
    assert_eq!(
        redis_cli(redis.port, &["get", "mg:s:{a}"]).trim(),
        "sealed-1"
    );
    let pttl: i64 = redis_cli(redis.port, &["pttl", "mg:s:{a}"])
        .trim()
        .parse()
        .expect("pttl");
    assert!((1..=300).contains(&pttl), "PX ttl: {pttl}");
    // Saving again replaces the record and its TTL.
    s.save("a", b"sealed-2".to_vec(), secs(60))
        .await
        .expect("save");
    assert_eq!(
        s.load("a").await,
        Ok(Some(bytes::Bytes::from_static(b"sealed-2")))
    );
    s.save("b", b"short".to_vec(), Duration::from_millis(100))
        .await
        .expect("save");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(s.load("b").await, Ok(None), "expired by PX");
    assert_eq!(
        s.load("a").await,
        Ok(Some(bytes::Bytes::from_static(b"sealed-2")))
    );

    // Remove deletes the record and its lock; removing a missing key is fine.
    assert_eq!(s.try_lock("a", secs(30)).await, Ok(true));
    assert_eq!(
        redis_cli(redis.port, &["exists", &lock_key("a")]).trim(),
        "1"
    );
    s.remove("a").await.expect("remove");
    assert_eq!(s.load("a").await, Ok(None));
    assert_eq!(
        redis_cli(redis.port, &["exists", &record_key("a")]).trim(),
        "0"
    );
    assert_eq!(
        redis_cli(redis.port, &["exists", &lock_key("a")]).trim(),
        "0"
    );
    s.remove("a").await.expect("remove missing");
    // Binary values round-trip unchanged.
    let binary: Vec<u8> = (0..=255u8).collect();
    s.save("bin", binary.clone(), secs(60)).await.expect("save");
    assert_eq!(s.load("bin").await, Ok(Some(binary.into())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refresh_lock_admits_one_replica_and_only_the_holder_releases_it() {
    let redis = RedisServer::start();
    // Two replicas: two independent stores on one Redis.
    let (a, b) = (store(&redis), store(&redis));

    assert_eq!(a.try_lock("s", secs(30)).await, Ok(true));
    assert_eq!(b.try_lock("s", secs(30)).await, Ok(false), "held by a");
    assert_eq!(a.try_lock("s", secs(30)).await, Ok(false), "not re-entrant");
    // A non-holder's unlock does nothing.
    b.unlock("s").await.expect("unlock by non-holder");
    assert_eq!(
        b.try_lock("s", secs(30)).await,
        Ok(false),
        "still held by a"
    );
    assert_eq!(b.extend_lock("s", secs(30)).await, Ok(false));
    // The holder renews and releases it.
    assert_eq!(a.extend_lock("s", secs(60)).await, Ok(true));
    let pttl: i64 = redis_cli(redis.port, &["pttl", &lock_key("s")])
        .trim()
        .parse()
        .expect("pttl");
    assert!(pttl > 30_000, "renewed: {pttl}");
    a.unlock("s").await.expect("unlock");
    assert_eq!(b.try_lock("s", secs(30)).await, Ok(true), "released");
    b.unlock("s").await.expect("unlock");

    // 20 concurrent attempts over two replicas: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..20 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(
            async move { s.try_lock("race", secs(30)).await },
        ));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("task").expect("try_lock") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lock_is_free_and_its_slow_holder_cannot_release_the_next_one() {
    let redis = RedisServer::start();
    let (a, b) = (store(&redis), store(&redis));

    assert_eq!(a.try_lock("s", Duration::from_millis(100)).await, Ok(true));
    assert_eq!(b.try_lock("s", secs(30)).await, Ok(false));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // a's lock expired while a was slow: b takes it.
    assert_eq!(b.try_lock("s", secs(30)).await, Ok(true), "expired");
    let token = redis_cli(redis.port, &["get", &lock_key("s")]);
    // a wakes up and releases "its" lock: the token does not match, b keeps the lock.
    a.unlock("s").await.expect("stale unlock");
    assert_eq!(redis_cli(redis.port, &["get", &lock_key("s")]), token);
    assert_eq!(a.extend_lock("s", secs(30)).await, Ok(false));
    assert_eq!(
        a.try_lock("s", secs(30)).await,
        Ok(false),
        "b still holds it"
    );
    b.unlock("s").await.expect("unlock");
    assert_eq!(
        redis_cli(redis.port, &["exists", &lock_key("s")]).trim(),
        "0"
    );
}

/// Every operation once, each timed: all fail, none past the deadline plus slack.
async fn all_fail_within(s: &RedisSessionStore, timeout: Duration, what: &str) {
    for round in 0..3 {
        let ops: [(&str, Result<(), String>, Duration); 5] = [
            {
                let t = Instant::now();
                let r = s.load("k").await.map(|_| ()).map_err(|e| e.to_string());
                ("load", r, t.elapsed())
            },
            {
                let t = Instant::now();
                let r = s
                    .save("k", b"v".to_vec(), secs(60))
                    .await
                    .map_err(|e| e.to_string());
                ("save", r, t.elapsed())
            },
            {
                let t = Instant::now();
                let r = s.remove("k").await.map_err(|e| e.to_string());
                ("remove", r, t.elapsed())
            },
            {
                let t = Instant::now();
                let r = s
                    .try_lock("k", secs(5))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string());
                ("try_lock", r, t.elapsed())
            },
            {
                let t = Instant::now();
                let r = s.load("other").await.map(|_| ()).map_err(|e| e.to_string());
                ("load", r, t.elapsed())
            },
        ];
        for (op, r, took) in ops {
            eprintln!("{what}: {op} (round {round}) failed in {took:?}");
            assert!(r.is_err(), "{what}: {op} (round {round}) must fail: {r:?}");
            assert!(
                took < timeout + SLACK,
                "{what}: {op} (round {round}) took {took:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_fail_within_the_timeout_while_redis_is_down_and_recover_after_a_restart() {
    let mut redis = RedisServer::start();
    let s = RedisSessionStore::standalone(&redis.url()).expect("url");
    assert_eq!(s.timeout(), DEFAULT_TIMEOUT);
    let (a, b) = (store(&redis), store(&redis));
    s.save("k", b"v".to_vec(), secs(60)).await.expect("save");
    assert_eq!(a.try_lock("held", secs(60)).await, Ok(true));

    // Frozen: connections stay open, nothing answers. Only the deadline bounds this.
    redis.signal("STOP");
    all_fail_within(&s, DEFAULT_TIMEOUT, "frozen").await;
    redis.signal("CONT");
    let deadline = Instant::now() + secs(10);
    while s.load("k").await.is_err() {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Commands abandoned at the deadline may still run once Redis resumes (the frozen
    // round's `remove` did): a timeout means "unknown", which callers treat as failure.
    s.save("k", b"v2".to_vec(), secs(60)).await.expect("save");
    assert_eq!(
        s.load("k").await,
        Ok(Some(bytes::Bytes::from_static(b"v2")))
    );
    assert_eq!(
        b.try_lock("held", secs(60)).await,
        Ok(false),
        "a's lock survived"
    );

    // Stopped: connections reset, reconnects refused.
    redis.kill();
    all_fail_within(&s, DEFAULT_TIMEOUT, "stopped").await;
    all_fail_within(&b, TIMEOUT, "stopped").await;
    assert!(!s.is_connected());
    // Failing to release a lock is an error, not a hang.
    let t = Instant::now();
    assert!(a.unlock("held").await.is_err());
    assert!(t.elapsed() < TIMEOUT + SLACK);

    // Back on the same port (empty, without the scripts): no new store needed.
    let _redis = RedisServer::start_on(redis.port);
    let deadline = Instant::now() + secs(10);
    while s.load("k").await.is_err() {
        assert!(Instant::now() < deadline, "no recovery after restart");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(s.is_connected());
    assert_eq!(s.load("k").await, Ok(None), "the restarted Redis is empty");
    s.save("k", b"again".to_vec(), secs(60))
        .await
        .expect("save");
    assert_eq!(
        s.load("k").await,
        Ok(Some(bytes::Bytes::from_static(b"again")))
    );
    let deadline = Instant::now() + secs(10);
    while b.load("k").await.is_err() {
        assert!(Instant::now() < deadline, "replica b did not recover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Locks and the unlock script (EVALSHA → NOSCRIPT → EVAL) work again.
    assert_eq!(b.try_lock("k", secs(30)).await, Ok(true));
    assert_eq!(s.try_lock("k", secs(30)).await, Ok(false));
    b.unlock("k").await.expect("unlock");
    assert_eq!(s.try_lock("k", secs(30)).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dump_of_redis_shows_no_plaintext() {
    let redis = RedisServer::start();
    let s = store(&redis);
    let rng = SystemRandom::new();
    let key = SessionKey::from_base64("MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").expect("key");
    let handle = SessionHandle::generate(&rng).expect("handle");
    let plaintext = br#"{"access_token":"eyJhbGciOiJSUzI1NiJ9.plaintext-access.sig","refresh_token":"plaintext-refresh-0123456789"}"#;
    let sealed = handle.seal(&key, &rng, plaintext).expect("seal");
    s.save(&handle.store_key(), sealed.clone(), secs(60))
        .await
        .expect("save");
    assert_eq!(s.try_lock(&handle.store_key(), secs(60)).await, Ok(true));

    let keys = redis_cli(redis.port, &["--scan"]);
    let mut keys: Vec<&str> = keys
        .lines()
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            record_key(&handle.store_key()),
            lock_key(&handle.store_key())
        ],
        "only the record and its lock; the key is the id, never the secret"
    );
    let mut dump = Vec::new();
    for k in &keys {
        dump.extend_from_slice(k.as_bytes());
        dump.push(b'\n');
        dump.extend(redis_cli_raw(redis.port, &["--no-raw", "get", k]));
        dump.extend(redis_cli_raw(redis.port, &["--raw", "get", k]));
    }
    let contains = |needle: &[u8]| dump.windows(needle.len()).any(|w| w == needle);
    for needle in [
        &plaintext[..],
        b"plaintext-access",
        b"plaintext-refresh",
        b"access_token",
        handle
            .cookie_value()
            .split_once('.')
            .expect("secret")
            .1
            .as_bytes(),
    ] {
        assert!(
            !contains(needle),
            "dump contains {:?}",
            String::from_utf8_lossy(needle)
        );
    }
    assert!(contains(&sealed), "the dump does hold the sealed record");
    // And the stored bytes still open with the cookie's handle.
    let loaded = s
        .load(&handle.store_key())
        .await
        .expect("load")
        .expect("record");
    assert_eq!(handle.open(&key, &loaded).expect("open"), plaintext);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_and_locks_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let a = RedisSessionStore::cluster(&cluster.urls())
        .expect("nodes")
        .with_timeout(TIMEOUT);
    let b = RedisSessionStore::cluster(&cluster.urls()[1..])
        .expect("nodes")
        .with_timeout(TIMEOUT);
    let rng = SystemRandom::new();
    for i in 0..30 {
        let key = SessionHandle::generate(&rng).expect("handle").store_key();
        // Record and lock hash to the same slot, so one DEL covers both.
        let slot = |k: &str| redis_cli(cluster.nodes[0].port, &["cluster", "keyslot", k]);
        assert_eq!(slot(&record_key(&key)), slot(&lock_key(&key)), "{key}");
        let value = format!("sealed-{i}").into_bytes();
        a.save(&key, value.clone(), secs(60)).await.expect("save");
        assert_eq!(b.load(&key).await, Ok(Some(value.into())));
        assert_eq!(a.try_lock(&key, secs(30)).await, Ok(true));
        assert_eq!(b.try_lock(&key, secs(30)).await, Ok(false));
        b.unlock(&key).await.expect("non-holder unlock");
        assert_eq!(b.try_lock(&key, secs(30)).await, Ok(false));
        if i % 2 == 0 {
            a.unlock(&key).await.expect("unlock");
            assert_eq!(b.try_lock(&key, secs(30)).await, Ok(true));
        }
        b.remove(&key).await.expect("remove record and lock");
        assert_eq!(a.load(&key).await, Ok(None));
        assert_eq!(
            a.try_lock(&key, secs(30)).await,
            Ok(true),
            "lock removed too"
        );
        a.remove(&key).await.expect("remove");
    }
    let per_node: Vec<u64> = cluster
        .nodes
        .iter()
        .map(|n| redis_cli(n.port, &["dbsize"]).trim().parse().unwrap_or(0))
        .collect();
    assert_eq!(per_node.iter().sum::<u64>(), 0, "all removed: {per_node:?}");
}
