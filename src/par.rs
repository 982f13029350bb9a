//! Whole independent items (perplexity windows, calibration windows) on separate threads.
//!
//! One 2048-token forward split over both cores spends part of its time waiting at the
//! synchronisation points between its kernels, and the cores here run at different speeds from
//! moment to moment. Two windows at once, each on one core with every kernel inside it serial,
//! measured 5.2–5.3 s per window against 5.6–6.0 s for one window on both cores. The
//! results are unchanged: every kernel computes each element the same way whatever the number of
//! threads, and the results are handed back in item order, so sums over items add up in the same
//! order as a serial loop.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// `f(i, item)` over `items` as [`items_in_order`] runs it, each item moved into its call so that
/// an input is dropped as soon as its output exists (a block's input and output activations
/// replace each other); the outputs in order.
pub fn map_owned<T: Send, U: Send>(
    concurrent: bool,
    items: Vec<T>,
    f: impl Fn(usize, T) -> Result<U> + Sync,
) -> Result<Vec<U>> {
    let cells: Vec<std::sync::Mutex<Option<T>>> = items
        .into_iter()
        .map(|x| std::sync::Mutex::new(Some(x)))
        .collect();
    let mut out = Vec::with_capacity(cells.len());
    items_in_order(
        concurrent,
        cells.len(),
        |i| {
            let x = cells[i]
                .lock()
                .ok()
                .and_then(|mut x| x.take())
                .ok_or_else(|| Error::Msg("internal: item taken twice".into()))?;
            f(i, x)
        },
        |_, y| {
            out.push(y);
            Ok(())
        },
    )?;
    Ok(out)
}

/// Runs `f(i)` for `i` in `0..n` and hands each result to `sink(i, result)` on the calling thread,
/// in increasing `i`. Without `concurrent` (a GPU device, or kernels that are parallel
/// themselves) it is a plain loop. With it and a rayon pool of more than one thread (and more
/// than one item), as many worker threads as the pool has take items in turn, each inside its own
/// one-thread rayon pool, so the parallel kernels inside `f` run serially on that worker; the last
/// `n % threads` items then run one at a time on the whole pool. An error of `f` or of `sink`
/// stops the work (no later result reaches `sink`) and is returned.
pub fn items_in_order<T: Send>(
    concurrent: bool,
    n: usize,
    f: impl Fn(usize) -> Result<T> + Sync,
    mut sink: impl FnMut(usize, T) -> Result<()>,
) -> Result<()> {
    let workers = if concurrent {
        rayon::current_num_threads().min(n)
    } else {
        1
    };
    // Items past the last whole round of workers would leave cores idle: they run one at a time
    // on the whole pool after the others.
    let whole = if workers > 1 { n - n % workers } else { 0 };
    let serial = |sink: &mut dyn FnMut(usize, T) -> Result<()>| -> Result<()> {
        for i in whole..n {
            sink(i, f(i)?)?;
        }
        Ok(())
    };
    if whole == 0 {
        return serial(&mut sink);
    }
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Result<T>)>();
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (tx, f, next, stop) = (tx.clone(), &f, &next, &stop);
            scope.spawn(move || {
                let pool = match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx.send((0, Err(Error::Msg(format!("thread pool: {e}")))));
                        return;
                    }
                };
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= whole {
                        break;
                    }
                    let r = pool.install(|| f(i));
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        // Results that arrived before their turn.
        let mut waiting: Vec<Option<T>> = (0..whole).map(|_| None).collect();
        let mut due = 0;
        let mut outcome = Ok(());
        for (i, r) in rx.iter() {
            if outcome.is_err() {
                continue; // drain: the workers stop after their current item
            }
            match r {
                Ok(v) => waiting[i] = Some(v),
                Err(e) => {
                    outcome = Err(e);
                    stop.store(true, Ordering::Relaxed);
                    continue;
                }
            }
            while let Some(v) = waiting.get_mut(due).and_then(Option::take) {
                if let Err(e) = sink(due, v) {
                    outcome = Err(e);
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                due += 1;
            }
        }
        outcome
    })?;
    serial(&mut sink)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool")
    }

    #[test]
    fn results_come_back_in_order_on_any_number_of_threads() {
        for threads in [1, 2, 3] {
            let mut seen = Vec::new();
            pool(threads)
                .install(|| {
                    items_in_order(
                        true,
                        25,
                        |i| {
                            // Later items finish first, so results arrive out of order.
                            std::thread::sleep(std::time::Duration::from_micros(
                                ((25 - i) * 50) as u64,
                            ));
                            Ok(i * i)
                        },
                        |i, v| {
                            seen.push((i, v));
                            Ok(())
                        },
                    )
                })
                .expect("items");
            let want: Vec<(usize, usize)> = (0..25).map(|i| (i, i * i)).collect();
            assert_eq!(seen, want, "{threads} threads");
        }
    }

    #[test]
    fn inside_an_item_the_pool_has_one_thread() {
        let mut sizes = Vec::new();
        pool(2)
            .install(|| {
                items_in_order(
                    true,
                    4,
                    |_| Ok(rayon::current_num_threads()),
                    |_, s| {
                        sizes.push(s);
                        Ok(())
                    },
                )
            })
            .expect("items");
        assert_eq!(sizes, vec![1; 4]);
    }

    #[test]
    fn the_first_error_stops_the_work() {
        for threads in [1, 2] {
            let mut sunk = Vec::new();
            let r = pool(threads).install(|| {
                items_in_order(
                    true,
                    50,
                    |i| {
                        if i == 3 {
                            Err(Error::Msg("item 3 failed".into()))
                        } else {
                            Ok(i)
                        }
                    },
                    |i, _| {
                        sunk.push(i);
                        Ok(())
                    },
                )
            });
            let e = r.expect_err("error");
            assert!(e.to_string().contains("item 3 failed"), "{e}");
            assert!(sunk.iter().all(|&i| i < 3), "{sunk:?}");
        }
    }
}
