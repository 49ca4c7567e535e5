//! A seeded generator of our own for the fuzz tests (stable Rust): `CAMPEER_FUZZ_SEED` replays
//! a run (every test prints its seed), `CAMPEER_FUZZ_SCALE` multiplies the counts.
#![allow(dead_code)]

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The seed of this test's generator, printed so that a failure can be replayed.
pub fn rng(test: &str) -> StdRng {
    let seed = std::env::var("CAMPEER_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("{test}: CAMPEER_FUZZ_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

/// `n` times `CAMPEER_FUZZ_SCALE` (1 by default).
pub fn scaled(n: usize) -> usize {
    let scale: usize = std::env::var("CAMPEER_FUZZ_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    n.saturating_mul(scale.max(1))
}

/// One of `items` (not empty).
pub fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Mutate `text` a few times: flip, cut, insert, duplicate, or splice in something nasty.
pub fn mutate(rng: &mut StdRng, text: &str) -> String {
    const NASTY: &[&str] = &[
        "\u{0}",
        "\u{feff}",
        "\u{1F4A9}",
        "\\ud800",
        "\"",
        "\\",
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "null",
        "true",
        "-0",
        "1e999",
        "18446744073709551616",
        "-9223372036854775809",
        "0.0000000000000000000001",
        "\r\n",
        "a=candidate:",
        "m=video 9 UDP/TLS/RTP/SAVPF 96\r\n",
        "profile-level-id=",
        "packetization-mode=1",
        "a=rtpmap:96 H264/90000\r\n",
    ];
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=bytes.len());
        match rng.random_range(0..7) {
            0 if !bytes.is_empty() => {
                let i = at.min(bytes.len() - 1);
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            1 => bytes.truncate(at),
            2 => {
                let n = rng.random_range(0..=(bytes.len() - at).min(64));
                bytes.drain(at..at + n);
            }
            3 => {
                let s = pick(rng, NASTY).as_bytes().to_vec();
                bytes.splice(at..at, s);
            }
            4 => {
                let end = (at + rng.random_range(0..64)).min(bytes.len());
                let piece = bytes[at..end].to_vec();
                bytes.splice(at..at, piece);
            }
            5 => {
                let deep = rng.random_range(1..400);
                let open = if rng.random_bool(0.5) { b"[" } else { b"{" };
                bytes.splice(at..at, std::iter::repeat_n(open[0], deep));
            }
            _ => bytes.insert(at, rng.random()),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}
