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

// ---- argument validation shared by the conv handlers (conv3x3.cc, bf16.cc) ----

// The form of the operands a handler takes.
struct ConvForm {
  // 1: w (kh, kw, Ci, Co); 2 (the bf16 kernels): w (kh, kw, Ci / 2, Co, 2), input channels in
  // pairs, so every input's channel count must be even
  int pairs = 1;
  // activations (..., H, C, W), each row's channels one after another (the narrow kernels),
  // instead of (..., H, W, C)
  bool planar = false;
  // output channels 4, 8 or 16, and a fused head for any of them (the narrow kernels); else a
  // multiple of 32 and a head only with 32
  bool narrow = false;
};

// The extents of a valid conv call; ``n`` images (the product of the leading dimensions).
struct ConvDims {
  int64_t n = 0, H = 0, W = 0, C0 = 0, C1 = 0, Co = 0;
  bool empty() const { return n * H * W == 0; }
};

inline bool narrow_width(int64_t co) { return co == 4 || co == 8 || co == 16; }

inline ffi::Error check_out_channels(const ConvForm& f, int64_t co) {
  if (f.narrow) {
    if (!narrow_width(co)) return ffi::Error::InvalidArgument("output channels must be 4, 8 or 16");
  } else if (co % 32 != 0) {
    return ffi::Error::InvalidArgument("output channels must be a multiple of 32");
  }
  return ffi::Error::Success();
}

// Checks the operands of a fused 3x3 conv handler (x0, x1, w, bias, alpha, beta, head_w, head_b,
// bounds: see conv3x3.cc) and fills ``dims``. The bounds are checked to lie inside the image
// only when there is something to compute (``!dims.empty()``).
inline ffi::Error check_conv3x3(const ConvForm& f, ffi::Span<const int64_t> d0, ffi::Span<const int64_t> d1,
                                ffi::Span<const int64_t> wd, size_t n_bias, size_t n_alpha, size_t n_beta,
                                int32_t head, size_t n_head_w, size_t n_head_b, const int32_t* bounds,
                                size_t n_bounds, ConvDims& dims) {
  if (d0.size() < 3 || d1.size() != d0.size())
    return ffi::Error::InvalidArgument(f.planar ? "x0, x1 must be (..., H, C, W)" : "x0, x1 must be (..., H, W, C)");
  const size_t r = d0.size(), ch = f.planar ? r - 2 : r - 1, col = f.planar ? r - 1 : r - 2;
  const bool no_x1 = d1[ch] == 0;  // then its other dimensions do not matter
  for (size_t k = 0; k < r && !no_x1; k++)
    if (k != ch && d1[k] != d0[k]) return ffi::Error::InvalidArgument("x1 must match x0 but for its channels");
  const size_t k = wd.size(), lead = f.pairs == 2 ? 5 : 4;
  const size_t ki = f.pairs == 2 ? k - 3 : k - 2, ko = f.pairs == 2 ? k - 2 : k - 1;
  if (!unit_leading(wd, lead) || wd[k - lead] != 3 || wd[k - lead + 1] != 3 || (f.pairs == 2 && wd[k - 1] != 2))
    return ffi::Error::InvalidArgument(f.pairs == 2 ? "w must be (3, 3, Ci / 2, Co, 2) (weights cannot be batched)"
                                                    : "w must be (3, 3, Ci, Co) (weights cannot be batched)");
  dims.H = d0[r - 3];
  dims.W = d0[col];
  dims.C0 = d0[ch];
  dims.C1 = d1[ch];
  dims.Co = wd[ko];
  if (f.pairs == 2 && (dims.C0 % 2 || dims.C1 % 2)) return ffi::Error::InvalidArgument("input channels must be even");
  if (f.pairs * wd[ki] != dims.C0 + dims.C1)
    return ffi::Error::InvalidArgument("w's input channels differ from x0's + x1's");
  if (ffi::Error e = check_out_channels(f, dims.Co); e.failure()) return e;
  const size_t co = static_cast<size_t>(dims.Co);
  if (n_bias != co || n_alpha != co || n_beta != co)
    return ffi::Error::InvalidArgument("bias, alpha and beta must have Co elements");
  if (head < 0 || head > 2) return ffi::Error::InvalidArgument("head must be 0, 1 or 2");
  if (f.narrow) {
    if (head && (n_head_w != co || n_head_b != 1))
      return ffi::Error::InvalidArgument("a fused head needs head_w (Co,) and head_b (1,)");
  } else if (head && (dims.Co != 32 || n_head_w != 32 || n_head_b != 1)) {
    return ffi::Error::InvalidArgument("a fused head needs Co == 32, head_w (32,) and head_b (1,)");
  }
  dims.n = leading(d0, 3);
  if (n_bounds != static_cast<size_t>(4 * dims.n))
    return ffi::Error::InvalidArgument("bounds must be (..., 4), one row per image");
  if (dims.empty()) return ffi::Error::Success();
  for (int64_t j = 0; j < dims.n; j++) {
    const int32_t* b = bounds + 4 * j;
    if (b[0] < 0 || b[1] > dims.H || b[2] < 0 || b[3] > dims.W)
      return ffi::Error::InvalidArgument("bounds must lie inside the image");
  }
  return ffi::Error::Success();
}

// The extents of a valid transposed-conv call: ``rows`` input rows of ``w`` pixels in all.
struct UpDims {
  int64_t rows = 0, w = 0, Ci = 0, Co = 0;
  bool empty() const { return rows * w == 0; }
};

// Checks the operands of a 2x2 stride-2 transposed conv handler (x, w, bias) and fills ``dims``.
inline ffi::Error check_upconv2x2(const ConvForm& f, ffi::Span<const int64_t> xd, ffi::Span<const int64_t> wd,
                                  size_t n_bias, UpDims& dims) {
  const size_t k = wd.size(), lead = f.pairs == 2 ? 5 : 4;
  if (xd.size() < 3) return ffi::Error::InvalidArgument(f.planar ? "x must be (..., h, Ci, w)" : "x must be (..., h, w, Ci)");
  if (!unit_leading(wd, lead) || wd[k - lead] != 2 || wd[k - lead + 1] != 2 || (f.pairs == 2 && wd[k - 1] != 2))
    return ffi::Error::InvalidArgument(f.pairs == 2 ? "w must be (2, 2, Ci / 2, Co, 2) (weights cannot be batched)"
                                                    : "w must be (2, 2, Ci, Co) (weights cannot be batched)");
  const size_t r = xd.size();
  const int64_t h = xd[r - 3];
  dims.w = f.planar ? xd[r - 1] : xd[r - 2];
  dims.Ci = f.planar ? xd[r - 2] : xd[r - 1];
  dims.Co = f.pairs == 2 ? wd[k - 2] : wd[k - 1];
  if (f.pairs == 2) {
    if (dims.Ci % 2 || 2 * wd[k - 3] != dims.Ci)
      return ffi::Error::InvalidArgument("w's input channels differ from x's (even)");
  } else if (wd[k - 2] != dims.Ci) {
    return ffi::Error::InvalidArgument("w's input channels differ from x's");
  }
  if (ffi::Error e = check_out_channels(f, dims.Co); e.failure()) return e;
  if (n_bias != static_cast<size_t>(dims.Co)) return ffi::Error::InvalidArgument("bias must have Co elements");
  dims.rows = leading(xd, 3) * h;
  return ffi::Error::Success();
}

}  // namespace deepcr
