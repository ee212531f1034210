//! Pure index math: which chunk and segment each ring position sends and receives at each
//! step. No state, no I/O; every function is total for valid arguments.
//!
//! Vocabulary: the buffer is cut into one *chunk* per ring position (chunk `p` is owned by
//! position `p`: after reduce-scatter it holds the full reduction there); each chunk is cut
//! into *segments*, the pipelining unit. A ring of `world` positions runs `world - 1`
//! reduce-scatter steps and `world - 1` all-gather steps.

use std::ops::Range;

/// Element range of chunk `chunk` when `len_elems` elements are split over `world` chunks.
///
/// The first `len_elems % world` chunks get one element more, so chunk sizes differ by at
/// most one and the chunks tile `0..len_elems` in order.
///
/// # Panics
/// If `world == 0` or `chunk >= world` (caller bug).
pub fn chunk_range(len_elems: usize, world: usize, chunk: usize) -> Range<usize> {
    assert!(world > 0 && chunk < world, "chunk {chunk} of world {world}");
    let base = len_elems / world;
    let extra = len_elems % world;
    let start = chunk * base + chunk.min(extra);
    let len = base + usize::from(chunk < extra);
    start..start + len
}

/// Number of segments a chunk of `chunk_elems` elements is cut into when a segment holds
/// at most `segment_elems_max` elements. An empty chunk still has one (empty) segment, so
/// every step sends at least one frame and the ring stays in lock-step.
///
/// # Panics
/// If `segment_elems_max == 0` (caller bug).
pub fn segment_count(chunk_elems: usize, segment_elems_max: usize) -> usize {
    assert!(segment_elems_max > 0);
    chunk_elems.div_ceil(segment_elems_max).max(1)
}

/// Element range of segment `segment` inside a chunk (relative to the chunk's start).
///
/// Segments are `segment_elems_max` long except the last, which takes the rest.
///
/// # Panics
/// If `segment >= segment_count(chunk_elems, segment_elems_max)` (caller bug).
pub fn segment_range(chunk_elems: usize, segment_elems_max: usize, segment: usize) -> Range<usize> {
    assert!(segment < segment_count(chunk_elems, segment_elems_max));
    let start = segment * segment_elems_max;
    start..(start + segment_elems_max).min(chunk_elems)
}

/// Chunk that position `pos` sends to its next neighbour at reduce-scatter `step`.
///
/// Each step moves one chunk on, so after `world - 1` steps position p holds the full
/// reduction of chunk p. For world = 3:
///   step 0:  p0 -> c2   p1 -> c0   p2 -> c1
///   step 1:  p0 -> c1   p1 -> c2   p2 -> c0
pub fn reduce_scatter_send_chunk(pos: usize, world: usize, step: usize) -> usize {
    debug_assert!(pos < world && step + 1 < world.max(2));
    (pos + 2 * world - step - 1) % world
}

/// Chunk that position `pos` receives from its previous neighbour at reduce-scatter `step`
/// and reduces into its own copy. At the last step (`world - 2`) that chunk is `pos`.
pub fn reduce_scatter_recv_chunk(pos: usize, world: usize, step: usize) -> usize {
    debug_assert!(pos < world && step + 1 < world.max(2));
    (pos + 2 * world - step - 2) % world
}

/// Chunk that position `pos` sends at all-gather `step`: its own chunk first, then each
/// chunk it just received.
pub fn all_gather_send_chunk(pos: usize, world: usize, step: usize) -> usize {
    debug_assert!(pos < world && step + 1 < world.max(2));
    (pos + world - step) % world
}

/// Chunk that position `pos` receives (and stores) at all-gather `step`.
pub fn all_gather_recv_chunk(pos: usize, world: usize, step: usize) -> usize {
    debug_assert!(pos < world && step + 1 < world.max(2));
    (pos + 2 * world - step - 1) % world
}

/// Position of the next neighbour in a ring of `world` positions.
pub fn next_pos(pos: usize, world: usize) -> usize {
    (pos + 1) % world
}

/// Position of the previous neighbour in a ring of `world` positions.
pub fn prev_pos(pos: usize, world: usize) -> usize {
    (pos + world - 1) % world
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn world_three_table_matches_the_doc() {
        let sends: Vec<Vec<usize>> =
            (0..2).map(|s| (0..3).map(|p| reduce_scatter_send_chunk(p, 3, s)).collect()).collect();
        assert_eq!(sends, vec![vec![2, 0, 1], vec![1, 2, 0]]);
    }

    #[test]
    fn receive_is_what_prev_sends() {
        for world in 2..=16 {
            for step in 0..world - 1 {
                for pos in 0..world {
                    let prev = prev_pos(pos, world);
                    assert_eq!(
                        reduce_scatter_recv_chunk(pos, world, step),
                        reduce_scatter_send_chunk(prev, world, step)
                    );
                    assert_eq!(all_gather_recv_chunk(pos, world, step), all_gather_send_chunk(prev, world, step));
                }
            }
        }
    }

    /// Simulates contributions per chunk: after reduce-scatter, position p's chunk p must
    /// hold every position's contribution exactly once; after all-gather every position
    /// must hold every chunk's final value.
    fn check_ring(world: usize) {
        // contrib[p][c] = set of contributors (bitmask as Vec<u32> count) held by p for chunk c
        let mut held: Vec<Vec<Vec<u32>>> = (0..world)
            .map(|p| {
                (0..world)
                    .map(|_| {
                        let mut v = vec![0u32; world];
                        v[p] = 1;
                        v
                    })
                    .collect()
            })
            .collect();
        for step in 0..world - 1 {
            let sent: Vec<(usize, Vec<u32>)> = (0..world)
                .map(|p| {
                    let c = reduce_scatter_send_chunk(p, world, step);
                    (c, held[p][c].clone())
                })
                .collect();
            for p in 0..world {
                let (c, data) = &sent[prev_pos(p, world)];
                assert_eq!(*c, reduce_scatter_recv_chunk(p, world, step));
                for (h, d) in held[p][*c].iter_mut().zip(data) {
                    *h += d;
                }
            }
        }
        for (p, h) in held.iter().enumerate() {
            assert_eq!(h[p], vec![1; world], "world {world} pos {p}");
        }
        let mut has_final: Vec<Vec<bool>> = (0..world).map(|p| (0..world).map(|c| c == p).collect()).collect();
        for step in 0..world - 1 {
            let sent: Vec<usize> = (0..world).map(|p| all_gather_send_chunk(p, world, step)).collect();
            for p in 0..world {
                let c = sent[prev_pos(p, world)];
                assert!(has_final[prev_pos(p, world)][c], "forwarded a chunk before it was final");
                assert!(!has_final[p][c], "received chunk {c} twice");
                has_final[p][c] = true;
            }
        }
        assert!(has_final.iter().all(|v| v.iter().all(|&b| b)));
    }

    #[test]
    fn every_chunk_reduced_once_and_gathered_everywhere() {
        for world in 2..=64 {
            check_ring(world);
        }
    }

    proptest! {
        #[test]
        fn chunks_tile_the_buffer(len in prop_oneof![0usize..5, Just(7usize), Just(1_000_003usize), 0usize..100_000], world in 1usize..=64) {
            let mut next = 0;
            let mut sizes = Vec::new();
            for c in 0..world {
                let r = chunk_range(len, world, c);
                prop_assert_eq!(r.start, next);
                next = r.end;
                sizes.push(r.len());
            }
            prop_assert_eq!(next, len);
            let (lo, hi) = (sizes.iter().min().unwrap(), sizes.iter().max().unwrap());
            prop_assert!(hi - lo <= 1);
        }

        #[test]
        fn segments_tile_the_chunk(chunk in 0usize..200_000, seg in 1usize..5000) {
            let n = segment_count(chunk, seg);
            let mut next = 0;
            for s in 0..n {
                let r = segment_range(chunk, seg, s);
                prop_assert_eq!(r.start, next);
                prop_assert!(r.len() <= seg);
                prop_assert!(!r.is_empty() || chunk == 0);
                next = r.end;
            }
            prop_assert_eq!(next, chunk);
        }
    }
}
