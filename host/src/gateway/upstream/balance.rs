//! The strategies that pick a backend, without I/O: which backends are
//! available comes in as a bit mask, so a pick is a few atomic operations
//! and no lock.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::config::Strategy;

/// Most backends an upstream may have (one bit each in a `u64` mask).
pub const MAX_BACKENDS: usize = 64;

/// Picks backends of one upstream by its strategy.
pub struct Balancer {
    strategy: Strategy,
    weights: Vec<u32>,
    /// Each backend's identity for rendezvous hashing, from its target (not
    /// its position), so reordering the manifest moves no client.
    keys: Vec<u64>,
    /// Turns taken: the position in round robin and weighted schedules, and
    /// where least connections starts among ties.
    turn: AtomicU64,
    /// The smooth weighted schedule of the last availability mask seen.
    schedule: ArcSwap<Schedule>,
}

/// One cycle of smooth weighted round robin over the backends in `mask`.
struct Schedule {
    mask: u64,
    order: Vec<u8>,
}

impl Balancer {
    /// A balancer for backends with these weights and targets (at most
    /// [`MAX_BACKENDS`]; weights at least 1).
    pub fn new(strategy: Strategy, weights: Vec<u32>, targets: &[String]) -> Balancer {
        assert!(weights.len() <= MAX_BACKENDS && weights.len() == targets.len());
        let full = mask_of(weights.len());
        let schedule = Schedule {
            mask: full,
            order: smooth_weighted(&weights, full),
        };
        Balancer {
            strategy,
            keys: targets.iter().map(|t| mix(fnv1a(t.as_bytes()))).collect(),
            weights,
            turn: AtomicU64::new(0),
            schedule: ArcSwap::from_pointee(schedule),
        }
    }

    /// The backend for the next request among those in `available` (bit i
    /// set: backend i may be picked), or `None` when none is.
    /// `in_flight(i)` is backend i's requests in flight (least connections).
    pub fn pick(
        &self,
        available: u64,
        client: IpAddr,
        in_flight: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        if available == 0 {
            return None;
        }
        Some(match self.strategy {
            Strategy::RoundRobin => {
                let n = available.count_ones() as u64;
                nth_bit(available, (self.next_turn() % n) as u32)
            }
            Strategy::Weighted => {
                let turn = self.next_turn();
                let current = self.schedule.load();
                if current.mask == available {
                    usize::from(current.order[(turn % current.order.len() as u64) as usize])
                } else {
                    // Availability changed (rare): the new set's schedule.
                    let schedule = Schedule {
                        mask: available,
                        order: smooth_weighted(&self.weights, available),
                    };
                    let at = (turn % schedule.order.len() as u64) as usize;
                    let picked = usize::from(schedule.order[at]);
                    self.schedule.store(Arc::new(schedule));
                    picked
                }
            }
            Strategy::LeastConnections => self.least_connections(available, in_flight),
            Strategy::IpHash => self.rendezvous(available, client),
        })
    }

    /// Another backend for a request whose first pick, `failed`, could not
    /// be reached: the client's next rendezvous choice under ip_hash, the
    /// least loaded other under least connections, else the next available
    /// one after `failed` in manifest order. Takes no turn, so a retry does
    /// not shift the rotation of other requests.
    pub fn pick_other(
        &self,
        available: u64,
        failed: usize,
        client: IpAddr,
        in_flight: impl Fn(usize) -> u64,
    ) -> Option<usize> {
        let rest = available & !(1u64 << failed);
        if rest == 0 {
            return None;
        }
        Some(match self.strategy {
            Strategy::IpHash => self.rendezvous(rest, client),
            Strategy::LeastConnections => self.least_connections(rest, in_flight),
            Strategy::RoundRobin | Strategy::Weighted => {
                let after = rest & !mask_of(failed + 1);
                let from = if after != 0 { after } else { rest };
                from.trailing_zeros() as usize
            }
        })
    }

    fn next_turn(&self) -> u64 {
        self.turn.fetch_add(1, Ordering::Relaxed)
    }

    /// Fewest in flight; ties take turns.
    fn least_connections(&self, available: u64, in_flight: impl Fn(usize) -> u64) -> usize {
        let mut least = u64::MAX;
        let mut ties = 0u64;
        for i in bits(available) {
            let n = in_flight(i);
            if n < least {
                least = n;
                ties = 1u64 << i;
            } else if n == least {
                ties |= 1u64 << i;
            }
        }
        let n = ties.count_ones() as u64;
        nth_bit(ties, (self.next_turn() % n) as u32)
    }

    /// Weighted rendezvous hashing: each backend scores `-weight / ln(u)`
    /// with `u` in (0, 1) from a hash of (client, backend); the highest
    /// wins. A backend's share is proportional to its weight, and when one
    /// leaves only the clients it won move.
    fn rendezvous(&self, available: u64, client: IpAddr) -> usize {
        let client = ip_key(client);
        let mut best = (f64::NEG_INFINITY, 0);
        for i in bits(available) {
            let h = mix(client ^ self.keys[i]);
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from(self.weights[i]) / u.ln();
            if score > best.0 {
                best = (score, i);
            }
        }
        best.1
    }
}

/// The mask with the lowest `n` bits set.
pub fn mask_of(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// The set bits of `mask`, lowest first.
fn bits(mut mask: u64) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        (mask != 0).then(|| {
            let i = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            i
        })
    })
}

/// The index of the `n`th set bit (0-based) of a mask with more than `n` bits set.
fn nth_bit(mask: u64, n: u32) -> usize {
    bits(mask).nth(n as usize).unwrap_or(0)
}

/// One cycle of smooth weighted round robin (nginx's): each step every
/// backend gains its weight, the one with the most goes and loses the total.
/// Weights 5, 1, 1 give a a b a c a a: the heavy one is spread out instead of
/// sent in a burst. Weights are divided by their common divisor first, so
/// the cycle is as short as it can be.
fn smooth_weighted(weights: &[u32], mask: u64) -> Vec<u8> {
    let members: Vec<usize> = bits(mask).filter(|i| *i < weights.len()).collect();
    let divisor = members
        .iter()
        .fold(0, |g, i| gcd(g, weights[*i].max(1)))
        .max(1);
    let weight: Vec<i64> = members
        .iter()
        .map(|i| i64::from(weights[*i].max(1) / divisor))
        .collect();
    let total: i64 = weight.iter().sum();
    let mut current = vec![0i64; members.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (k, w) in weight.iter().enumerate() {
            current[k] += w;
            if current[k] > current[best] {
                best = k;
            }
        }
        current[best] -= total;
        order.push(members[best] as u8);
    }
    order
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// FNV-1a, a stable hash (the same in every process and release).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// splitmix64's finaliser: spreads every input bit over the output.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A client address's hash key (an IPv4-mapped IPv6 address is its IPv4 one).
fn ip_key(ip: IpAddr) -> u64 {
    match ip.to_canonical() {
        IpAddr::V4(a) => mix(fnv1a(&a.octets())),
        IpAddr::V6(a) => mix(fnv1a(&a.octets())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    fn balancer(strategy: Strategy, weights: &[u32]) -> Balancer {
        let targets: Vec<String> = (0..weights.len())
            .map(|i| format!("http://10.0.0.{i}:8080"))
            .collect();
        Balancer::new(strategy, weights.to_vec(), &targets)
    }

    fn picks(b: &Balancer, mask: u64, n: usize) -> Vec<usize> {
        (0..n)
            .map(|_| b.pick(mask, LOCAL, |_| 0).unwrap())
            .collect()
    }

    fn counts(picks: &[usize], backends: usize) -> Vec<usize> {
        let mut c = vec![0; backends];
        for p in picks {
            c[*p] += 1;
        }
        c
    }

    #[test]
    fn round_robin_takes_turns_and_ignores_weights() {
        let b = balancer(Strategy::RoundRobin, &[5, 1, 1]);
        assert_eq!(picks(&b, 0b111, 6), [0, 1, 2, 0, 1, 2]);
        // Backend 1 out: the others alternate.
        assert_eq!(counts(&picks(&b, 0b101, 10), 3), [5, 0, 5]);
        assert_eq!(b.pick(0, LOCAL, |_| 0), None);
    }

    #[test]
    fn weighted_is_smooth_and_exact_per_cycle() {
        let b = balancer(Strategy::Weighted, &[5, 1, 1]);
        assert_eq!(picks(&b, 0b111, 7), [0, 0, 1, 0, 2, 0, 0]);
        let b = balancer(Strategy::Weighted, &[3, 1]);
        let p = picks(&b, 0b11, 40);
        assert_eq!(counts(&p, 2), [30, 10]);
        assert!(p.windows(2).all(|w| w != [1, 1]), "{p:?}");
        // Common divisors shorten the cycle: 6:2 is 3:1.
        let b = balancer(Strategy::Weighted, &[6, 2]);
        assert_eq!(counts(&picks(&b, 0b11, 4), 2), [3, 1]);
        // Only the available share: 0 out leaves 1 and 2 at 1:1.
        let b = balancer(Strategy::Weighted, &[5, 1, 1]);
        assert_eq!(counts(&picks(&b, 0b110, 10), 3), [0, 5, 5]);
        // ... and back.
        assert_eq!(counts(&picks(&b, 0b111, 70), 3), [50, 10, 10]);
    }

    #[test]
    fn least_connections_prefers_idle_and_rotates_ties() {
        let b = balancer(Strategy::LeastConnections, &[1, 1, 1]);
        let load = [3u64, 1, 1];
        let p: Vec<usize> = (0..10)
            .map(|_| b.pick(0b111, LOCAL, |i| load[i]).unwrap())
            .collect();
        assert_eq!(counts(&p, 3), [0, 5, 5]);
        let load = [0u64, 2, 1];
        assert_eq!(b.pick(0b111, LOCAL, |i| load[i]), Some(0));
        // An unavailable backend is not picked however idle.
        assert_eq!(b.pick(0b110, LOCAL, |i| load[i]), Some(2));
    }

    #[test]
    fn ip_hash_is_sticky_weighted_and_moves_only_the_lost_backends_clients() {
        let b = balancer(Strategy::IpHash, &[1, 1, 1]);
        let clients: Vec<IpAddr> = (0..3000u32)
            .map(|n| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n)))
            .collect();
        let before: Vec<usize> = clients
            .iter()
            .map(|c| b.pick(0b111, *c, |_| 0).unwrap())
            .collect();
        for (c, p) in clients.iter().zip(&before) {
            assert_eq!(b.pick(0b111, *c, |_| 0), Some(*p));
        }
        let c = counts(&before, 3);
        assert!(c.iter().all(|n| (800..1200).contains(n)), "{c:?}");
        // Backend 1 leaves: only its clients move, spread over the others.
        let after: Vec<usize> = clients
            .iter()
            .map(|c| b.pick(0b101, *c, |_| 0).unwrap())
            .collect();
        for (x, y) in before.iter().zip(&after) {
            if *x == 1 {
                assert_ne!(*y, 1);
            } else {
                assert_eq!(x, y);
            }
        }
        let moved = counts(&after, 3);
        assert!(moved[0] > c[0] + 300 && moved[2] > c[2] + 300, "{moved:?}");
        // The retry pick is the client's second choice: where it goes when 1 leaves.
        for (client, (x, y)) in clients.iter().zip(before.iter().zip(&after)) {
            if *x == 1 {
                assert_eq!(b.pick_other(0b111, 1, *client, |_| 0), Some(*y));
            }
        }
        // Weights: 3:1 gets about three quarters.
        let b = balancer(Strategy::IpHash, &[3, 1]);
        let p: Vec<usize> = clients
            .iter()
            .map(|c| b.pick(0b11, *c, |_| 0).unwrap())
            .collect();
        let c = counts(&p, 2);
        assert!((2000..2500).contains(&c[0]), "{c:?}");
        // IPv4-mapped IPv6 is the same client.
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().unwrap();
        assert_eq!(b.pick(0b11, v4, |_| 0), b.pick(0b11, mapped, |_| 0));
    }

    #[test]
    fn retry_goes_to_another_backend_without_taking_a_turn() {
        let b = balancer(Strategy::RoundRobin, &[1, 1, 1]);
        assert_eq!(b.pick_other(0b111, 0, LOCAL, |_| 0), Some(1));
        assert_eq!(b.pick_other(0b111, 2, LOCAL, |_| 0), Some(0));
        assert_eq!(b.pick_other(0b101, 0, LOCAL, |_| 0), Some(2));
        assert_eq!(b.pick_other(0b001, 0, LOCAL, |_| 0), None);
        // The rotation did not move.
        assert_eq!(b.pick(0b111, LOCAL, |_| 0), Some(0));
    }

    #[test]
    fn masks_and_bits() {
        assert_eq!(mask_of(0), 0);
        assert_eq!(mask_of(3), 0b111);
        assert_eq!(mask_of(64), u64::MAX);
        assert_eq!(bits(0b1010_0101).collect::<Vec<_>>(), [0, 2, 5, 7]);
        assert_eq!(nth_bit(0b1010_0101, 2), 5);
    }
}
