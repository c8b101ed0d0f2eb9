// deepcr-jax native CPU kernels for *training* a 3x3 'same' convolution,
// NHWC float32, as XLA FFI handlers (used by deepcr_jax.training.native_conv).
//
// DeepcrConv3x3Plain: y = conv3x3_same(x, w) + bias, no epilogue:
//
//   y[n, r, c, o] = bias[o] + sum_{ky, kx, i} x[n, r+ky-1, c+kx-1, i] * w[ky, kx, i, o]
//
// with zero padding. The input gradient of the convolution is this same
// operation applied to dy with the kernel flipped in space and transposed in
// channels (w'[ky, kx, o, i] = w[2-ky, 2-kx, i, o], bias 0).
//
// DeepcrConv3x3WeightGrad: the gradients of that convolution's weights and bias,
//
//   dw[ky, kx, i, o] = sum_{n, r, c} x[n, r+ky-1, c+kx-1, i] * dy[n, r, c, o]
//   db[o]            = sum_{n, r, c} dy[n, r, c, o]
//
// Layouts: x (..., H, W, Ci), w (3, 3, Ci, Co) HWIO, bias (Co,), y and dy
// (..., H, W, Co); leading dimensions are batch. Co must be a multiple of 16.
//
// Both kernels use that for a fixed kernel row ky the pairs (kx, i) are
// contiguous in memory, in x (pixels c-1, c, c+1 of one row, Ci channels
// each) and in w alike: a 3x3 conv is, per kernel row, a product over
// J = 3 Ci "taps". Interior pixels (columns 1 .. W-2) take that path with no
// bounds checks; the first and last columns a checked per-pixel one.
//
// Forward: a tile of PB pixels x OV*16 output channels lives in vector
// registers; each tap costs OV weight loads and PB broadcasts for PB*OV FMAs.
// Rows are spread over XLA's intra-op thread pool.
//
// Weight gradient: a tile of IB taps x OV*16 output channels accumulates
// outer products x[tap] (broadcast) * dy[pixel] over a segment of a row's
// pixels. The pixels are cut into fixed work units (one image row each) that
// are dealt round robin to a fixed number of slots (independent of the number
// of threads); each slot owns a private partial sum, and the partials are
// added in slot order at the end, so the result is bit-identical from run to
// run whatever the threading.
//
// Written with GCC/Clang vector extensions (one zmm register per vector with
// -march=native on AVX-512; correct, if slower, on any other ISA).

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

typedef float vf __attribute__((vector_size(64)));
typedef float vfu __attribute__((vector_size(64), aligned(4)));
constexpr int64_t L = 16;  // floats per vector

inline vf ld(const float* p) { return *reinterpret_cast<const vfu*>(p); }
inline void st(float* p, vf v) { *reinterpret_cast<vfu*>(p) = v; }

// Run body(k) for k in [0, total): the calling thread and up to
// pool.num_threads() pool workers claim indices from a shared counter.
template <typename Body>
void run_tasks(ffi::ThreadPool& pool, int64_t total, const Body& body) {
  struct Counter {
    std::atomic<int64_t> claim{0};
    std::atomic<int64_t> finished{0};
  };
  if (total <= 0) return;
  auto ctr = std::make_shared<Counter>();
  auto work = [ctr, total, body] {
    int64_t k;
    while ((k = ctr->claim.fetch_add(1, std::memory_order_relaxed)) < total) {
      body(k);
      ctr->finished.fetch_add(1, std::memory_order_acq_rel);
    }
  };
  const int64_t extra = std::min<int64_t>(pool.num_threads(), total - 1);
  for (int64_t t = 0; t < extra; t++) pool.Schedule([work] { work(); });
  work();
  while (ctr->finished.load(std::memory_order_acquire) < total) std::this_thread::yield();
}

template <typename Dims>
int64_t batch_of(const Dims& d) {
  int64_t n = 1;
  for (size_t k = 0; k + 3 < d.size(); k++) n *= d[k];
  return n;
}

// ---------------------------------------------------------------- forward

struct Fwd {
  const float* x;
  const float* w;
  const float* b;
  float* y;
  int64_t H, W, Ci, Co;
};

// PB interior pixels starting at column c, output channels [o, o + OV*16).
// xr[ky]: row r+ky-1 of the image (nullptr outside it).
template <int PB, int OV>
inline void fwd_tile(const Fwd& p, const float* const* xr, int64_t c, int64_t o, float* yp) {
  const int64_t Ci = p.Ci, Co = p.Co, J = 3 * Ci;
  vf acc[PB][OV];
  for (int v = 0; v < OV; v++) {
    const vf bv = ld(p.b + o + v * L);
    for (int q = 0; q < PB; q++) acc[q][v] = bv;
  }
  for (int ky = 0; ky < 3; ky++) {
    if (!xr[ky]) continue;
    const float* xs = xr[ky] + (c - 1) * Ci;
    const float* ws = p.w + ky * J * Co + o;
    for (int64_t j = 0; j < J; j++) {
      vf wv[OV];
      for (int v = 0; v < OV; v++) wv[v] = ld(ws + j * Co + v * L);
#pragma GCC unroll 24
      for (int q = 0; q < PB; q++) {
        const float s = xs[q * Ci + j];
        for (int v = 0; v < OV; v++) acc[q][v] += s * wv[v];
      }
    }
  }
  for (int q = 0; q < PB; q++)
    for (int v = 0; v < OV; v++) st(yp + q * Co + v * L, acc[q][v]);
}

// One pixel with the column bounds checked (first/last column, row tails).
template <int OV>
inline void fwd_pixel(const Fwd& p, const float* const* xr, int64_t c, int64_t o, float* yp) {
  const int64_t Ci = p.Ci, Co = p.Co;
  vf acc[OV];
  for (int v = 0; v < OV; v++) acc[v] = ld(p.b + o + v * L);
  for (int ky = 0; ky < 3; ky++) {
    if (!xr[ky]) continue;
    for (int kx = 0; kx < 3; kx++) {
      const int64_t xc = c + kx - 1;
      if (xc < 0 || xc >= p.W) continue;
      const float* xs = xr[ky] + xc * Ci;
      const float* ws = p.w + (ky * 3 + kx) * Ci * Co + o;
      for (int64_t i = 0; i < Ci; i++)
        for (int v = 0; v < OV; v++) acc[v] += xs[i] * ld(ws + i * Co + v * L);
    }
  }
  for (int v = 0; v < OV; v++) st(yp + v * L, acc[v]);
}

template <int PB, int OV>
void fwd_row(const Fwd& p, int64_t n, int64_t r) {
  const int64_t H = p.H, W = p.W, Ci = p.Ci, Co = p.Co;
  const float* img = p.x + n * H * W * Ci;
  const float* xr[3];
  for (int ky = 0; ky < 3; ky++) {
    const int64_t rr = r + ky - 1;
    xr[ky] = (rr >= 0 && rr < H) ? img + rr * W * Ci : nullptr;
  }
  float* yr = p.y + (n * H + r) * W * Co;
  for (int64_t o = 0; o < Co; o += OV * L) {
    int64_t c = 1;
    for (; c + PB <= W - 1; c += PB) fwd_tile<PB, OV>(p, xr, c, o, yr + c * Co + o);
    for (int64_t cc = 0; cc < W; cc++)
      if (cc == 0 || cc >= c) fwd_pixel<OV>(p, xr, cc, o, yr + cc * Co + o);
  }
}

template <int PB, int OV>
void fwd_all(ffi::ThreadPool& pool, const Fwd& p, int64_t N) {
  const int64_t H = p.H;
  constexpr int64_t rows_per_task = 2;
  const int64_t rows = N * H, tasks = (rows + rows_per_task - 1) / rows_per_task;
  run_tasks(pool, tasks, [&p, H, rows](int64_t t) {
    for (int64_t k = t * rows_per_task; k < std::min(rows, (t + 1) * rows_per_task); k++)
      fwd_row<PB, OV>(p, k / H, k % H);
  });
}

ffi::Error Conv3x3Plain(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                        ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y) {
  const auto xd = x.dimensions(), wd = w.dimensions();
  if (xd.size() < 3) return ffi::Error::InvalidArgument("x must be (..., H, W, Ci)");
  if (wd.size() != 4 || wd[0] != 3 || wd[1] != 3) return ffi::Error::InvalidArgument("w must be (3, 3, Ci, Co)");
  const int64_t H = xd[xd.size() - 3], W = xd[xd.size() - 2], Ci = xd[xd.size() - 1], Co = wd[3];
  if (wd[2] != Ci) return ffi::Error::InvalidArgument("w's input channels differ from x's");
  if (Co % L != 0) return ffi::Error::InvalidArgument("output channels must be a multiple of 16");
  if (bias.element_count() != static_cast<size_t>(Co)) return ffi::Error::InvalidArgument("bias must be (Co,)");
  const int64_t N = batch_of(xd);
  if (N * H * W == 0 || Co == 0) return ffi::Error::Success();
  const Fwd p{x.typed_data(), w.typed_data(), bias.typed_data(), y->typed_data(), H, W, Ci, Co};
  if (Co % 64 == 0)
    fwd_all<6, 4>(pool, p, N);
  else if (Co % 32 == 0)
    fwd_all<12, 2>(pool, p, N);
  else
    fwd_all<24, 1>(pool, p, N);
  return ffi::Error::Success();
}

// ---------------------------------------------------------- weight gradient

struct WGrad {
  const float* x;
  const float* dy;
  int64_t H, W, Ci, Co;
};

constexpr int64_t SEGMENT = 64;  // pixels of a row per pass (x and dy of a segment stay in L1)
constexpr int64_t MAX_SLOTS = 32;

// acc over interior pixels [c0, c1) of row r, kernel row ky, taps [j0, j0+IB),
// channels [o, o + OV*16); added into part (3, J, Co) at (ky, j0, o).
template <int IB, int OV>
inline void wg_tile(const WGrad& p, const float* xrow, const float* dyrow, int64_t c0, int64_t c1, int ky,
                    int64_t j0, int64_t o, float* part) {
  const int64_t Ci = p.Ci, Co = p.Co, J = 3 * Ci;
  vf acc[IB][OV];
  for (int t = 0; t < IB; t++)
    for (int v = 0; v < OV; v++) acc[t][v] = vf{};
  const float* xs = xrow + (c0 - 1) * Ci + j0;
  const float* ds = dyrow + c0 * Co + o;
  for (int64_t c = c0; c < c1; c++, xs += Ci, ds += Co) {
    vf d[OV];
    for (int v = 0; v < OV; v++) d[v] = ld(ds + v * L);
#pragma GCC unroll 24
    for (int t = 0; t < IB; t++) {
      const float s = xs[t];
      for (int v = 0; v < OV; v++) acc[t][v] += s * d[v];
    }
  }
  float* pp = part + (ky * J + j0) * Co + o;
  for (int t = 0; t < IB; t++)
    for (int v = 0; v < OV; v++) st(pp + t * Co + v * L, ld(pp + t * Co + v * L) + acc[t][v]);
}

// Taps [j0, j1) in blocks of IB, the remainder in blocks of 8, 4, 2, 1.
template <int IB, int OV>
inline void wg_taps(const WGrad& p, const float* xrow, const float* dyrow, int64_t c0, int64_t c1, int ky,
                    int64_t o, float* part) {
  const int64_t J = 3 * p.Ci;
  int64_t j = 0;
  for (; j + IB <= J; j += IB) wg_tile<IB, OV>(p, xrow, dyrow, c0, c1, ky, j, o, part);
  for (; j + 8 <= J; j += 8) wg_tile<8, OV>(p, xrow, dyrow, c0, c1, ky, j, o, part);
  for (; j + 4 <= J; j += 4) wg_tile<4, OV>(p, xrow, dyrow, c0, c1, ky, j, o, part);
  for (; j + 2 <= J; j += 2) wg_tile<2, OV>(p, xrow, dyrow, c0, c1, ky, j, o, part);
  for (; j < J; j++) wg_tile<1, OV>(p, xrow, dyrow, c0, c1, ky, j, o, part);
}

// Column c (first or last) of row r: every tap whose input pixel is inside.
inline void wg_edge_pixel(const WGrad& p, const float* img, const float* dyp, int64_t r, int64_t c,
                          float* part) {
  const int64_t H = p.H, W = p.W, Ci = p.Ci, Co = p.Co;
  for (int ky = 0; ky < 3; ky++) {
    const int64_t rr = r + ky - 1;
    if (rr < 0 || rr >= H) continue;
    for (int kx = 0; kx < 3; kx++) {
      const int64_t cc = c + kx - 1;
      if (cc < 0 || cc >= W) continue;
      const float* xs = img + (rr * W + cc) * Ci;
      float* pp = part + (ky * 3 + kx) * Ci * Co;
      for (int64_t i = 0; i < Ci; i++)
        for (int64_t o = 0; o < Co; o += L) st(pp + i * Co + o, ld(pp + i * Co + o) + xs[i] * ld(dyp + o));
    }
  }
}

// Work unit: row r of image n, into the slot's partial (dw (3, 3, Ci, Co), then db (Co,)).
template <int IB, int OV>
void wg_row(const WGrad& p, int64_t n, int64_t r, float* part) {
  const int64_t H = p.H, W = p.W, Ci = p.Ci, Co = p.Co;
  const float* img = p.x + n * H * W * Ci;
  const float* dyrow = p.dy + (n * H + r) * W * Co;
  for (int64_t s = 1; s < W - 1; s += SEGMENT) {
    const int64_t e = std::min(s + SEGMENT, W - 1);
    for (int ky = 0; ky < 3; ky++) {
      const int64_t rr = r + ky - 1;
      if (rr < 0 || rr >= H) continue;
      for (int64_t o = 0; o < Co; o += OV * L) wg_taps<IB, OV>(p, img + rr * W * Ci, dyrow, s, e, ky, o, part);
    }
  }
  wg_edge_pixel(p, img, dyrow, r, 0, part);
  if (W > 1) wg_edge_pixel(p, img, dyrow + (W - 1) * Co, r, W - 1, part);
  float* db = part + 9 * Ci * Co;
  for (int64_t o = 0; o < Co; o += L) {
    vf a0 = vf{}, a1 = vf{};
    int64_t c = 0;
    for (; c + 2 <= W; c += 2) {
      a0 += ld(dyrow + c * Co + o);
      a1 += ld(dyrow + (c + 1) * Co + o);
    }
    if (c < W) a0 += ld(dyrow + c * Co + o);
    st(db + o, ld(db + o) + (a0 + a1));
  }
}

template <int IB, int OV>
void wg_all(ffi::ThreadPool& pool, const WGrad& p, int64_t N, float* dw, float* db) {
  const int64_t units = N * p.H, H = p.H;
  const int64_t slots = std::min(MAX_SLOTS, units);
  const int64_t size = 9 * p.Ci * p.Co + p.Co;
  std::unique_ptr<float[]> parts(new float[slots * size]);
  float* base = parts.get();
  run_tasks(pool, slots, [&p, base, size, slots, units, H](int64_t s) {
    float* part = base + s * size;
    std::memset(part, 0, sizeof(float) * size);
    for (int64_t u = s; u < units; u += slots) wg_row<IB, OV>(p, u / H, u % H, part);
  });
  // fixed-order reduction: element e sums the slots 0, 1, ... in turn
  const int64_t chunk = 4096, pieces = (size + chunk - 1) / chunk;
  run_tasks(pool, pieces, [base, size, slots, dw, db, &p](int64_t k) {
    const int64_t e0 = k * chunk, e1 = std::min(size, e0 + chunk), nw = 9 * p.Ci * p.Co;
    for (int64_t e = e0; e < e1; e++) {
      float s = base[e];
      for (int64_t t = 1; t < slots; t++) s += base[t * size + e];
      if (e < nw)
        dw[e] = s;
      else
        db[e - nw] = s;
    }
  });
}

ffi::Error Conv3x3WeightGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                             ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db) {
  const auto xd = x.dimensions(), dd = dy.dimensions();
  if (xd.size() < 3 || dd.size() != xd.size()) return ffi::Error::InvalidArgument("x, dy must be (..., H, W, C)");
  for (size_t k = 0; k + 1 < xd.size(); k++)
    if (xd[k] != dd[k]) return ffi::Error::InvalidArgument("dy must match x but for its channels");
  const int64_t H = xd[xd.size() - 3], W = xd[xd.size() - 2], Ci = xd[xd.size() - 1], Co = dd[dd.size() - 1];
  if (Co % L != 0) return ffi::Error::InvalidArgument("output channels must be a multiple of 16");
  if (dw->element_count() != static_cast<size_t>(9 * Ci * Co) || db->element_count() != static_cast<size_t>(Co))
    return ffi::Error::InvalidArgument("dw must be (3, 3, Ci, Co) and db (Co,)");
  const int64_t N = batch_of(xd);
  float *dwp = dw->typed_data(), *dbp = db->typed_data();
  if (N * H * W == 0) {
    std::fill(dwp, dwp + 9 * Ci * Co, 0.0f);
    std::fill(dbp, dbp + Co, 0.0f);
    return ffi::Error::Success();
  }
  const WGrad p{x.typed_data(), dy.typed_data(), H, W, Ci, Co};
  if (Co % 64 == 0)
    wg_all<6, 4>(pool, p, N, dwp, dbp);
  else if (Co % 32 == 0)
    wg_all<12, 2>(pool, p, N, dwp, dbp);
  else
    wg_all<24, 1>(pool, p, N, dwp, dbp);
  return ffi::Error::Success();
}

// ------------------------------------------------- BatchNorm statistics

// Per-channel reductions over the pixels of a (P, C) float32 array, C a
// multiple of 16, in units of UNIT pixels: each unit's partial is float32 in
// vector registers, the partials are added in unit order in double, so the
// result does not depend on the threading.
constexpr int64_t UNIT = 256;

// mean and biased variance: per unit its sum and the squared deviations from
// its own mean (a second pass over the unit, in cache), then
// M2 = sum_u [M2_u + n_u (mean_u - mean)^2].
ffi::Error ChannelStats(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> mean,
                        ffi::ResultBuffer<ffi::F32> var) {
  const auto d = x.dimensions();
  if (d.size() < 1) return ffi::Error::InvalidArgument("x must be (..., C)");
  const int64_t C = d[d.size() - 1];
  if (C % L != 0) return ffi::Error::InvalidArgument("channels must be a multiple of 16");
  const int64_t P = C ? static_cast<int64_t>(x.element_count()) / C : 0;
  if (P == 0) return ffi::Error::InvalidArgument("x has no pixels");
  const int64_t units = (P + UNIT - 1) / UNIT;
  std::vector<float> part(2 * units * C);
  const float* xp = x.typed_data();
  float* pp = part.data();
  run_tasks(pool, units, [=](int64_t u) {
    const int64_t p0 = u * UNIT, p1 = std::min(P, p0 + UNIT);
    const float inv_n = 1.0f / static_cast<float>(p1 - p0);
    for (int64_t o = 0; o < C; o += L) {
      vf s0 = vf{}, s1 = vf{};
      int64_t q = p0;
      for (; q + 2 <= p1; q += 2) {
        s0 += ld(xp + q * C + o);
        s1 += ld(xp + (q + 1) * C + o);
      }
      if (q < p1) s0 += ld(xp + q * C + o);
      const vf m = (s0 + s1) * inv_n;
      vf m0 = vf{}, m1 = vf{};
      for (q = p0; q + 2 <= p1; q += 2) {
        const vf a = ld(xp + q * C + o) - m, b = ld(xp + (q + 1) * C + o) - m;
        m0 += a * a;
        m1 += b * b;
      }
      if (q < p1) {
        const vf a = ld(xp + q * C + o) - m;
        m0 += a * a;
      }
      st(pp + (2 * u) * C + o, m);
      st(pp + (2 * u + 1) * C + o, m0 + m1);
    }
  });
  float *mp = mean->typed_data(), *vp = var->typed_data();
  for (int64_t c = 0; c < C; c++) {
    double total = 0.0;
    for (int64_t u = 0; u < units; u++)
      total += static_cast<double>(pp[2 * u * C + c]) * static_cast<double>(std::min(P, (u + 1) * UNIT) - u * UNIT);
    const double mu = total / static_cast<double>(P);
    double m2 = 0.0;
    for (int64_t u = 0; u < units; u++) {
      const double n_u = static_cast<double>(std::min(P, (u + 1) * UNIT) - u * UNIT);
      const double dm = static_cast<double>(pp[2 * u * C + c]) - mu;
      m2 += static_cast<double>(pp[(2 * u + 1) * C + c]) + n_u * dm * dm;
    }
    mp[c] = static_cast<float>(mu);
    vp[c] = static_cast<float>(m2 / static_cast<double>(P));
  }
  return ffi::Error::Success();
}

// The two sums of the BatchNorm + ReLU backward, with xhat = (x - mean) * inv,
// y = (x - mean) * (scale * inv) + bias (as the forward computes it) and
// g = ct where y > 0, else 0:  d_bias = sum g,  d_scale = sum g * xhat.
ffi::Error BnReluGradSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> ct, ffi::Buffer<ffi::F32> x,
                          ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> inv, ffi::Buffer<ffi::F32> scale,
                          ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> d_bias,
                          ffi::ResultBuffer<ffi::F32> d_scale) {
  const auto d = x.dimensions();
  if (d.size() < 1) return ffi::Error::InvalidArgument("x must be (..., C)");
  const int64_t C = d[d.size() - 1];
  if (C % L != 0) return ffi::Error::InvalidArgument("channels must be a multiple of 16");
  if (ct.element_count() != x.element_count()) return ffi::Error::InvalidArgument("ct must match x");
  for (auto* b : {&mean, &inv, &scale, &bias})
    if (b->element_count() != static_cast<size_t>(C)) return ffi::Error::InvalidArgument("statistics must be (C,)");
  const int64_t P = C ? static_cast<int64_t>(x.element_count()) / C : 0;
  const int64_t units = (P + UNIT - 1) / UNIT;
  std::vector<float> part(2 * std::max<int64_t>(units, 1) * C, 0.0f);
  const float *cp = ct.typed_data(), *xp = x.typed_data(), *mu = mean.typed_data(), *iv = inv.typed_data(),
              *sc = scale.typed_data(), *bi = bias.typed_data();
  float* pp = part.data();
  run_tasks(pool, units, [=](int64_t u) {
    const int64_t p0 = u * UNIT, p1 = std::min(P, p0 + UNIT);
    const vf zero = vf{};
    for (int64_t o = 0; o < C; o += L) {
      const vf m = ld(mu + o), i = ld(iv + o), a = ld(sc + o) * i, b = ld(bi + o);
      vf gb = vf{}, gs = vf{};
      for (int64_t q = p0; q < p1; q++) {
        const vf xc = ld(xp + q * C + o) - m;
        const vf y = xc * a + b;
        const vf g = y > zero ? ld(cp + q * C + o) : zero;
        gb += g;
        gs += g * (xc * i);
      }
      st(pp + (2 * u) * C + o, gb);
      st(pp + (2 * u + 1) * C + o, gs);
    }
  });
  float *db = d_bias->typed_data(), *ds = d_scale->typed_data();
  for (int64_t c = 0; c < C; c++) {
    double sb = 0.0, ss = 0.0;
    for (int64_t u = 0; u < units; u++) {
      sb += pp[2 * u * C + c];
      ss += pp[(2 * u + 1) * C + c];
    }
    db[c] = static_cast<float>(sb);
    ds[c] = static_cast<float>(ss);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrConv3x3Plain, Conv3x3Plain,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // w
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // y
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrConv3x3WeightGrad, Conv3x3WeightGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dw
                                  .Ret<ffi::Buffer<ffi::F32>>()  // db
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrChannelStats, ChannelStats,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Ret<ffi::Buffer<ffi::F32>>()  // mean
                                  .Ret<ffi::Buffer<ffi::F32>>()  // var
);

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrBnReluGradSums, BnReluGradSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // ct
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // mean
                                  .Arg<ffi::Buffer<ffi::F32>>()  // inv
                                  .Arg<ffi::Buffer<ffi::F32>>()  // scale
                                  .Arg<ffi::Buffer<ffi::F32>>()  // bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_bias
                                  .Ret<ffi::Buffer<ffi::F32>>()  // d_scale
);
