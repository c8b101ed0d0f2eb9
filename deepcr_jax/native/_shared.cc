// Helpers shared by the native kernels' translation units (conv3x3.cc, bf16.cc).
//
// Not a translation unit of its own: each kernel file #includes it (the build
// compiles only the files in _build.SOURCES). It is named .cc so that it
// ships with the package like the kernel sources.

#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace deepcr {

namespace ffi = xla::ffi;

constexpr int ROWS_PER_TASK = 2;

// Tasks 0..total-1 run by ``body(k)``, handed out ``chunk`` at a time to
// XLA's intra-op thread pool and the calling thread; returns when all are done.
template <typename Body>
void parallel_for(ffi::ThreadPool& pool, int64_t total, int64_t chunk, Body body) {
  struct Shared {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto shared = std::make_shared<Shared>();
  auto run = [shared, total, chunk, body] {
    for (;;) {
      const int64_t start = shared->next.fetch_add(chunk, std::memory_order_relaxed);
      if (start >= total) return;
      const int64_t stop = std::min(start + chunk, total);
      for (int64_t k = start; k < stop; k++) body(k);
      shared->done.fetch_add(stop - start, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), (total + chunk - 1) / chunk - 1);
  for (int64_t k = 0; k < helpers; k++) pool.Schedule([run] { run(); });
  run();
  // helpers that start late find no tasks left; wait for the tasks they took
  while (shared->done.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

// Product of all but the last ``keep`` dimensions.
template <typename Dims>
int64_t leading(const Dims& d, size_t keep) {
  int64_t n = 1;
  for (size_t k = 0; k + keep < d.size(); k++) n *= d[k];
  return n;
}

// Under vmap (expand_dims) unbatched operands get leading unit dimensions.
template <typename Dims>
bool unit_leading(const Dims& d, size_t keep) {
  if (d.size() < keep) return false;
  for (size_t k = 0; k + keep < d.size(); k++)
    if (d[k] != 1) return false;
  return true;
}

}  // namespace deepcr
