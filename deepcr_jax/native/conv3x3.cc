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
// DeepcrConv3x3Narrow, DeepcrUpConv2x2Narrow: the same for 4, 8 or 16 output
// channels, on planar rows (..., H, C, W); the conv can also read the 2x2
// max pool of its input (see "narrow widths" below).
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
#include <vector>

#include "_shared.cc"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using deepcr::check_conv3x3;
using deepcr::check_upconv2x2;
using deepcr::ConvDims;
using deepcr::ConvForm;
using deepcr::parallel_for;
using deepcr::ROWS_PER_TASK;
using deepcr::UpDims;

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
  ConvDims d;
  if (ffi::Error e = check_conv3x3(ConvForm{}, x0.dimensions(), x1.dimensions(), w.dimensions(),
                                   bias.element_count(), alpha.element_count(), beta.element_count(), head,
                                   head_w.element_count(), head_b.element_count(), bounds.typed_data(),
                                   bounds.element_count(), d);
      e.failure())
    return e;
  if (d.empty()) return ffi::Error::Success();
  const int64_t n = d.n, H = d.H;
  const Problem p{x0.typed_data(), x1.typed_data(), bounds.typed_data(), w.typed_data(),
                  bias.typed_data(), alpha.typed_data(), beta.typed_data(), head_w.typed_data(),
                  head ? head_b.typed_data()[0] : 0.0f, head, y->typed_data(), H, d.W, d.C0, d.C1, d.Co};
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
  UpDims d;
  if (ffi::Error e = check_upconv2x2(ConvForm{}, x.dimensions(), w.dimensions(), bias.element_count(), d); e.failure())
    return e;
  if (d.empty()) return ffi::Error::Success();
  const int64_t rows = d.rows, wi = d.w, Ci = d.Ci, Co = d.Co;
  const float *xp = x.typed_data(), *wp = w.typed_data(), *bp = bias.typed_data();
  float* yp = y->typed_data();
  parallel_for(pool, rows, ROWS_PER_TASK, [=](int64_t r) {
    upconv_row(xp + r * wi * Ci, wp, bp, yp + r * 4 * wi * Co, wi, Ci, Co);
  });
  return ffi::Error::Success();
}

// ---- narrow widths: 4, 8 or 16 output channels, planar rows -------------------------------
//
// DeepcrConv3x3Narrow / DeepcrUpConv2x2Narrow: the same two operations for
// the narrow networks (deepCR-2-4: widths 4 and 8), where a block of 32
// output channels would leave most lanes idle. Activations are planar rows,
// (..., H, C, W): row r of an image holds its C channels one after another,
// each a line of W pixels, so that a vector is 16 neighbouring pixels of one
// channel and the 1-channel input image and head output are the same in
// either layout. Operands otherwise as DeepcrConv3x3AffineRelu's (any Ci >= 1,
// x1, bounds, head for any of the widths); attribute pool = 1: x0 is at twice
// the resolution (..., Hin, C0, Win) and the conv reads its 2x2 max pool
// (H = Hin / 2, W = Win / 2 floored, as the UNet's max_pool2), x1 empty.
//
// The conv keeps R = 2 rows x NV = 2 vectors (32 pixels) x OB = 4 output
// channels of accumulators in 16 registers and walks (i, ky, kx): each input
// vector feeds OB FMAs (one broadcast weight each), each broadcast weight
// R * NV (measured on Sapphire Rapids against 3 x 2, 4 x 1, 1 x 4 x 4 and
// 8-channel blocks: this and 1 x 4 were fastest, ~100 GFLOP/s a core at 4 and
// 8 input channels). Weights are repacked per call in the order the loop
// reads them; 8 and 16 channels run as 2 and 4 channel blocks. Each task
// (8 output rows) copies the input rows it reads, as it reaches them, into a
// scratch block, one line per channel with a zero pixel before column c0 and
// zeros from c1 on (pooled on the way with pool = 1), so that the image
// bounds cost no tests in the inner loop (rows outside the bounds are zero
// lines); x1's channels follow x0's there. The transposed conv computes 16
// input pixels x 2 column phases x 4 channels per step and interleaves the
// phases into the output line.

typedef int32_t v16i __attribute__((vector_size(64)));

constexpr int NARROW_BLOCKS_PER_TASK = 4;  // row blocks of R rows per task

struct NarrowProblem {
  const float* x0;        // (N, H, C0, W)
  const float* x1;        // (N, H, C1, W)
  const int32_t* bounds;  // (N, 4)
  const float* wpk;       // the weights packed by pack_narrow
  const float* bias;
  const float* alpha;
  const float* beta;
  const float* head_w;    // (Co,)
  float head_b;
  int head;               // 0: y (N, H, Co, W); 1: y = head (N, H, 1, W); 2: sigmoid(head)
  float* y;
  int64_t H, W, C0, C1, Co;
  bool pool;              // x0 is (N, Hin, C0, Win) and the conv reads its 2x2 max pool (H = Hin / 2, ...)
  int64_t Hin, Win;       // x0's rows and columns
};

// exp(x) to about 1 ulp (a Cephes-style range reduction and degree-6 polynomial); exp of
// arguments below -87.3 returns 0, above 88.4 returns exp(88.4).
inline v16 vexp(v16 x) {
  const v16 hi = v16{} + 88.3762626647949f, lo = v16{} - 87.3365447504f;
  x = x < hi ? x : hi;
  const v16i under = x < lo;
  x = x > lo ? x : lo;
  v16 fx = x * 1.44269504088896341f + 0.5f;
  const v16 t = __builtin_convertvector(__builtin_convertvector(fx, v16i), v16);  // toward zero
  fx = t > fx ? t - 1.0f : t;                                                    // floor
  x = x - fx * 0.693359375f + fx * 2.12194440e-4f;
  const v16 z = x * x;
  v16 p = 1.9875691500e-4f * x + 1.3981999507e-3f;
  p = p * x + 8.3334519073e-3f;
  p = p * x + 4.1665795894e-2f;
  p = p * x + 1.6666665459e-1f;
  p = p * x + 5.0000001201e-1f;
  p = p * z + x + 1.0f;
  const v16 r = p * (v16)((__builtin_convertvector(fx, v16i) + 127) << 23);  // times 2^fx
  return under ? v16{} : r;
}

// The first ``count`` lanes of ``v`` to ``p`` (all 16 when count >= 16).
inline void store_n(float* p, v16 v, int64_t count) {
  if (count >= 16) {
    store(p, v);
  } else if (count > 0) {
    float tmp[16];
    store(tmp, v);
    std::memcpy(p, tmp, sizeof(float) * count);
  }
}

// out[c] = max(a[2c], a[2c + 1], b[2c], b[2c + 1]) for c < count: a 2x2 max pool of lines a, b.
inline void pool_line(const float* a, const float* b, float* out, int64_t count) {
  int64_t c = 0;
  for (; c + 16 <= count; c += 16) {
    const v16 a0 = load(a + 2 * c), a1 = load(a + 2 * c + 16), b0 = load(b + 2 * c), b1 = load(b + 2 * c + 16);
    const v16 m0 = a0 > b0 ? a0 : b0, m1 = a1 > b1 ? a1 : b1;
    const v16 ev = __builtin_shufflevector(m0, m1, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const v16 od = __builtin_shufflevector(m0, m1, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    store(out + c, ev > od ? ev : od);
  }
  for (; c < count; c++) out[c] = std::max(std::max(a[2 * c], a[2 * c + 1]), std::max(b[2 * c], b[2 * c + 1]));
}

// One block: R output rows x NV vectors of 16 pixels x OB output channels,
// t[r][v][o] = relu((bias + conv) * alpha + beta). ``s`` is the scratch row of the block's first
// input row at the block's first column, rows ``rs`` floats apart, channel lines ``Wp`` apart;
// ``wk`` this output block's packed weights, (Ci, 9, OB).
template <int OB, int R, int NV>
__attribute__((always_inline)) inline void narrow_block(const float* s, int64_t rs, int64_t Wp, int64_t Ci,
                                                        const float* wk, const float* bias, const float* alpha,
                                                        const float* beta, v16 (&t)[R][NV][OB]) {
  v16 acc[R][NV][OB];
  for (int r = 0; r < R; r++)
    for (int v = 0; v < NV; v++)
      for (int o = 0; o < OB; o++) acc[r][v][o] = v16{} + bias[o];
  for (int64_t i = 0; i < Ci; i++, s += Wp, wk += 9 * OB) {
#pragma GCC unroll 3
    for (int ky = 0; ky < 3; ky++) {
#pragma GCC unroll 3
      for (int kx = 0; kx < 3; kx++) {
        float wv[OB];
#pragma GCC unroll 16
        for (int o = 0; o < OB; o++) wv[o] = wk[(ky * 3 + kx) * OB + o];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
#pragma GCC unroll 8
          for (int v = 0; v < NV; v++) {
            const v16 xv = load(s + (r + ky) * rs + kx + 16 * v);
#pragma GCC unroll 16
            for (int o = 0; o < OB; o++) acc[r][v][o] += xv * wv[o];
          }
        }
      }
    }
  }
  for (int r = 0; r < R; r++)
    for (int v = 0; v < NV; v++)
      for (int o = 0; o < OB; o++) {
        const v16 u = acc[r][v][o] * alpha[o] + beta[o];
        t[r][v][o] = u > 0.0f ? u : v16{};
      }
}

// Rows [ra, rb) of image n (rb - ra <= R * NARROW_BLOCKS_PER_TASK).
template <int OB, int R, int NV>
void narrow_rows(const NarrowProblem& p, int64_t n, int64_t ra, int64_t rb) {
  constexpr int64_t BW = 16 * NV;  // pixels per column block
  const int64_t H = p.H, W = p.W, C0 = p.C0, C1 = p.C1, Ci = C0 + C1, Co = p.Co;
  const int64_t Cy = p.head ? 1 : Co;
  const int32_t* bd = p.bounds + 4 * n;
  const int64_t r0 = std::max<int64_t>(bd[0], ra), r1 = std::min<int64_t>(bd[1], rb), c0 = bd[2], c1 = bd[3];
  const int64_t span = c1 - c0;
  float* yimg = p.y + n * H * Cy * W;
  // outputs outside the bounds are zero
  for (int64_t r = ra; r < rb; r++) {
    float* yr = yimg + r * Cy * W;
    if (r < r0 || r >= r1 || span <= 0) {
      std::memset(yr, 0, sizeof(float) * Cy * W);
    } else if (span < W) {
      for (int64_t o = 0; o < Cy; o++) {
        std::memset(yr + o * W, 0, sizeof(float) * c0);
        std::memset(yr + o * W + c1, 0, sizeof(float) * (W - c1));
      }
    }
  }
  if (r0 >= r1 || span <= 0) return;
  // scratch: input rows r0 - 1 .. (r0 + a whole number of blocks), one zero-padded line per channel,
  // x1's after x0's
  const int64_t nblk = (span + BW - 1) / BW, Wp = nblk * BW + 2, rs = Ci * Wp;
  const int64_t nrows = (r1 - r0 + R - 1) / R * R + 2;
  thread_local std::vector<float> scratch;
  if (scratch.size() < static_cast<size_t>(nrows * rs)) scratch.resize(nrows * rs);
  // scratch row t holds input row r0 - 1 + t, filled just before the first block that reads it
  auto fill = [&](int64_t t) {
    const int64_t rr = r0 - 1 + t;
    float* dst = scratch.data() + t * rs;
    if (rr < bd[0] || rr >= bd[1]) {
      std::memset(dst, 0, sizeof(float) * rs);
      return;
    }
    if (p.pool) {  // x0's rows 2 rr, 2 rr + 1 pooled
      const int64_t Win = p.Win;
      const float* src = p.x0 + ((n * p.Hin + 2 * rr) * C0) * Win + 2 * c0;
      for (int64_t i = 0; i < C0; i++, dst += Wp) {
        dst[0] = 0.0f;
        pool_line(src + i * Win, src + (C0 + i) * Win, dst + 1, span);
        std::memset(dst + 1 + span, 0, sizeof(float) * (Wp - 1 - span));
      }
      return;
    }
    for (int part = 0; part < 2; part++) {
      const int64_t C = part ? C1 : C0;
      const float* src = (part ? p.x1 : p.x0) + ((n * H + rr) * C) * W + c0;
      for (int64_t i = 0; i < C; i++, dst += Wp) {
        dst[0] = 0.0f;
        std::memcpy(dst + 1, src + i * W, sizeof(float) * span);
        std::memset(dst + 1 + span, 0, sizeof(float) * (Wp - 1 - span));
      }
    }
  };
  int64_t filled = 0;
  for (int64_t rb0 = r0; rb0 < r1; rb0 += R) {
    for (; filled < rb0 - r0 + R + 2; filled++) fill(filled);
    const float* srow = scratch.data() + (rb0 - r0) * rs;
    const int nr = static_cast<int>(std::min<int64_t>(R, r1 - rb0));  // rows of this block inside
    for (int64_t j = 0; j < span; j += BW) {
      float* yb = yimg + rb0 * Cy * W + c0 + j;
      const int64_t left = span - j;  // pixels of the block inside the bounds (all when >= BW)
      v16 z[R][NV];
      for (int64_t ob = 0; ob < Co; ob += OB) {
        v16 t[R][NV][OB];
        narrow_block<OB, R, NV>(srow + j, rs, Wp, Ci, p.wpk + ob * Ci * 9, p.bias + ob, p.alpha + ob,
                                p.beta + ob, t);
        if (p.head) {
          for (int r = 0; r < R; r++)
            for (int v = 0; v < NV; v++)
              for (int o = 0; o < OB; o++) z[r][v] = (ob + o == 0 ? v16{} : z[r][v]) + t[r][v][o] * p.head_w[ob + o];
        } else if (nr == R && left >= BW) {
          for (int r = 0; r < R; r++)
            for (int o = 0; o < OB; o++)
              for (int v = 0; v < NV; v++) store(yb + (r * Co + ob + o) * W + 16 * v, t[r][v][o]);
        } else {
          for (int r = 0; r < nr; r++)
            for (int o = 0; o < OB; o++)
              for (int v = 0; v < NV; v++) store_n(yb + (r * Co + ob + o) * W + 16 * v, t[r][v][o], left - 16 * v);
        }
      }
      if (p.head) {
        for (int r = 0; r < nr; r++) {
          for (int v = 0; v < NV; v++) {
            v16 u = z[r][v] + p.head_b;
            if (p.head == 2) u = 1.0f / (1.0f + vexp(-u));
            store_n(yb + r * W + 16 * v, u, left - 16 * v);
          }
        }
      }
    }
  }
}

// Output blocks of OB channels, R rows x NV vectors of pixels (see narrow_block)
constexpr int NARROW_OB = 4, NARROW_R = 2, NARROW_NV = 2;

void narrow_conv(ffi::ThreadPool& pool, const NarrowProblem& p, int64_t n) {
  constexpr int64_t T = NARROW_R * NARROW_BLOCKS_PER_TASK;
  const int64_t H = p.H, tasks = (H + T - 1) / T;
  parallel_for(pool, n * tasks, 1, [&p, H, tasks](int64_t k) {
    const int64_t ra = (k % tasks) * T;
    narrow_rows<NARROW_OB, NARROW_R, NARROW_NV>(p, k / tasks, ra, std::min<int64_t>(ra + T, H));
  });
}

// HWIO weights (3, 3, Ci, Co) -> (Co / OB, Ci, 9, OB), each output block's in the order
// narrow_block reads them.
std::vector<float> pack_narrow(const float* w, int64_t Ci, int64_t Co, int OB) {
  std::vector<float> out(9 * Ci * Co);
  float* q = out.data();
  for (int64_t ob = 0; ob < Co; ob += OB)
    for (int64_t i = 0; i < Ci; i++)
      for (int k = 0; k < 9; k++)
        for (int o = 0; o < OB; o++) *q++ = w[(k * Ci + i) * Co + ob + o];
  return out;
}

ffi::Error Conv3x3Narrow(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x0, ffi::Buffer<ffi::F32> x1,
                         ffi::Buffer<ffi::S32> bounds, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> bias,
                         ffi::Buffer<ffi::F32> alpha, ffi::Buffer<ffi::F32> beta, ffi::Buffer<ffi::F32> head_w,
                         ffi::Buffer<ffi::F32> head_b, ffi::ResultBuffer<ffi::F32> y, int32_t head, int32_t pool2) {
  if (pool2 != 0 && pool2 != 1) return ffi::Error::InvalidArgument("pool must be 0 or 1");
  const auto d0 = x0.dimensions();
  // with the pool the conv sees x0 at half its size
  std::vector<int64_t> seen(d0.begin(), d0.end());
  if (pool2 && seen.size() >= 3) seen[seen.size() - 3] /= 2, seen[seen.size() - 1] /= 2;
  ConvDims d;
  if (ffi::Error e = check_conv3x3(ConvForm{1, true, true}, ffi::Span<const int64_t>(seen), x1.dimensions(),
                                   w.dimensions(), bias.element_count(), alpha.element_count(), beta.element_count(),
                                   head, head_w.element_count(), head_b.element_count(), bounds.typed_data(),
                                   bounds.element_count(), d);
      e.failure())
    return e;
  if (pool2 && d.C1) return ffi::Error::InvalidArgument("the pooled conv reads x0 only (x1 must have 0 channels)");
  if (d.empty()) return ffi::Error::Success();
  const std::vector<float> wpk = pack_narrow(w.typed_data(), d.C0 + d.C1, d.Co, NARROW_OB);
  const NarrowProblem p{x0.typed_data(), x1.typed_data(), bounds.typed_data(), wpk.data(),
                        bias.typed_data(), alpha.typed_data(), beta.typed_data(), head_w.typed_data(),
                        head ? head_b.typed_data()[0] : 0.0f, head, y->typed_data(), d.H, d.W, d.C0, d.C1, d.Co,
                        pool2 == 1, d0[d0.size() - 3], d0[d0.size() - 1]};
  narrow_conv(pool, p, d.n);
  return ffi::Error::Success();
}

// One input row (Ci lines of w_in pixels) of the transposed conv into output rows 2r, 2r + 1
// (each Co lines of 2 w_in pixels): y[2r+a][o][2c+b] = bias[o] + sum_i x[i][c] w[a, b, i, o].
void narrow_upconv_row(const float* x, const float* w, const float* bias, float* y, int64_t w_in, int64_t Ci,
                       int64_t Co) {
  constexpr int OB = 4, NV = 2;
  const int64_t Wo = 2 * w_in;
  for (int a = 0; a < 2; a++) {
    float* yr = y + a * Co * Wo;
    const float* wa0 = w + (a * 2) * Ci * Co;
    const float* wa1 = w + (a * 2 + 1) * Ci * Co;
    for (int64_t ob = 0; ob < Co; ob += OB) {
      int64_t c = 0;
      for (; c + 16 * NV <= w_in; c += 16 * NV) {
        v16 acc[2][NV][OB];
        for (int v = 0; v < NV; v++)
          for (int o = 0; o < OB; o++) acc[0][v][o] = acc[1][v][o] = v16{} + bias[ob + o];
        for (int64_t i = 0; i < Ci; i++) {
          float w0[OB], w1[OB];
          for (int o = 0; o < OB; o++) w0[o] = wa0[i * Co + ob + o], w1[o] = wa1[i * Co + ob + o];
          for (int v = 0; v < NV; v++) {
            const v16 xv = load(x + i * w_in + c + 16 * v);
            for (int o = 0; o < OB; o++) {
              acc[0][v][o] += xv * w0[o];
              acc[1][v][o] += xv * w1[o];
            }
          }
        }
        for (int v = 0; v < NV; v++) {
          for (int o = 0; o < OB; o++) {
            const v16 e = acc[0][v][o], f = acc[1][v][o];
            float* yp = yr + (ob + o) * Wo + 2 * (c + 16 * v);
            store(yp, __builtin_shufflevector(e, f, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23));
            store(yp + 16, __builtin_shufflevector(e, f, 8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31));
          }
        }
      }
      for (; c < w_in; c++) {
        for (int o = 0; o < OB; o++) {
          float s0 = bias[ob + o], s1 = bias[ob + o];
          for (int64_t i = 0; i < Ci; i++) {
            s0 += x[i * w_in + c] * wa0[i * Co + ob + o];
            s1 += x[i * w_in + c] * wa1[i * Co + ob + o];
          }
          yr[(ob + o) * Wo + 2 * c] = s0;
          yr[(ob + o) * Wo + 2 * c + 1] = s1;
        }
      }
    }
  }
}

ffi::Error UpConv2x2Narrow(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                           ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y) {
  UpDims d;
  if (ffi::Error e = check_upconv2x2(ConvForm{1, true, true}, x.dimensions(), w.dimensions(), bias.element_count(), d);
      e.failure())
    return e;
  if (d.empty()) return ffi::Error::Success();
  const int64_t wi = d.w, Ci = d.Ci, Co = d.Co;
  const float *xp = x.typed_data(), *wp = w.typed_data(), *bp = bias.typed_data();
  float* yp = y->typed_data();
  parallel_for(pool, d.rows, ROWS_PER_TASK, [=](int64_t r) {
    narrow_upconv_row(xp + r * Ci * wi, wp, bp, yp + r * 4 * wi * Co, wi, Ci, Co);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrConv3x3Narrow, Conv3x3Narrow,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x0, planar rows (..., H, C0, W)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x1 (may have 0 channels)
                                  .Arg<ffi::Buffer<ffi::S32>>()  // bounds
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()  // alpha
                                  .Arg<ffi::Buffer<ffi::F32>>()  // beta
                                  .Arg<ffi::Buffer<ffi::F32>>()  // head_w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // head_b
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
                                  .Attr<int32_t>("head")
                                  .Attr<int32_t>("pool"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrUpConv2x2Narrow, UpConv2x2Narrow,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x, planar rows (..., h, Ci, w)
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
);
