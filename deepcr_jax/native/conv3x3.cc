// deepcr-jax native CPU kernel: fused 3x3 'same' convolution + per-channel
// affine (inference BatchNorm) + ReLU, NHWC, float32, as an XLA FFI handler.
//
//   y[n, r, c, o] = relu(fma(sum_{ky,kx,i} x[n, r+ky-1, c+kx-1, i] * w[ky, kx, i, o] + bias[o],
//                            alpha[o], beta[o]))
//
// with zero padding outside the image (what lax.conv_general_dilated with
// padding 1 computes). Layouts: x (..., H, W, Ci), w (3, 3, Ci, Co) HWIO,
// bias/alpha/beta (Co,), y (..., H, W, Co); every leading dimension of x is a
// batch dimension (the other operands may carry leading unit dimensions). Co must be a multiple of 32 (checked by the Python side
// too).
//
// The inner kernel keeps a block of PB output pixels x 32 output channels in
// vector registers and walks (ky, kx, i): one broadcast input value feeds two
// 16-wide FMAs. Interior pixel blocks need no bounds checks; the border
// columns and the tail of each row go through a one-pixel path. Rows are
// handed out in chunks to XLA's intra-op thread pool and the calling thread.
// Written with GCC/Clang vector extensions so it compiles for any ISA; with
// -march=native on an AVX-512 machine a vector is one register.

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

#if defined(__AVX512F__)
constexpr int PB = 12;  // 24 accumulators + 2 weights + 1 broadcast of 32 zmm registers
#else
constexpr int PB = 4;
#endif
constexpr int ROWS_PER_TASK = 2;

inline v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }

struct Problem {
  const float* x;
  const float* w;
  const float* bias;
  const float* alpha;
  const float* beta;
  float* y;
  int64_t H, W, Ci, Co;
};

inline void epilogue(const Problem& p, float* y, v16 a0, v16 a1, int64_t o) {
  const v16 zero = {};
  v16 t0 = (a0 + load(p.bias + o)) * load(p.alpha + o) + load(p.beta + o);
  v16 t1 = (a1 + load(p.bias + o + 16)) * load(p.alpha + o + 16) + load(p.beta + o + 16);
  store(y, t0 > zero ? t0 : zero);
  store(y + 16, t1 > zero ? t1 : zero);
}

// One output row ``r`` of image ``x`` (H, W, Ci) into ``y`` (H, W, Co).
void conv_row(const Problem& p, const float* x, float* y, int64_t r) {
  const int64_t H = p.H, W = p.W, Ci = p.Ci, Co = p.Co;
  const int ky0 = r == 0 ? 1 : 0, ky1 = r == H - 1 ? 2 : 3;
  for (int64_t o = 0; o < Co; o += 32) {
    int64_t c = 1;
    for (; c + PB <= W - 1; c += PB) {
      v16 acc0[PB], acc1[PB];
      for (int q = 0; q < PB; q++) acc0[q] = acc1[q] = v16{};
      for (int ky = ky0; ky < ky1; ky++) {
        const float* xr = x + ((r + ky - 1) * W + (c - 1)) * Ci;
        for (int kx = 0; kx < 3; kx++) {
          const float* xp = xr + kx * Ci;
          const float* wp = p.w + (ky * 3 + kx) * Ci * Co + o;
          for (int64_t i = 0; i < Ci; i++) {
            const v16 w0 = load(wp + i * Co), w1 = load(wp + i * Co + 16);
#pragma GCC unroll 16
            for (int q = 0; q < PB; q++) {
              const float b = xp[q * Ci + i];
              acc0[q] += b * w0;
              acc1[q] += b * w1;
            }
          }
        }
      }
      for (int q = 0; q < PB; q++) epilogue(p, y + (r * W + c + q) * Co + o, acc0[q], acc1[q], o);
    }
    // column 0, the columns left over by the blocks, and column W-1
    for (int64_t cc = 0; cc < W; cc++) {
      if (cc >= 1 && cc < c) continue;
      v16 a0 = {}, a1 = {};
      for (int ky = ky0; ky < ky1; ky++) {
        for (int kx = 0; kx < 3; kx++) {
          const int64_t xc = cc + kx - 1;
          if (xc < 0 || xc >= W) continue;
          const float* xp = x + ((r + ky - 1) * W + xc) * Ci;
          const float* wp = p.w + (ky * 3 + kx) * Ci * Co + o;
          for (int64_t i = 0; i < Ci; i++) {
            a0 += xp[i] * load(wp + i * Co);
            a1 += xp[i] * load(wp + i * Co + 16);
          }
        }
      }
      epilogue(p, y + (r * W + cc) * Co + o, a0, a1, o);
    }
  }
}

// Rows of all images, handed out ROWS_PER_TASK at a time.
struct Work {
  Problem p;
  int64_t total_rows;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void run() {
    for (;;) {
      const int64_t start = next.fetch_add(ROWS_PER_TASK, std::memory_order_relaxed);
      if (start >= total_rows) return;
      const int64_t stop = std::min(start + ROWS_PER_TASK, total_rows);
      for (int64_t k = start; k < stop; k++) {
        const int64_t n = k / p.H, r = k % p.H;
        conv_row(p, p.x + n * p.H * p.W * p.Ci, p.y + n * p.H * p.W * p.Co, r);
      }
      done.fetch_add(stop - start, std::memory_order_release);
    }
  }
};

ffi::Error Conv3x3AffineRelu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                             ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> alpha,
                             ffi::Buffer<ffi::F32> beta, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions();
  const auto wd = w.dimensions();
  if (xd.size() < 3) return ffi::Error::InvalidArgument("x must be (..., H, W, Ci)");
  // under vmap (expand_dims) unbatched operands get leading unit dimensions
  const size_t k = wd.size();
  bool unit_lead = k >= 4;
  for (size_t j = 0; j + 4 < k; j++) unit_lead = unit_lead && wd[j] == 1;
  if (!unit_lead || wd[k - 4] != 3 || wd[k - 3] != 3)
    return ffi::Error::InvalidArgument("w must be (3, 3, Ci, Co) (weights cannot be batched)");
  const int64_t H = xd[xd.size() - 3], W = xd[xd.size() - 2], Ci = xd[xd.size() - 1], Co = wd[k - 1];
  if (wd[k - 2] != Ci) return ffi::Error::InvalidArgument("w's input channels differ from x's");
  if (Co % 32 != 0) return ffi::Error::InvalidArgument("output channels must be a multiple of 32");
  if (bias.element_count() != static_cast<size_t>(Co) || alpha.element_count() != static_cast<size_t>(Co) ||
      beta.element_count() != static_cast<size_t>(Co))
    return ffi::Error::InvalidArgument("bias, alpha and beta must have Co elements");
  int64_t n = 1;
  for (size_t k = 0; k + 3 < xd.size(); k++) n *= xd[k];
  if (n * H * W == 0) return ffi::Error::Success();

  auto work = std::make_shared<Work>();
  work->p = Problem{x.typed_data(), w.typed_data(), bias.typed_data(), alpha.typed_data(),
                    beta.typed_data(), y->typed_data(), H, W, Ci, Co};
  work->total_rows = n * H;
  const int64_t helpers =
      std::min<int64_t>(pool.num_threads(), (work->total_rows + ROWS_PER_TASK - 1) / ROWS_PER_TASK - 1);
  for (int64_t k = 0; k < helpers; k++) pool.Schedule([work] { work->run(); });
  work->run();
  // helpers that start late find no rows left; wait for the rows they took
  while (work->done.load(std::memory_order_acquire) < work->total_rows) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrConv3x3AffineRelu, Conv3x3AffineRelu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // alpha
                                  .Arg<ffi::Buffer<ffi::F32>>()  // beta
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
);
