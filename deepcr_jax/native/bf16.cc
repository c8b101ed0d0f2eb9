// deepcr-jax native CPU kernels with bfloat16 inputs and weights, float32
// accumulation, as XLA FFI handlers (x86-64).
//
// DeepcrConv3x3Bf16: the bfloat16 twin of DeepcrConv3x3AffineRelu
// (conv3x3.cc): 3x3 'same' conv of [x0, x1] + bias, per-channel affine,
// ReLU, zero outside each image's bounds, optional fused 1x1 head (+
// sigmoid). x0, x1 and w are bfloat16; bias/alpha/beta/head are float32;
// the sums run in float32 and the result is rounded once to bfloat16 (to
// nearest even), or written as float32 by the head.
// Layouts: x0 (..., H, W, C0), x1 (..., H, W, C1) with C0, C1 even; w
// (3, 3, (C0 + C1) / 2, Co, 2): input channels in pairs, each output
// channel's pair adjacent (the operand order of vdpbf16ps and of AMX's
// B tiles); Co a multiple of 32.
//
// DeepcrUpConv2x2Bf16: the 2x2 stride-2 transposed convolution, bfloat16 in
// and out, w (2, 2, Ci / 2, Co, 2), bias float32 (AMX: blocks of 32 or 16
// input pixels of a row, the rest AVX-512-BF16).
//
// Two instruction paths, chosen per call by the ``path`` attribute and
// checked against the CPU at run time (CPUID, XGETBV, and for AMX the Linux
// arch_prctl(ARCH_REQ_XCOMP_PERM) permission), never assumed from the
// compile flags:
//   1  AVX-512-BF16: a block of PB pixels x 32 output channels in 24 zmm
//      accumulators; each vdpbf16ps multiplies a broadcast pair of input
//      channels into 16 output channels (32 multiply-adds).
//   2  AMX-BF16: blocks of 32 pixels x 32 output channels in four 16x16
//      float32 tiles; A tiles are 16 pixels x 32 input channels of an input
//      row copied once per task into a zero-padded scratch row (so that the
//      border columns and the row's tail run in tiles too), B tiles 16
//      channel pairs x 16 output channels of the packed weights. Needs C0
//      and C1 multiples of 32 (else the call runs AVX-512-BF16 throughout).
// The functions carry their own target attributes, so the file compiles on
// any x86-64 machine with GCC >= 11 / Clang >= 12 whatever -march says; on
// others (or other architectures) DeepcrCpuPaths() returns 0 and the
// handlers refuse to run.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "_shared.cc"
#include "xla/ffi/api/ffi.h"

#if defined(__x86_64__) && ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define DEEPCR_X86_BF16 1
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace ffi = xla::ffi;

namespace {

using deepcr::check_conv3x3;
using deepcr::check_upconv2x2;
using deepcr::ConvDims;
using deepcr::ConvForm;
using deepcr::parallel_for;
using deepcr::ROWS_PER_TASK;
using deepcr::UpDims;

typedef uint16_t bf16;

enum Path : int { kAvx512Bf16 = 1, kAmx = 2 };

#if defined(DEEPCR_X86_BF16)

#define BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma")))
#define AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,fma,amx-tile,amx-bf16")))

// Which paths this CPU and OS can run (bit mask of Path); asks Linux once for
// the AMX tile-data permission.
int detect_paths() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return 0;  // OSXSAVE
  unsigned lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const uint64_t xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  if ((xcr0 & 0xE6) != 0xE6) return 0;  // SSE, AVX, opmask, ZMM state enabled by the OS
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
  const unsigned max_sub = a;
  const bool f = b >> 16 & 1, bw = b >> 30 & 1, vl = b >> 31 & 1;
  const bool amx_bf16 = d >> 22 & 1, amx_tile = d >> 24 & 1;
  bool bf = false;
  if (max_sub >= 1) {
    unsigned a1, b1, c1, d1;
    __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1);
    bf = a1 >> 5 & 1;
  }
  int paths = 0;
  if (f && bw && vl && bf) paths |= kAvx512Bf16;
  if ((paths & kAvx512Bf16) && amx_bf16 && amx_tile && (xcr0 & 0x60000) == 0x60000) {
    constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0) paths |= kAmx;
  }
  return paths;
}

#else
int detect_paths() { return 0; }
#endif

int cpu_paths() {
  static const int paths = detect_paths();
  return paths;
}

struct ProblemBf16 {
  const bf16* x0;
  const bf16* x1;
  const int32_t* bounds;
  const bf16* w;  // (9, (C0 + C1) / 2, Co, 2)
  const float* bias;
  const float* alpha;
  const float* beta;
  const float* head_w;
  float head_b;
  int head;  // 0: y is bf16 (N, H, W, Co); 1: y = head, float32 (N, H, W, 1); 2: sigmoid(head)
  void* y;
  int64_t H, W, C0, C1, Co;
  bool amx;
};

#if defined(DEEPCR_X86_BF16)

constexpr int PB = 12;  // 24 accumulators + 2 weights (+ broadcasts) of 32 zmm registers

// acc += pairs(w) . broadcast(pair at xp): vdpbf16ps with the pair broadcast
// from memory. Inline assembly because GCC 12 spills and reloads the weight
// register around every _mm512_dpbf16_ps. (A register broadcast used for both
// output halves measured no faster.)
BF16_TARGET __attribute__((always_inline)) inline void dp_bcast(__m512& acc, __m512 w, const bf16* xp) {
  __asm__("vdpbf16ps %[x]%{1to16%}, %[w], %[acc]" : [acc] "+v"(acc) : [w] "v"(w), [x] "m"(*reinterpret_cast<const int32_t*>(xp)));
}

// NP pixels (pixel q at xp + q * C, C even) times the weights of their C / 2
// channel pairs (wp: pair 0 of this 32-channel output block, pairs Co * 2 apart).
template <int NP>
BF16_TARGET __attribute__((always_inline)) inline void accumulate(const bf16* xp, int64_t C, const bf16* wp,
                                                                  int64_t Co, __m512* a0, __m512* a1) {
  const int64_t Cp = C >> 1;
  for (int64_t i = 0; i < Cp; i++) {
    const __m512 w0 = _mm512_loadu_ps(wp + 2 * i * Co);
    const __m512 w1 = _mm512_loadu_ps(wp + 2 * i * Co + 32);
#pragma GCC unroll 16
    for (int q = 0; q < NP; q++) {
      dp_bcast(a0[q], w0, xp + q * C + 2 * i);
      dp_bcast(a1[q], w1, xp + q * C + 2 * i);
    }
  }
}

// bias, affine, ReLU on 32 channels of pixel ``pix`` (index in N*H*W); then
// bf16 out, or the float32 1x1 head.
BF16_TARGET inline void epilogue(const ProblemBf16& p, int64_t pix, int64_t o, __m512 a0, __m512 a1) {
  const __m512 zero = _mm512_setzero_ps();
  __m512 t0 = _mm512_fmadd_ps(_mm512_add_ps(a0, _mm512_loadu_ps(p.bias + o)), _mm512_loadu_ps(p.alpha + o),
                              _mm512_loadu_ps(p.beta + o));
  __m512 t1 = _mm512_fmadd_ps(_mm512_add_ps(a1, _mm512_loadu_ps(p.bias + o + 16)),
                              _mm512_loadu_ps(p.alpha + o + 16), _mm512_loadu_ps(p.beta + o + 16));
  t0 = _mm512_max_ps(t0, zero);
  t1 = _mm512_max_ps(t1, zero);
  if (p.head == 0) {
    bf16* y = static_cast<bf16*>(p.y) + pix * p.Co + o;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y), (__m256i)_mm512_cvtneps_pbh(t0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(y + 16), (__m256i)_mm512_cvtneps_pbh(t1));
    return;
  }
  const __m512 s = _mm512_fmadd_ps(t1, _mm512_loadu_ps(p.head_w + 16), _mm512_mul_ps(t0, _mm512_loadu_ps(p.head_w)));
  const float z = _mm512_reduce_add_ps(s) + p.head_b;
  static_cast<float*>(p.y)[pix] = p.head == 2 ? 1.0f / (1.0f + std::exp(-z)) : z;
}

constexpr int AMX_ROWS_PER_TASK = 4;

struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// Every tile 16 rows x 64 bytes: C tiles 16 pixels x 16 float32 channels, A
// tiles 16 pixels x 32 bf16 channels, B tiles 16 channel pairs x 16 outputs.
AMX_TARGET inline void load_tile_config() {
  TileConfig cfg = {};
  cfg.palette = 1;
  for (int t = 0; t < 8; t++) cfg.colsb[t] = 64, cfg.rows[t] = 16;
  _tile_loadconfig(&cfg);
}

// AMX: rows [ra, rb) of image n. Each input row inside the bounds is copied
// once per task into a zero-padded scratch row (a zero pixel before column
// c0, zeros from c1 on), so that every output column in [c0, c1) runs in
// tiles, the borders included; three scratch rows (r - 1, r, r + 1) per input.
AMX_TARGET void amx_rows(const ProblemBf16& p, int64_t n, int64_t ra, int64_t rb) {
  const int64_t H = p.H, W = p.W, C0 = p.C0, C1 = p.C1, Ci = C0 + C1, Co = p.Co, Cip = Ci / 2;
  const int64_t Cy = p.head ? 1 : Co;
  const size_t esize = p.head ? sizeof(float) : sizeof(bf16);
  const int32_t* bd = p.bounds + 4 * n;
  const int64_t r0 = bd[0], r1 = bd[1], c0 = bd[2], c1 = bd[3], span = c1 - c0;
  const int64_t Wp = (span + 31) / 32 * 32 + 2;  // padded pixels per scratch row
  thread_local std::vector<bf16> scratch;
  if (scratch.size() < static_cast<size_t>(3 * Wp * Ci)) scratch.resize(3 * Wp * Ci);
  int64_t held[3] = {-1, -1, -1};
  alignas(64) float out[4][16][16];
  const int64_t wstride = Co * 4;  // bytes between channel pairs of the packed weights
  bool configured = false;
  for (int64_t r = ra; r < rb; r++) {
    char* yr = static_cast<char*>(p.y) + (n * H + r) * W * Cy * esize;
    if (r < r0 || r >= r1 || span <= 0) {
      std::memset(yr, 0, esize * W * Cy);
      continue;
    }
    std::memset(yr, 0, esize * c0 * Cy);
    std::memset(yr + c1 * Cy * esize, 0, esize * (W - c1) * Cy);
    const int ky0 = r - 1 < r0 ? 1 : 0, ky1 = r + 1 >= r1 ? 2 : 3;
    for (int ky = ky0; ky < ky1; ky++) {
      const int64_t rr = r + ky - 1, slot = rr % 3;
      if (held[slot] == rr) continue;
      held[slot] = rr;
      bf16* dst = scratch.data() + slot * Wp * Ci;
      for (int part = 0; part < 2; part++) {
        const int64_t C = part ? C1 : C0;
        if (!C) continue;
        const bf16* src = (part ? p.x1 : p.x0) + ((n * H + rr) * W + c0) * C;
        std::memset(dst, 0, sizeof(bf16) * C);
        std::memcpy(dst + C, src, sizeof(bf16) * span * C);
        std::memset(dst + (1 + span) * C, 0, sizeof(bf16) * (Wp - 1 - span) * C);
        dst += Wp * C;
      }
    }
    if (!configured) load_tile_config(), configured = true;
    const int64_t base = (n * H + r) * W + c0;
    for (int64_t o = 0; o < Co; o += 32) {
      for (int64_t j = 0; j < span; j += 32) {
        const bool two = span - j > 16;  // a second 16-pixel block
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
        for (int ky = ky0; ky < ky1; ky++) {
          const bf16* row = scratch.data() + ((r + ky - 1) % 3) * Wp * Ci;
          for (int kx = 0; kx < 3; kx++) {
            const bf16* wk = p.w + ((ky * 3 + kx) * Cip) * Co * 2 + o * 2;
            for (int part = 0; part < 2; part++) {
              const int64_t C = part ? C1 : C0;
              const bf16* xs = row + (part ? Wp * C0 : 0) + (j + kx) * C;
              const bf16* ws = wk + (part ? C0 / 2 : 0) * Co * 2;
              for (int64_t s = 0; s < C; s += 32) {
                _tile_loadd(6, ws + (s / 2) * Co * 2, wstride);
                _tile_loadd(7, ws + (s / 2) * Co * 2 + 32, wstride);
                _tile_loadd(4, xs + s, C * 2);
                _tile_dpbf16ps(0, 4, 6);
                _tile_dpbf16ps(1, 4, 7);
                if (two) {
                  _tile_loadd(5, xs + s + 16 * C, C * 2);
                  _tile_dpbf16ps(2, 5, 6);
                  _tile_dpbf16ps(3, 5, 7);
                }
              }
            }
          }
        }
        _tile_stored(0, out[0], 64);
        _tile_stored(1, out[1], 64);
        if (two) {
          _tile_stored(2, out[2], 64);
          _tile_stored(3, out[3], 64);
        }
        const int64_t count = std::min<int64_t>(32, span - j);
        for (int64_t m = 0; m < count; m++)
          epilogue(p, base + j + m, o, _mm512_load_ps(out[2 * (m / 16)][m % 16]),
                   _mm512_load_ps(out[2 * (m / 16) + 1][m % 16]));
      }
    }
  }
  if (configured) _tile_release();
}

BF16_TARGET void conv_row(const ProblemBf16& p, int64_t n, int64_t r) {
  const int64_t H = p.H, W = p.W, C0 = p.C0, C1 = p.C1, Co = p.Co, Cip = (C0 + C1) / 2;
  const int64_t Cy = p.head ? 1 : Co;
  const size_t esize = p.head ? sizeof(float) : sizeof(bf16);
  const int32_t* b = p.bounds + 4 * n;
  const int64_t r0 = b[0], r1 = b[1], c0 = b[2], c1 = b[3];
  char* yr = static_cast<char*>(p.y) + (n * H + r) * W * Cy * esize;
  if (r < r0 || r >= r1 || c0 >= c1) {
    std::memset(yr, 0, esize * W * Cy);
    return;
  }
  std::memset(yr, 0, esize * c0 * Cy);
  std::memset(yr + c1 * Cy * esize, 0, esize * (W - c1) * Cy);
  const bf16* x0 = p.x0 + n * H * W * C0;
  const bf16* x1 = p.x1 + n * H * W * C1;
  const int ky0 = r - 1 < r0 ? 1 : 0, ky1 = r + 1 >= r1 ? 2 : 3;
  const int64_t row = (n * H + r) * W;
  for (int64_t o = 0; o < Co; o += 32) {
    int64_t c = c0 + 1;
    for (; c + PB <= c1 - 1; c += PB) {
      __m512 acc0[PB], acc1[PB];
      for (int q = 0; q < PB; q++) acc0[q] = acc1[q] = _mm512_setzero_ps();
      for (int ky = ky0; ky < ky1; ky++) {
        const int64_t pix = (r + ky - 1) * W + (c - 1);
        for (int kx = 0; kx < 3; kx++) {
          const bf16* wp = p.w + ((ky * 3 + kx) * Cip) * Co * 2 + o * 2;
          accumulate<PB>(x0 + (pix + kx) * C0, C0, wp, Co, acc0, acc1);
          if (C1) accumulate<PB>(x1 + (pix + kx) * C1, C1, wp + C0 * Co, Co, acc0, acc1);
        }
      }
      for (int q = 0; q < PB; q++) epilogue(p, row + c + q, o, acc0[q], acc1[q]);
    }
    // the first column, the columns left over by the blocks, and the last
    for (int64_t cc = c0; cc < c1; cc++) {
      if (cc >= c0 + 1 && cc < c) continue;
      __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
      for (int ky = ky0; ky < ky1; ky++) {
        for (int kx = 0; kx < 3; kx++) {
          const int64_t xc = cc + kx - 1;
          if (xc < c0 || xc >= c1) continue;
          const int64_t pix = (r + ky - 1) * W + xc;
          const bf16* wp = p.w + ((ky * 3 + kx) * Cip) * Co * 2 + o * 2;
          accumulate<1>(x0 + pix * C0, C0, wp, Co, &a0, &a1);
          if (C1) accumulate<1>(x1 + pix * C1, C1, wp + C0 * Co, Co, &a0, &a1);
        }
      }
      epilogue(p, row + cc, o, a0, a1);
    }
  }
}

// AMX part of one input row of the transposed conv: blocks of 32 (then 16)
// input pixels that lie inside the row; returns the first pixel not done.
AMX_TARGET int64_t upconv_row_amx(const bf16* x, const bf16* w, const float* bias, bf16* y, int64_t w_in,
                                  int64_t Ci, int64_t Co) {
  if (w_in < 16) return 0;
  load_tile_config();
  const int64_t Wo = 2 * w_in, Cip = Ci / 2, wstride = Co * 4;
  alignas(64) float out[4][16][16];
  int64_t c = 0;
  for (int blk = 32; blk >= 16; blk -= 16) {
    for (; c + blk <= w_in; c += blk) {
      for (int ab = 0; ab < 4; ab++) {
        const bf16* wk = w + (ab * Cip) * Co * 2;
        bf16* yr = y + (ab / 2) * Wo * Co;
        for (int64_t o = 0; o < Co; o += 32) {
          _tile_zero(0);
          _tile_zero(1);
          _tile_zero(2);
          _tile_zero(3);
          for (int64_t s = 0; s < Ci; s += 32) {
            _tile_loadd(6, wk + (s / 2) * Co * 2 + o * 2, wstride);
            _tile_loadd(7, wk + (s / 2) * Co * 2 + o * 2 + 32, wstride);
            _tile_loadd(4, x + c * Ci + s, Ci * 2);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            if (blk == 32) {
              _tile_loadd(5, x + (c + 16) * Ci + s, Ci * 2);
              _tile_dpbf16ps(2, 5, 6);
              _tile_dpbf16ps(3, 5, 7);
            }
          }
          _tile_stored(0, out[0], 64);
          _tile_stored(1, out[1], 64);
          if (blk == 32) {
            _tile_stored(2, out[2], 64);
            _tile_stored(3, out[3], 64);
          }
          const __m512 b0 = _mm512_loadu_ps(bias + o), b1 = _mm512_loadu_ps(bias + o + 16);
          for (int m = 0; m < blk; m++) {
            bf16* yp = yr + (2 * (c + m) + ab % 2) * Co + o;
            const __m512 v0 = _mm512_add_ps(_mm512_load_ps(out[2 * (m / 16)][m % 16]), b0);
            const __m512 v1 = _mm512_add_ps(_mm512_load_ps(out[2 * (m / 16) + 1][m % 16]), b1);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(yp), (__m256i)_mm512_cvtneps_pbh(v0));
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(yp + 16), (__m256i)_mm512_cvtneps_pbh(v1));
          }
        }
      }
    }
  }
  _tile_release();
  return c;
}

// y[n, 2r+a, 2c+b, :] = bias + x[n, r, c, :] . w[a, b]
BF16_TARGET void upconv_row(const bf16* x, const bf16* w, const float* bias, bf16* y, int64_t w_in, int64_t Ci,
                            int64_t Co, bool amx) {
  const int64_t Wo = 2 * w_in, Cip = Ci / 2;
  const int64_t start = amx ? upconv_row_amx(x, w, bias, y, w_in, Ci, Co) : 0;
  for (int a = 0; a < 2; a++) {
    bf16* yr = y + a * Wo * Co;
    for (int bx = 0; bx < 2; bx++) {
      const bf16* wk = w + ((a * 2 + bx) * Cip) * Co * 2;
      for (int64_t o = 0; o < Co; o += 32) {
        const __m512 b0 = _mm512_loadu_ps(bias + o), b1 = _mm512_loadu_ps(bias + o + 16);
        auto put = [&](int64_t c, __m512 v0, __m512 v1) {
          bf16* yp = yr + (2 * c + bx) * Co + o;
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(yp), (__m256i)_mm512_cvtneps_pbh(v0));
          _mm256_storeu_si256(reinterpret_cast<__m256i*>(yp + 16), (__m256i)_mm512_cvtneps_pbh(v1));
        };
        int64_t c = start;
        for (; c + PB <= w_in; c += PB) {
          __m512 acc0[PB], acc1[PB];
          for (int q = 0; q < PB; q++) acc0[q] = b0, acc1[q] = b1;
          accumulate<PB>(x + c * Ci, Ci, wk + o * 2, Co, acc0, acc1);
          for (int q = 0; q < PB; q++) put(c + q, acc0[q], acc1[q]);
        }
        for (; c < w_in; c++) {
          __m512 a0 = b0, a1 = b1;
          accumulate<1>(x + c * Ci, Ci, wk + o * 2, Co, &a0, &a1);
          put(c, a0, a1);
        }
      }
    }
  }
}

#endif  // DEEPCR_X86_BF16

ffi::Error check_path(int32_t path) {
  if (path != kAvx512Bf16 && path != kAmx) return ffi::Error::InvalidArgument("path must be 1 (AVX-512-BF16) or 2 (AMX)");
  if (!(cpu_paths() & path)) return ffi::Error::InvalidArgument("this CPU cannot run the requested bf16 path");
  return ffi::Error::Success();
}

ffi::Error Conv3x3Bf16(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x0, ffi::Buffer<ffi::BF16> x1,
                       ffi::Buffer<ffi::S32> bounds, ffi::Buffer<ffi::BF16> w, ffi::Buffer<ffi::F32> bias,
                       ffi::Buffer<ffi::F32> alpha, ffi::Buffer<ffi::F32> beta, ffi::Buffer<ffi::F32> head_w,
                       ffi::Buffer<ffi::F32> head_b, ffi::Result<ffi::AnyBuffer> y, int32_t head, int32_t path) {
  if (ffi::Error e = check_path(path); e.failure()) return e;
  ConvDims d;
  if (ffi::Error e = check_conv3x3(ConvForm{2, false, false}, x0.dimensions(), x1.dimensions(), w.dimensions(),
                                   bias.element_count(), alpha.element_count(), beta.element_count(), head,
                                   head_w.element_count(), head_b.element_count(), bounds.typed_data(),
                                   bounds.element_count(), d);
      e.failure())
    return e;
  if (y->element_type() != (head ? ffi::DataType::F32 : ffi::DataType::BF16))
    return ffi::Error::InvalidArgument("y must be bf16, or float32 with a head");
  if (d.empty()) return ffi::Error::Success();
#if defined(DEEPCR_X86_BF16)
  const int64_t n = d.n, H = d.H, W = d.W, C0 = d.C0, C1 = d.C1, Co = d.Co;
  const ProblemBf16 p{x0.typed_data(), x1.typed_data(), bounds.typed_data(), w.typed_data(),
                      bias.typed_data(), alpha.typed_data(), beta.typed_data(), head_w.typed_data(),
                      head ? head_b.typed_data()[0] : 0.0f, head, y->untyped_data(), H, W, C0, C1, Co,
                      path == kAmx && C0 % 32 == 0 && C1 % 32 == 0};
  if (p.amx) {
    const int64_t tasks = (H + AMX_ROWS_PER_TASK - 1) / AMX_ROWS_PER_TASK;
    parallel_for(pool, n * tasks, 1, [&p, H, tasks](int64_t k) {
      const int64_t ra = (k % tasks) * AMX_ROWS_PER_TASK;
      amx_rows(p, k / tasks, ra, std::min<int64_t>(ra + AMX_ROWS_PER_TASK, H));
    });
  } else {
    parallel_for(pool, n * H, ROWS_PER_TASK, [&p, H](int64_t k) { conv_row(p, k / H, k % H); });
  }
  return ffi::Error::Success();
#else
  return ffi::Error::InvalidArgument("bf16 kernels not compiled for this machine");
#endif
}

ffi::Error UpConv2x2Bf16(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> w,
                         ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::BF16> y, int32_t path) {
  if (ffi::Error e = check_path(path); e.failure()) return e;
  UpDims d;
  if (ffi::Error e = check_upconv2x2(ConvForm{2, false, false}, x.dimensions(), w.dimensions(), bias.element_count(), d);
      e.failure())
    return e;
  if (d.empty()) return ffi::Error::Success();
#if defined(DEEPCR_X86_BF16)
  const int64_t rows = d.rows, wi = d.w, Ci = d.Ci, Co = d.Co;
  const bf16 *xp = x.typed_data(), *wp = w.typed_data();
  const float* bp = bias.typed_data();
  bf16* yp = y->typed_data();
  const bool amx = path == kAmx && Ci % 32 == 0;
  parallel_for(pool, rows, ROWS_PER_TASK, [=](int64_t r) {
    upconv_row(xp + r * wi * Ci, wp, bp, yp + r * 4 * wi * Co, wi, Ci, Co, amx);
  });
  return ffi::Error::Success();
#else
  return ffi::Error::InvalidArgument("bf16 kernels not compiled for this machine");
#endif
}

}  // namespace

// Bit mask of the bf16 paths this CPU runs: 1 AVX-512-BF16, 2 AMX-BF16 (its
// arch_prctl permission requested on the first call).
extern "C" __attribute__((visibility("default"))) int DeepcrCpuPaths() { return cpu_paths(); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrConv3x3Bf16, Conv3x3Bf16,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // x0
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // x1 (may have 0 channels)
                                  .Arg<ffi::Buffer<ffi::S32>>()   // bounds
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // w, packed in channel pairs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias
                                  .Arg<ffi::Buffer<ffi::F32>>()   // alpha
                                  .Arg<ffi::Buffer<ffi::F32>>()   // beta
                                  .Arg<ffi::Buffer<ffi::F32>>()   // head_w
                                  .Arg<ffi::Buffer<ffi::F32>>()   // head_b
                                  .Ret<ffi::AnyBuffer>()          // y: bf16, or float32 with a head
                                  .Attr<int32_t>("head")
                                  .Attr<int32_t>("path"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(DeepcrUpConv2x2Bf16, UpConv2x2Bf16,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // x
                                  .Arg<ffi::Buffer<ffi::BF16>>()  // w, packed in channel pairs
                                  .Arg<ffi::Buffer<ffi::F32>>()   // bias
                                  .Ret<ffi::Buffer<ffi::BF16>>()  // y
                                  .Attr<int32_t>("path"));
