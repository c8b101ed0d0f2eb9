// deepcr-jax native CPU kernels, NHWC float32, as XLA FFI handlers.
//
// DeepcrConv3x3AffineRelu: fused 3x3 'same' convolution + per-channel affine
// (inference BatchNorm) + ReLU,
//
//   a[n, r, c, o] = relu((sum_{ky,kx,i} x[n, r+ky-1, c+kx-1, i] * w[ky, kx, i, o] + bias[o])
//                        * alpha[o] + beta[o])
//
// where x is the channel concatenation of two inputs x0 (C0 channels) and x1
// (C1, possibly 0) -- a UNet's [skip, upsampled] without materialising the
// concatenation -- and pixels outside image n's bounds (rows [r0, r1),
// columns [c0, c1) of the tile) count as zero: the zero padding of the
// whole-image forward for a tile that reaches past the image edge. Outputs
// outside the bounds are zero. Optionally the 1x1 output conv (+ sigmoid) is
// applied in the epilogue and only its single channel is written.
// Layouts: x0 (..., H, W, C0), x1 (..., H, W, C1), bounds (..., 4) int32,
// w (3, 3, C0 + C1, Co) HWIO, bias/alpha/beta (Co,), head_w (Co,), head_b
// (1,), y (..., H, W, Co) or (..., H, W, 1) with a head. Every leading
// dimension of x0 is a batch dimension (weights may carry leading unit
// dimensions, from vmap). Co must be a multiple of 32; a head needs Co == 32.
//
// DeepcrUpConv2x2: 2x2 stride-2 transposed convolution (torch's
// ConvTranspose2d(k=2, s=2)), written straight into NHWC at twice the size.
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
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "_shared.cc"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using deepcr::leading;
using deepcr::parallel_for;
using deepcr::unit_leading;
using deepcr::ROWS_PER_TASK;

typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4)));

#if defined(__AVX512F__)
constexpr int PB = 12;  // 24 accumulators + 2 weights + 1 broadcast of 32 zmm registers
#else
constexpr int PB = 4;
#endif

inline v16 load(const float* p) { return *reinterpret_cast<const v16u*>(p); }
inline void store(float* p, v16 v) { *reinterpret_cast<v16u*>(p) = v; }

struct Problem {
  const float* x0;         // first input, (N, H, W, C0)
  const float* x1;         // optional second input, (N, H, W, C1): channels C0.. of the conv
  const int32_t* bounds;   // (N, 4): rows [r0, r1) and columns [c0, c1) inside the image
  const float* w;          // (3, 3, C0 + C1, Co)
  const float* bias;
  const float* alpha;
  const float* beta;
  const float* head_w;     // head != 0: (Co,) weights of the 1x1 output conv, Co == 32
  float head_b;
  int head;                // 0: y is the (N, H, W, Co) activation; 1: y = head (N, H, W, 1); 2: sigmoid(head)
  float* y;
  int64_t H, W, C0, C1, Co;
};

// One input pixel's channels (``C`` of them, ``xp``) times weight rows ``wp``
// (stride Co) into the PB-pixel accumulators; pixel q sits at xp + q * C.
__attribute__((always_inline)) inline void accumulate_block(const float* xp, int64_t C, const float* wp,
                                                            int64_t Co, v16* acc0, v16* acc1) {
  for (int64_t i = 0; i < C; i++) {
    const v16 w0 = load(wp + i * Co), w1 = load(wp + i * Co + 16);
#pragma GCC unroll 16
    for (int q = 0; q < PB; q++) {
      const float b = xp[q * C + i];
      acc0[q] += b * w0;
      acc1[q] += b * w1;
    }
  }
}

__attribute__((always_inline)) inline void accumulate_pixel(const float* xp, int64_t C, const float* wp,
                                                            int64_t Co, v16& a0, v16& a1) {
  for (int64_t i = 0; i < C; i++) {
    a0 += xp[i] * load(wp + i * Co);
    a1 += xp[i] * load(wp + i * Co + 16);
  }
}

inline float hsum(v16 v) {
  float s = 0.0f;
  for (int k = 0; k < 16; k++) s += v[k];
  return s;
}

// bias, affine, ReLU; then either store the 32 channels or the fused 1x1 head.
inline void epilogue(const Problem& p, float* y, v16 a0, v16 a1, int64_t o) {
  const v16 zero = {};
  v16 t0 = (a0 + load(p.bias + o)) * load(p.alpha + o) + load(p.beta + o);
  v16 t1 = (a1 + load(p.bias + o + 16)) * load(p.alpha + o + 16) + load(p.beta + o + 16);
  t0 = t0 > zero ? t0 : zero;
  t1 = t1 > zero ? t1 : zero;
  if (p.head == 0) {
    store(y, t0);
    store(y + 16, t1);
    return;
  }
  const float z = hsum(t0 * load(p.head_w) + t1 * load(p.head_w + 16)) + p.head_b;
  *y = p.head == 2 ? 1.0f / (1.0f + std::exp(-z)) : z;
}

// Output row ``r`` of image ``n``. Input pixels outside the image's bounds
// count as zero (the whole-image forward's zero padding); outputs outside
// them are written as zero.
void conv_row(const Problem& p, int64_t n, int64_t r) {
  const int64_t H = p.H, W = p.W, C0 = p.C0, C1 = p.C1, Ci = C0 + C1, Co = p.Co;
  const int64_t Cy = p.head ? 1 : Co;
  const int32_t* b = p.bounds + 4 * n;
  const int64_t r0 = b[0], r1 = b[1], c0 = b[2], c1 = b[3];
  float* yr = p.y + (n * H + r) * W * Cy;
  if (r < r0 || r >= r1 || c0 >= c1) {
    std::memset(yr, 0, sizeof(float) * W * Cy);
    return;
  }
  std::memset(yr, 0, sizeof(float) * c0 * Cy);
  std::memset(yr + c1 * Cy, 0, sizeof(float) * (W - c1) * Cy);
  const float* x0 = p.x0 + n * H * W * C0;
  const float* x1 = p.x1 + n * H * W * C1;
  const int ky0 = r - 1 < r0 ? 1 : 0, ky1 = r + 1 >= r1 ? 2 : 3;
  for (int64_t o = 0; o < Co; o += 32) {
    int64_t c = c0 + 1;
    for (; c + PB <= c1 - 1; c += PB) {
      v16 acc0[PB], acc1[PB];
      for (int q = 0; q < PB; q++) acc0[q] = acc1[q] = v16{};
      for (int ky = ky0; ky < ky1; ky++) {
        const int64_t pix = (r + ky - 1) * W + (c - 1);
        for (int kx = 0; kx < 3; kx++) {
          const float* wp = p.w + (ky * 3 + kx) * Ci * Co + o;
          accumulate_block(x0 + (pix + kx) * C0, C0, wp, Co, acc0, acc1);
          if (C1) accumulate_block(x1 + (pix + kx) * C1, C1, wp + C0 * Co, Co, acc0, acc1);
        }
      }
      for (int q = 0; q < PB; q++) epilogue(p, yr + (c + q) * Cy + (p.head ? 0 : o), acc0[q], acc1[q], o);
    }
    // the first column, the columns left over by the blocks, and the last
    for (int64_t cc = c0; cc < c1; cc++) {
      if (cc >= c0 + 1 && cc < c) continue;
      v16 a0 = {}, a1 = {};
      for (int ky = ky0; ky < ky1; ky++) {
        for (int kx = 0; kx < 3; kx++) {
          const int64_t xc = cc + kx - 1;
          if (xc < c0 || xc >= c1) continue;
          const int64_t pix = (r + ky - 1) * W + xc;
          const float* wp = p.w + (ky * 3 + kx) * Ci * Co + o;
          accumulate_pixel(x0 + pix * C0, C0, wp, Co, a0, a1);
          if (C1) accumulate_pixel(x1 + pix * C1, C1, wp + C0 * Co, Co, a0, a1);
        }
      }
      epilogue(p, yr + cc * Cy + (p.head ? 0 : o), a0, a1, o);
    }
  }
}

ffi::Error Conv3x3AffineRelu(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x0, ffi::Buffer<ffi::F32> x1,
                             ffi::Buffer<ffi::S32> bounds, ffi::Buffer<ffi::F32> w,
                             ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> alpha,
                             ffi::Buffer<ffi::F32> beta, ffi::Buffer<ffi::F32> head_w,
                             ffi::Buffer<ffi::F32> head_b, ffi::ResultBuffer<ffi::F32> y, int32_t head) {
  const auto d0 = x0.dimensions(), d1 = x1.dimensions(), wd = w.dimensions();
  if (d0.size() < 3 || d1.size() != d0.size()) return ffi::Error::InvalidArgument("x0, x1 must be (..., H, W, C)");
  const bool no_x1 = d1[d1.size() - 1] == 0;  // then its leading dimensions do not matter
  for (size_t k = 0; k + 1 < d0.size() && !no_x1; k++)
    if (d1[k] != d0[k]) return ffi::Error::InvalidArgument("x1 must match x0 but for its channels");
  const size_t k = wd.size();
  if (!unit_leading(wd, 4) || wd[k - 4] != 3 || wd[k - 3] != 3)
    return ffi::Error::InvalidArgument("w must be (3, 3, Ci, Co) (weights cannot be batched)");
  const int64_t H = d0[d0.size() - 3], W = d0[d0.size() - 2];
  const int64_t C0 = d0[d0.size() - 1], C1 = d1[d1.size() - 1], Co = wd[k - 1];
  if (wd[k - 2] != C0 + C1) return ffi::Error::InvalidArgument("w's input channels differ from x0's + x1's");
  if (Co % 32 != 0) return ffi::Error::InvalidArgument("output channels must be a multiple of 32");
  if (bias.element_count() != static_cast<size_t>(Co) || alpha.element_count() != static_cast<size_t>(Co) ||
      beta.element_count() != static_cast<size_t>(Co))
    return ffi::Error::InvalidArgument("bias, alpha and beta must have Co elements");
  if (head < 0 || head > 2) return ffi::Error::InvalidArgument("head must be 0, 1 or 2");
  if (head && (Co != 32 || head_w.element_count() != 32 || head_b.element_count() != 1))
    return ffi::Error::InvalidArgument("a fused head needs Co == 32, head_w (32,) and head_b (1,)");
  const int64_t n = leading(d0, 3);
  if (bounds.element_count() != static_cast<size_t>(4 * n))
    return ffi::Error::InvalidArgument("bounds must be (..., 4), one row per image");
  if (n * H * W == 0) return ffi::Error::Success();
  const Problem p{x0.typed_data(), x1.typed_data(), bounds.typed_data(), w.typed_data(),
                  bias.typed_data(), alpha.typed_data(), beta.typed_data(), head_w.typed_data(),
                  head ? head_b.typed_data()[0] : 0.0f, head, y->typed_data(), H, W, C0, C1, Co};
  for (int64_t j = 0; j < n; j++) {
    const int32_t* b = p.bounds + 4 * j;
    if (b[0] < 0 || b[1] > H || b[2] < 0 || b[3] > W)
      return ffi::Error::InvalidArgument("bounds must lie inside the image");
  }
  parallel_for(pool, n * H, ROWS_PER_TASK, [&p, H](int64_t k) { conv_row(p, k / H, k % H); });
  return ffi::Error::Success();
}

// 2x2 stride-2 transposed convolution: y[n, 2r+a, 2c+b, :] = bias + x[n, r, c, :] . w[a, b, :, :].
void upconv_row(const float* x, const float* w, const float* bias, float* y, int64_t w_in, int64_t Ci,
                int64_t Co) {
  const int64_t Wo = 2 * w_in;
  for (int a = 0; a < 2; a++) {
    float* yr = y + a * Wo * Co;
    for (int bx = 0; bx < 2; bx++) {
      const float* wk = w + (a * 2 + bx) * Ci * Co;
      for (int64_t o = 0; o < Co; o += 32) {
        const v16 b0 = load(bias + o), b1 = load(bias + o + 16);
        int64_t c = 0;
        for (; c + PB <= w_in; c += PB) {
          v16 acc0[PB], acc1[PB];
          for (int q = 0; q < PB; q++) acc0[q] = b0, acc1[q] = b1;
          accumulate_block(x + c * Ci, Ci, wk + o, Co, acc0, acc1);
          for (int q = 0; q < PB; q++) {
            float* yp = yr + (2 * (c + q) + bx) * Co + o;
            store(yp, acc0[q]);
            store(yp + 16, acc1[q]);
          }
        }
        for (; c < w_in; c++) {
          v16 a0 = b0, a1 = b1;
          accumulate_pixel(x + c * Ci, Ci, wk + o, Co, a0, a1);
          float* yp = yr + (2 * c + bx) * Co + o;
          store(yp, a0);
          store(yp + 16, a1);
        }
      }
    }
  }
}

ffi::Error UpConv2x2(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                     ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  const size_t k = wd.size();
  if (xd.size() < 3) return ffi::Error::InvalidArgument("x must be (..., h, w, Ci)");
  if (!unit_leading(wd, 4) || wd[k - 4] != 2 || wd[k - 3] != 2)
    return ffi::Error::InvalidArgument("w must be (2, 2, Ci, Co) (weights cannot be batched)");
  const int64_t h = xd[xd.size() - 3], wi = xd[xd.size() - 2], Ci = xd[xd.size() - 1], Co = wd[k - 1];
  if (wd[k - 2] != Ci) return ffi::Error::InvalidArgument("w's input channels differ from x's");
  if (Co % 32 != 0) return ffi::Error::InvalidArgument("output channels must be a multiple of 32");
  if (bias.element_count() != static_cast<size_t>(Co)) return ffi::Error::InvalidArgument("bias must have Co elements");
  const int64_t rows = leading(xd, 3) * h;
  if (rows * wi == 0) return ffi::Error::Success();
  const float *xp = x.typed_data(), *wp = w.typed_data(), *bp = bias.typed_data();
  float* yp = y->typed_data();
  parallel_for(pool, rows, ROWS_PER_TASK, [=](int64_t r) {
    upconv_row(xp + r * wi * Ci, wp, bp, yp + r * 4 * wi * Co, wi, Ci, Co);
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrConv3x3AffineRelu, Conv3x3AffineRelu,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x0
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x1 (may have 0 channels)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // bounds
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // alpha
                                  .Arg<ffi::Buffer<ffi::F32>>()  // beta
                                  .Arg<ffi::Buffer<ffi::F32>>()  // head_w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // head_b
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<int32_t>("head"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrUpConv2x2, UpConv2x2,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
);
