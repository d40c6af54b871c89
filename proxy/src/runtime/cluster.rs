//! Clusters at runtime: endpoints, their shared health and load state, and endpoint choice.
//!
//! Endpoint state (health, in-flight count) must survive config reloads, so it lives in an
//! [`EndpointRegistry`] keyed by cluster name and endpoint address; each compiled cluster
//! holds `Arc`s into it, which keeps the request path lock-free.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderName;

use super::resilience::breaker::{Admit, Breaker, BreakerPolicy, BreakerState, Transition};
use super::resilience::outlier::{OutlierPolicy, OutlierState};
use crate::config::spec::{ClusterSpec, HealthCheckSpec, LoadBalancingSpec, ProtocolSpec};
use crate::metrics::METRICS;

/// Health and load of one endpoint, shared across config generations.
#[derive(Debug)]
pub struct EndpointState {
    healthy: AtomicBool,
    in_flight: AtomicUsize,
    /// Consecutive probe results in the current direction (failures while healthy,
    /// successes while unhealthy); reset when the state flips.
    streak: AtomicU32,
    /// Circuit breaker (used when the cluster configures one).
    pub breaker: Breaker,
    /// Outlier ejection (used when the cluster configures it).
    pub outlier: OutlierState,
}

impl Default for EndpointState {
    fn default() -> Self {
        Self {
            healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            streak: AtomicU32::new(0),
            breaker: Breaker::default(),
            outlier: OutlierState::default(),
        }
    }
}

impl EndpointState {
    /// Whether the endpoint currently receives traffic.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Requests currently in flight to this endpoint.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records one probe result; returns `Some(new_health)` when the endpoint flipped.
    pub fn record_probe(&self, ok: bool, unhealthy_after: u32, healthy_after: u32) -> Option<bool> {
        let healthy = self.is_healthy();
        if ok == healthy {
            self.streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if healthy {
            unhealthy_after
        } else {
            healthy_after
        };
        if streak >= needed {
            self.healthy.store(ok, Ordering::Relaxed);
            self.streak.store(0, Ordering::Relaxed);
            Some(ok)
        } else {
            None
        }
    }
}

/// Keeps endpoint state alive across reloads.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    states: Mutex<HashMap<(String, String), Arc<EndpointState>>>,
}

impl EndpointRegistry {
    /// The state for `endpoint` of `cluster`, created healthy on first use.
    pub fn state(&self, cluster: &str, endpoint: &str) -> Arc<EndpointState> {
        let mut map = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry((cluster.to_string(), endpoint.to_string()))
            .or_default()
            .clone()
    }

    /// Forgets endpoints no longer in any cluster of the current config.
    pub fn retain(&self, live: &std::collections::HashSet<(String, String)>) {
        let mut map = self
            .states
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.retain(|k, _| live.contains(k));
    }
}

/// One upstream endpoint of a cluster.
#[derive(Debug)]
pub struct Endpoint {
    /// The address as written in the config (`host:port`), for logs and metrics.
    pub name: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// Shared health and load state.
    pub state: Arc<EndpointState>,
}

/// How a compiled cluster picks endpoints.
#[derive(Debug)]
enum Balancer {
    RoundRobin(AtomicUsize),
    LeastRequest,
    Random,
    Hash(HeaderName),
}

/// A compiled cluster.
#[derive(Debug)]
pub struct Cluster {
    /// Cluster name (metrics label).
    pub name: Arc<str>,
    /// Endpoints in config order.
    pub endpoints: Vec<Endpoint>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Upstream protocol.
    pub protocol: ProtocolSpec,
    /// Active health checking, if configured.
    pub health_check: Option<HealthCheckSpec>,
    /// Circuit breaker settings, if configured.
    pub breaker: Option<BreakerPolicy>,
    /// Outlier ejection settings, if configured.
    pub outlier: Option<OutlierPolicy>,
    /// mTLS to the endpoints, if configured (set by the runtime compiler, which has the
    /// config file's directory).
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    balancer: Balancer,
}

/// Result of choosing an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// Use endpoint `index`; `probe` when it is a half-open breaker probe.
    Endpoint {
        /// Endpoint index in the cluster.
        index: usize,
        /// The attempt is a half-open probe.
        probe: bool,
    },
    /// Every endpoint's breaker is open: refuse at once; the earliest may admit after this.
    BreakerOpen {
        /// Time until the first breaker half-opens.
        retry_after: Duration,
    },
    /// No healthy endpoint is left.
    NoneHealthy,
}

/// What an attempt came to, for breakers and outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(u16),
    /// Connect failure, reset or timeout.
    Failure,
}

impl Cluster {
    /// Compiles a cluster; resolution failures come back as messages for `endpoints[i]`.
    pub fn compile(
        name: &str,
        spec: &ClusterSpec,
        registry: &EndpointRegistry,
    ) -> Result<Self, Vec<(usize, String)>> {
        let mut endpoints = Vec::with_capacity(spec.endpoints.len());
        let mut errors = Vec::new();
        for (i, ep) in spec.endpoints.iter().enumerate() {
            match resolve(ep) {
                Ok(addr) => endpoints.push(Endpoint {
                    name: ep.clone(),
                    addr,
                    state: registry.state(name, ep),
                }),
                Err(e) => errors.push((i, e)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let balancer = match &spec.load_balancing {
            LoadBalancingSpec::RoundRobin => {
                Balancer::RoundRobin(AtomicUsize::new(fastrand::usize(..)))
            }
            LoadBalancingSpec::LeastRequest => Balancer::LeastRequest,
            LoadBalancingSpec::Random => Balancer::Random,
            LoadBalancingSpec::HashHeader(h) => match HeaderName::from_bytes(h.as_bytes()) {
                Ok(h) => Balancer::Hash(h),
                Err(_) => return Err(vec![(0, format!("invalid header name {h:?}"))]),
            },
        };
        Ok(Self {
            name: name.into(),
            endpoints,
            connect_timeout: spec.connect_timeout.get(),
            protocol: spec.protocol,
            health_check: spec.health_check.clone(),
            breaker: spec.circuit_breaker.as_ref().map(BreakerPolicy::new),
            outlier: spec.outlier_detection.as_ref().map(OutlierPolicy::new),
            tls: None,
            balancer,
        })
    }

    /// Picks an endpoint honouring health, outlier ejection and circuit breakers, skipping
    /// `exclude` (endpoints that already failed this request) — unless only excluded
    /// endpoints are left, in which case one of them is better than failing outright.
    pub fn choose<'h>(
        &self,
        exclude: &[usize],
        now: Instant,
        header: impl Fn(&HeaderName) -> Option<&'h [u8]> + Copy,
    ) -> Pick {
        let first = self.choose_excluding(exclude, now, header);
        if first == Pick::NoneHealthy && !exclude.is_empty() {
            return self.choose_excluding(&[], now, header);
        }
        first
    }

    fn choose_excluding<'h>(
        &self,
        exclude: &[usize],
        now: Instant,
        header: impl Fn(&HeaderName) -> Option<&'h [u8]> + Copy,
    ) -> Pick {
        let Some(policy) = &self.breaker else {
            let ejected = |i: usize| self.is_ejected(i, now);
            return match self.pick_where(exclude, header, ejected) {
                Some(index) => Pick::Endpoint {
                    index,
                    probe: false,
                },
                None => Pick::NoneHealthy,
            };
        };
        // Refused candidates are added locally so the balancer moves on; the common case
        // (all closed) never allocates.
        let mut refused: Vec<usize> = Vec::new();
        let mut retry_after: Option<Duration> = None;
        loop {
            let blocked = |i: usize| {
                refused.contains(&i)
                    || self.is_ejected(i, now)
                    || !self.endpoints[i].state.breaker.would_admit(policy, now)
            };
            let Some(i) = self.pick_where(exclude, header, blocked) else {
                break;
            };
            let (admit, transition) = self.endpoints[i].state.breaker.try_acquire(policy, now);
            if let Some(t) = transition {
                self.breaker_transition(i, t);
            }
            match admit {
                Admit::Yes { probe } => return Pick::Endpoint { index: i, probe },
                Admit::No { retry_after: ra } => {
                    retry_after = Some(retry_after.map_or(ra, |r| r.min(ra)));
                    refused.push(i);
                }
            }
        }
        // Breaker answer only when every endpoint is held back by its breaker.
        let mut earliest = retry_after;
        for (i, ep) in self.endpoints.iter().enumerate() {
            match ep.state.breaker.refusing(policy, now) {
                Some(ra) => earliest = Some(earliest.map_or(ra, |r| r.min(ra))),
                None if refused.contains(&i) => {}
                None => return Pick::NoneHealthy,
            }
        }
        match earliest {
            Some(retry_after) => Pick::BreakerOpen { retry_after },
            None => Pick::NoneHealthy,
        }
    }

    fn is_ejected(&self, i: usize, now: Instant) -> bool {
        self.outlier.is_some() && self.endpoints[i].state.outlier.is_ejected(now)
    }

    /// Records what an attempt to endpoint `i` came to; `probe` when it was a breaker probe.
    pub fn record(&self, i: usize, outcome: Outcome, probe: bool, now: Instant) {
        let Some(ep) = self.endpoints.get(i) else {
            return;
        };
        if let Some(policy) = &self.breaker {
            let ok = match outcome {
                Outcome::Status(s) => !policy.is_failure_status(s),
                Outcome::Failure => false,
            };
            if let Some(t) = ep.state.breaker.record(policy, now, ok, probe) {
                self.breaker_transition(i, t);
            }
        }
        if let Some(policy) = &self.outlier {
            match outcome {
                Outcome::Status(s) if s < 500 => ep.state.outlier.record_success(),
                _ => {
                    let ejected = (0..self.endpoints.len())
                        .filter(|&j| self.is_ejected(j, now))
                        .count();
                    if let Some(d) =
                        ep.state
                            .outlier
                            .record_failure(policy, now, ejected, self.endpoints.len())
                    {
                        METRICS
                            .ejections
                            .with_label_values(&[&self.name, ep.name.as_str()])
                            .inc();
                        tracing::warn!(cluster = %self.name, endpoint = %ep.name, ejected_for = ?d, "endpoint ejected by outlier detection");
                    }
                }
            }
        }
    }

    /// Gives back a half-open probe slot whose attempt never produced an outcome.
    pub fn cancel_probe(&self, i: usize) {
        if let Some(ep) = self.endpoints.get(i) {
            ep.state.breaker.cancel_probe();
        }
    }

    fn breaker_transition(&self, i: usize, t: Transition) {
        let ep = &self.endpoints[i];
        METRICS
            .breaker_state
            .with_label_values(&[&self.name, ep.name.as_str()])
            .set(t.to.gauge());
        METRICS
            .breaker_transitions
            .with_label_values(&[&self.name, ep.name.as_str(), t.to.label()])
            .inc();
        if t.to == BreakerState::Open {
            tracing::warn!(cluster = %self.name, endpoint = %ep.name, from = t.from.label(), "circuit breaker opened");
        } else {
            tracing::info!(cluster = %self.name, endpoint = %ep.name, from = t.from.label(), to = t.to.label(), "circuit breaker transition");
        }
    }

    /// Runs the balancer over endpoints that are healthy, not in `exclude` and not
    /// `blocked`. `header` looks up request headers for hash balancing.
    fn pick_where<'h>(
        &self,
        exclude: &[usize],
        header: impl Fn(&HeaderName) -> Option<&'h [u8]>,
        blocked: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let usable = |i: usize| {
            self.endpoints
                .get(i)
                .is_some_and(|e| e.state.is_healthy() && !exclude.contains(&i) && !blocked(i))
        };
        let n = self.endpoints.len();
        if n == 0 {
            return None;
        }
        match &self.balancer {
            Balancer::RoundRobin(next) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Balancer::Random => {
                let start = fastrand::usize(..n);
                (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
            }
            Balancer::LeastRequest => {
                // Power of two choices would scale better; with the handful of endpoints a
                // cluster has, a full scan from a random start is exact and as cheap.
                let start = fastrand::usize(..n);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|&i| usable(i))
                    .min_by_key(|&i| self.endpoints[i].state.in_flight())
            }
            Balancer::Hash(name) => match header(name) {
                // Rendezvous hashing: a key keeps its endpoint as long as that endpoint is
                // usable, and only the keys of a removed endpoint move.
                Some(key) => (0..n).filter(|&i| usable(i)).max_by_key(|&i| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    key.hash(&mut h);
                    self.endpoints[i].name.hash(&mut h);
                    h.finish()
                }),
                None => {
                    let start = fastrand::usize(..n);
                    (0..n).map(|k| (start + k) % n).find(|&i| usable(i))
                }
            },
        }
    }
}

/// Marks a request in flight on an endpoint for least-request balancing; decrements on drop.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointState>);

impl InFlight {
    /// Starts counting a request on `state`.
    pub fn start(state: &Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        Self(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn resolve(ep: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = ep.parse::<SocketAddr>() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    ep.to_socket_addrs()
        .map_err(|e| format!("cannot resolve {ep:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{ep:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(lb: &str, n: usize) -> Cluster {
        let spec: ClusterSpec = serde_json::from_value(serde_json::json!({
            "endpoints": (0..n).map(|i| format!("127.0.0.1:{}", 4000 + i)).collect::<Vec<_>>(),
            "load_balancing": lb,
        }))
        .expect("spec");
        Cluster::compile("c", &spec, &EndpointRegistry::default()).expect("compile")
    }

    fn pick<'h>(
        c: &Cluster,
        exclude: &[usize],
        header: impl Fn(&HeaderName) -> Option<&'h [u8]>,
    ) -> Option<usize> {
        c.pick_where(exclude, header, |_| false)
    }

    #[test]
    fn round_robin_cycles_and_skips_unhealthy_and_excluded() {
        let c = cluster("round_robin", 3);
        let picks: Vec<_> = (0..6).filter_map(|_| pick(&c, &[], |_| None)).collect();
        for i in 0..3 {
            assert_eq!(picks.iter().filter(|&&p| p == i).count(), 2);
        }
        c.endpoints[1].state.healthy.store(false, Ordering::Relaxed);
        for _ in 0..10 {
            let p = pick(&c, &[0], |_| None);
            assert_eq!(p, Some(2));
        }
        assert_eq!(pick(&c, &[0, 2], |_| None), None);
    }

    #[test]
    fn hash_is_sticky_and_moves_only_removed_keys() {
        let c = cluster("hash(header:x-user)", 4);
        let name = HeaderName::from_static("x-user");
        let keys: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
        let first: Vec<_> = keys
            .iter()
            .map(|k| pick(&c, &[], |h| (h == name).then_some(k.as_bytes())))
            .collect();
        let again: Vec<_> = keys
            .iter()
            .map(|k| pick(&c, &[], |h| (h == name).then_some(k.as_bytes())))
            .collect();
        assert_eq!(first, again);
        c.endpoints[2].state.healthy.store(false, Ordering::Relaxed);
        for (k, before) in keys.iter().zip(&first) {
            let after = pick(&c, &[], |h| (h == name).then_some(k.as_bytes()));
            if *before != Some(2) {
                assert_eq!(after, *before, "key {k} moved although its endpoint stayed");
            } else {
                assert_ne!(after, Some(2));
            }
        }
    }

    #[test]
    fn least_request_prefers_idle_endpoint() {
        let c = cluster("least_request", 2);
        let _busy = InFlight::start(&c.endpoints[0].state);
        for _ in 0..10 {
            assert_eq!(pick(&c, &[], |_| None), Some(1));
        }
    }

    #[test]
    fn probes_flip_state_after_thresholds() {
        let s = EndpointState::default();
        assert_eq!(s.record_probe(false, 2, 1), None);
        assert_eq!(s.record_probe(false, 2, 1), Some(false));
        assert!(!s.is_healthy());
        assert_eq!(s.record_probe(true, 2, 1), Some(true));
        assert!(s.is_healthy());
    }
}
