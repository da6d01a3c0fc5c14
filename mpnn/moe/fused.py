"""The expert MLPs of a token-choice MoE over rows sorted by expert, with fused glue (C++, :mod:`mpnn.native`).

For M kept assignments sorted by expert (expert e owns rows ``s_e .. s_{e+1}-1``), assignment i of
token ``t_i`` with combine weight ``w_i``:

* forward  ``X_i = x_{t_i}``, ``H_i = relu(X_i W1_e + b1_e)``, ``O_i = H_i W2_e + b2_e``,
  ``y_t = sum_{i: t_i = t} w_i O_i``;
* backward ``dO_i = w_i dy_{t_i}``, ``dw_i = <dy_{t_i}, O_i>``, ``db2_e = sum_{i in e} dO_i``,
  ``dH = (dO W2_e^T) * [H > 0]``, ``db1_e = sum_{i in e} dH_i``, ``dW2_e = H_e^T dO_e``,
  ``dW1_e = X_e^T dH_e``, ``dx_t = sum_{i: t_i = t} dH_i W1_e^T``.

The matrix products are per-expert GEMMs; the glue (gather, bias, ReLU, weighting, scatter-add, bias
and weight gradients) is done in single passes by the C++ kernels below instead of about twenty
torch operations with their intermediate tensors. Two engines run the GEMMs:

* ``"native"`` (the default, :func:`engine`): a register-blocked C++ GEMM (8 rows x 32 columns of
  accumulators, GCC vector extensions, 256 x 256 panels of B read in place from the L2 cache, B
  transposed once per expert for the input gradients) -- no library call per expert and per operation;
* ``"grouped"``: :func:`torch.nn.functional.grouped_mm` (the BLAS library), kept for comparison.

Every kernel visits the rows in a fixed order, so results do not depend on the thread count.
:func:`usable` is False (callers run the pure-torch path in :mod:`mpnn.moe.experts`) without a
compiler, with ``MPNN_FUSED=0``, or for anything but contiguous float32 on the CPU.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mpnn import native

SOURCE = r"""
#include <cmath>
#include <cstdint>
#include <cstring>

typedef float v16 __attribute__((vector_size(64)));
static inline v16 ld(const float* p) { v16 v; std::memcpy(&v, p, sizeof v); return v; }
static inline void st(float* p, v16 v) { std::memcpy(p, &v, sizeof v); }
static inline v16 splat(float a) { v16 v = {}; return v + a; }
static inline v16 relu(v16 v) { v16 z = {}; return v > z ? v : z; }

// C[r][n] = (acc ? C[r][n] : bias[n] or 0) + sum_k A(r, k) B[k][n] for r < R, n < N (ReLU at the store
// if relu); A(r, k) = a[r * ars + k * aks], B row-major with row stride ldb, C with row stride ldc.
template <int R>
static void block(int64_t K, int64_t N, const float* a, int64_t ars, int64_t aks, const float* b, int64_t ldb,
                  float* c, int64_t ldc, const float* bias, bool acc, bool do_relu) {
  int64_t n = 0;
  for (; n + 32 <= N; n += 32) {
    v16 s0[R], s1[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      if (acc) { s0[r] = ld(c + r * ldc + n); s1[r] = ld(c + r * ldc + n + 16); }
      else if (bias) { s0[r] = ld(bias + n); s1[r] = ld(bias + n + 16); }
      else { s0[r] = v16{}; s1[r] = v16{}; }
    }
    for (int64_t k = 0; k < K; ++k) {
      const v16 b0 = ld(b + k * ldb + n), b1 = ld(b + k * ldb + n + 16);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const v16 av = splat(a[r * ars + k * aks]);
        s0[r] += av * b0;
        s1[r] += av * b1;
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      st(c + r * ldc + n, do_relu ? relu(s0[r]) : s0[r]);
      st(c + r * ldc + n + 16, do_relu ? relu(s1[r]) : s1[r]);
    }
  }
  for (; n + 16 <= N; n += 16) {
    v16 s0[R];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) s0[r] = acc ? ld(c + r * ldc + n) : bias ? ld(bias + n) : v16{};
    for (int64_t k = 0; k < K; ++k) {
      const v16 b0 = ld(b + k * ldb + n);
#pragma GCC unroll 8
      for (int r = 0; r < R; ++r) s0[r] += splat(a[r * ars + k * aks]) * b0;
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) st(c + r * ldc + n, do_relu ? relu(s0[r]) : s0[r]);
  }
  for (; n < N; ++n) {
    for (int r = 0; r < R; ++r) {
      float s = acc ? c[r * ldc + n] : bias ? bias[n] : 0.f;
      for (int64_t k = 0; k < K; ++k) s += a[r * ars + k * aks] * b[k * ldb + n];
      c[r * ldc + n] = do_relu && s < 0.f ? 0.f : s;
    }
  }
}

// rows x N output in tiles: NB columns x 8 rows (the remainder by a smaller block) x KB reduction steps,
// so that a KB x NB panel of B stays in the L2 cache; C is re-read between panels, ReLU after the last
static constexpr int64_t KB = 256, NB = 256;

template <int R>
static void panels(int64_t K, int64_t N, const float* a, int64_t ars, int64_t aks, const float* b, int64_t ld,
                   float* c, const float* bias, bool do_relu) {
  if (K == 0) { block<R>(0, N, a, ars, aks, b, ld, c, ld, bias, false, do_relu); return; }
  for (int64_t k0 = 0; k0 < K; k0 += KB) {
    const int64_t kn = K - k0 < KB ? K - k0 : KB;
    block<R>(kn, N, a + k0 * aks, ars, aks, b + k0 * ld, ld, c, ld, k0 ? nullptr : bias, k0 > 0,
             do_relu && k0 + kn == K);
  }
}

static void gemm(int64_t rows, int64_t K, int64_t N, const float* a, int64_t ars, int64_t aks, const float* b,
                 float* c, const float* bias, bool do_relu) {
  for (int64_t n0 = 0; n0 < N; n0 += NB) {
    const int64_t nb = N - n0 < NB ? N - n0 : NB;
    const float* bn = b + n0;
    const float* biasn = bias ? bias + n0 : nullptr;
    int64_t r = 0;
    for (; r + 8 <= rows; r += 8) panels<8>(K, nb, a + r * ars, ars, aks, bn, N, c + r * N + n0, biasn, do_relu);
    const float* ar = a + r * ars;
    float* cr = c + r * N + n0;
    switch (rows - r) {
      case 7: panels<7>(K, nb, ar, ars, aks, bn, N, cr, biasn, do_relu); break;
      case 6: panels<6>(K, nb, ar, ars, aks, bn, N, cr, biasn, do_relu); break;
      case 5: panels<5>(K, nb, ar, ars, aks, bn, N, cr, biasn, do_relu); break;
      case 4: panels<4>(K, nb, ar, ars, aks, bn, N, cr, biasn, do_relu); break;
      case 3: panels<3>(K, nb, ar, ars, aks, bn, N, cr, biasn, do_relu); break;
      case 2: panels<2>(K, nb, ar, ars, aks, bn, N, cr, biasn, do_relu); break;
      case 1: panels<1>(K, nb, ar, ars, aks, bn, N, cr, biasn, do_relu); break;
      default: break;
    }
  }
}

// src (R, C) row-major -> dst (C, R), in 16 x 16 tiles
static void transpose(int64_t R, int64_t C, const float* src, float* dst) {
  for (int64_t i0 = 0; i0 < R; i0 += 16)
    for (int64_t j0 = 0; j0 < C; j0 += 16) {
      if (i0 + 16 <= R && j0 + 16 <= C) {          // a full tile: constant bounds, through registers
        float t[16][16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) std::memcpy(t[i], src + (i0 + i) * C + j0, sizeof t[i]);
        for (int j = 0; j < 16; ++j) {
          float col[16];
#pragma GCC unroll 16
          for (int i = 0; i < 16; ++i) col[i] = t[i][j];
          std::memcpy(dst + (j0 + j) * R + i0, col, sizeof col);
        }
        continue;
      }
      const int64_t i1 = i0 + 16 < R ? i0 + 16 : R, j1 = j0 + 16 < C ? j0 + 16 : C;
      for (int64_t i = i0; i < i1; ++i)
        for (int64_t j = j0; j < j1; ++j) dst[j * R + i] = src[i * C + j];
    }
}

// Grouped products over rows sorted by group, starts[E+1]:
// mode 0: C_e = A_e B_e (+ bias_e, ReLU)   A (M, K), B (E, K, N), C (M, N)
// mode 1: C_e = A_e^T B_e                  A (M, K), B (M, N), C (E, K, N)  (weight gradients)
// mode 2: C_e = A_e B_e^T                  A (M, K), B (E, N, K), C (M, N)  (input gradients; B_e is
//         transposed into a scratch buffer first, one expert at a time)
extern "C" void mpnn_moe_gemm(int mode, int64_t E, const int64_t* starts, int64_t K, int64_t N,
                              const float* a, const float* b, const float* bias, int do_relu, float* c) {
  float* scratch = mode == 2 ? new float[K * N] : nullptr;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t s = starts[e], rows = starts[e + 1] - s;
    if (mode == 0) {
      if (rows) gemm(rows, K, N, a + s * K, K, 1, b + e * K * N, c + s * N, bias ? bias + e * N : nullptr, do_relu);
    } else if (mode == 2) {
      if (!rows) continue;
      transpose(N, K, b + e * K * N, scratch);
      gemm(rows, K, N, a + s * K, K, 1, scratch, c + s * N, nullptr, false);
    } else {
      // rows of C are the K input features; the reduction runs over the group's rows
      float* ce = c + e * K * N;
      if (!rows) { std::memset(ce, 0, sizeof(float) * K * N); continue; }
      gemm(K, rows, N, a + s * K, 1, K, b + s * N, ce, nullptr, false);
    }
  }
  delete[] scratch;
}

// Forward glue. op 0: X_i = x[t_i] (gather, n columns).  op 1: H_i = relu(H_i + b1_{e(i)}).
// op 2: y = 0; y[t_i] += w_i (O_i + b2_{e(i)}), O_i += b2 stored (bias may be null: O already has it);
// w_i = weights[t_i * k + a_i / T] for assignment a_i = order[i] (weights (T, k)).
extern "C" void mpnn_moe_glue(int op, int64_t T, int64_t M, int64_t E, const int64_t* starts, int64_t n,
                              const int64_t* token, const int64_t* order, int64_t k, const float* w,
                              const float* src, const float* bias, float* dst) {
  if (op == 0) {
    for (int64_t i = 0; i < M; ++i) std::memcpy(dst + i * n, src + token[i] * n, sizeof(float) * n);
  } else if (op == 1) {
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = starts[e]; i < starts[e + 1]; ++i)
        for (int64_t j = 0; j < n; ++j) { float v = dst[i * n + j] + bias[e * n + j]; dst[i * n + j] = v > 0.f ? v : 0.f; }
  } else {
    float* o = const_cast<float*>(src);
    std::memset(dst, 0, sizeof(float) * T * n);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t i = starts[e]; i < starts[e + 1]; ++i) {
        float* oi = o + i * n;
        float* yt = dst + token[i] * n;
        const float wi = w[token[i] * k + order[i] / T];
        if (bias) for (int64_t j = 0; j < n; ++j) oi[j] += bias[e * n + j];
        for (int64_t j = 0; j < n; ++j) yt[j] += wi * oi[j];
      }
  }
}

// Backward glue.
// op 0: dO_i = w_i dy[t_i], dw (T, k) = 0 then dw[t_i, rank_i] = <dy[t_i], O_i>, db_e = sum_{i in e} dO_i
//       (n = output width; w_i as in the forward glue)
// op 1: dH_i *= [H_i > 0], db_e = sum_{i in e} dH_i                               (n = hidden width)
// op 2: dx = 0; dx[t_i] += dX_i                                                   (n = input width)
extern "C" void mpnn_moe_glue_backward(int op, int64_t T, int64_t M, int64_t E, const int64_t* starts, int64_t n,
                                       const int64_t* token, const int64_t* order, int64_t k, const float* w,
                                       const float* a, const float* b, float* out, float* dw, float* db) {
  if (op == 0) {
    std::memset(dw, 0, sizeof(float) * T * k);
    for (int64_t e = 0; e < E; ++e) {
      float* dbe = db + e * n;
      std::memset(dbe, 0, sizeof(float) * n);
      for (int64_t i = starts[e]; i < starts[e + 1]; ++i) {
        const float* g = a + token[i] * n;
        const float* o = b + i * n;
        float* d = out + i * n;
        const int64_t wi_at = token[i] * k + order[i] / T;
        const float wi = w[wi_at];
        float s = 0.f;
        for (int64_t j = 0; j < n; ++j) { d[j] = wi * g[j]; s += g[j] * o[j]; dbe[j] += d[j]; }
        dw[wi_at] = s;
      }
    }
  } else if (op == 1) {
    for (int64_t e = 0; e < E; ++e) {
      float* dbe = db + e * n;
      std::memset(dbe, 0, sizeof(float) * n);
      for (int64_t i = starts[e]; i < starts[e + 1]; ++i) {
        const float* h = a + i * n;
        float* d = out + i * n;
        for (int64_t j = 0; j < n; ++j) { d[j] = h[j] > 0.f ? d[j] : 0.f; dbe[j] += d[j]; }
      }
    }
  } else {
    std::memset(out, 0, sizeof(float) * T * n);
    for (int64_t i = 0; i < M; ++i) {
      const float* g = a + i * n;
      float* d = out + token[i] * n;
      for (int64_t j = 0; j < n; ++j) d[j] += g[j];
    }
  }
}
// Top-k routing of T tokens over E experts. sel (T, E) the scores to select by (the logits, or the logits
// plus Gumbel noise), logits (T, E) the clean scores. The k largest of sel (ties: lowest index) are
// ordered by clean score, best first (ties: lowest index); probs = softmax(logits);
// weights = softmax over the k chosen logits (normalize) or their probs (only then written).
extern "C" void mpnn_moe_route(int64_t T, int64_t E, int64_t k, int normalize, const float* sel, const float* logits,
                               int64_t* experts, float* weights, float* probs) {
  for (int64_t t = 0; t < T; ++t) {
    const float* s = sel + t * E;
    const float* l = logits + t * E;
    int64_t* ex = experts + t * k;
    for (int64_t j = 0; j < k; ++j) {            // j-th best of sel among those not yet taken
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e) {
        bool taken = false;
        for (int64_t q = 0; q < j; ++q) taken |= ex[q] == e;
        if (!taken && (best < 0 || s[e] > s[best])) best = e;
      }
      ex[j] = best;
    }
    for (int64_t j = 1; j < k; ++j)              // insertion sort by clean logit, stable on index
      for (int64_t q = j; q > 0; --q) {
        const int64_t a = ex[q - 1], b = ex[q];
        if (l[b] > l[a] || (l[b] == l[a] && b < a)) { ex[q - 1] = b; ex[q] = a; } else break;
      }
    float* w = weights + t * k;
    if (normalize) {
      const float mk = l[ex[0]];
      double zk = 0.0;
      for (int64_t j = 0; j < k; ++j) { w[j] = std::exp(l[ex[j]] - mk); zk += w[j]; }
      for (int64_t j = 0; j < k; ++j) w[j] = float(w[j] / zk);
    } else {                                     // probs: the softmax of all E logits
      float m = l[0];
      for (int64_t e = 1; e < E; ++e) m = l[e] > m ? l[e] : m;
      double z = 0.0;
      float* p = probs + t * E;
      for (int64_t e = 0; e < E; ++e) { p[e] = std::exp(l[e] - m); z += p[e]; }
      for (int64_t e = 0; e < E; ++e) p[e] = float(p[e] / z);
      for (int64_t j = 0; j < k; ++j) w[j] = p[ex[j]];
    }
  }
}

// d loss / d logits of the routing weights: normalize: w_j (g_j - sum_l w_l g_l) at the chosen experts;
// else [e chosen] w_e g_e - p_e sum_j w_j g_j.
extern "C" void mpnn_moe_route_backward(int64_t T, int64_t E, int64_t k, int normalize, const int64_t* experts,
                                        const float* weights, const float* probs, const float* grad, float* out) {
  std::memset(out, 0, sizeof(float) * T * E);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t* ex = experts + t * k;
    const float* w = weights + t * k;
    const float* g = grad + t * k;
    float* o = out + t * E;
    float dot = 0.f;
    for (int64_t j = 0; j < k; ++j) dot += w[j] * g[j];
    if (normalize) {
      for (int64_t j = 0; j < k; ++j) o[ex[j]] += w[j] * (g[j] - dot);
    } else {
      const float* p = probs + t * E;
      for (int64_t e = 0; e < E; ++e) o[e] = -p[e] * dot;
      for (int64_t j = 0; j < k; ++j) o[ex[j]] += w[j] * g[j];
    }
  }
}

// The dispatch plan of R problems of T tokens (N = R*T; routes (N, k) local expert ids < E), as
// plan_dispatch + sorted_assignments: global expert r*E + e; assignment a = rank * N + token in priority
// order; kept when its position among the earlier assignments to its expert is < cap (cap < 0:
// dropless). Sorted rows: by expert, then priority. Writes keep (k*N,), counts (R*E,) kept per expert,
// starts (R*E+1,), ends32 (R*E,), order (M,), token (M,), assignment (N, E) (1 where kept), dropped (R,)
// share of assignments dropped; returns M.
extern "C" int64_t mpnn_moe_plan(int64_t R, int64_t T, int64_t k, int64_t E, int64_t cap, const int64_t* routes,
                                 uint8_t* keep, int64_t* counts, int64_t* starts, int32_t* ends32,
                                 int64_t* order, int64_t* token, float* assignment, float* dropped) {
  const int64_t N = R * T, G = R * E;
  int64_t* load = new int64_t[G]();
  std::memset(counts, 0, sizeof(int64_t) * G);
  std::memset(assignment, 0, sizeof(float) * N * E);
  for (int64_t r = 0; r < R; ++r) dropped[r] = 0.f;
  for (int64_t a = 0; a < k * N; ++a) {
    const int64_t t = a % N, le = routes[t * k + a / N], e = (t / T) * E + le;
    const int64_t pos = load[e]++;
    keep[a] = cap < 0 || pos < cap;
    counts[e] += keep[a];
    if (keep[a]) assignment[t * E + le] = 1.f; else dropped[t / T] += 1.f;
  }
  for (int64_t r = 0; r < R; ++r) dropped[r] /= float(k * T);
  int64_t M = 0;
  for (int64_t e = 0; e < G; ++e) { starts[e] = M; load[e] = M; M += counts[e]; ends32[e] = int32_t(M); }
  starts[G] = M;
  for (int64_t a = 0; a < k * N; ++a) {
    if (!keep[a]) continue;
    const int64_t t = a % N, e = (t / T) * E + routes[t * k + a / N];
    order[load[e]] = a;
    token[load[e]++] = t;
  }
  delete[] load;
  return M;
}
"""

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


_MEMO: dict[str, tuple | None] = {}


def _memo(key: str, load):
    """``load()``'s kernels, looked up once; None while ``native.enabled()`` is False (checked every call)."""
    if not native.enabled():
        return None
    if key not in _MEMO:
        _MEMO[key] = load()
    return _MEMO[key]


def _kernels():
    """The GEMM and glue kernels, or None."""
    return _memo("mlp", _load_mlp)


def _load_mlp():
    gemm = native.load("moe", SOURCE, "mpnn_moe_gemm", [_I32, _I64, _P, _I64, _I64, _P, _P, _P, _I32, _P])
    glue = native.load("moe", SOURCE, "mpnn_moe_glue",
                       [_I32, _I64, _I64, _I64, _P, _I64, _P, _P, _I64, _P, _P, _P, _P])
    back = native.load("moe", SOURCE, "mpnn_moe_glue_backward",
                       [_I32, _I64, _I64, _I64, _P, _I64, _P, _P, _I64, _P, _P, _P, _P, _P, _P])
    return None if gemm is None or glue is None or back is None else (gemm, glue, back)


def usable(*tensors: torch.Tensor) -> bool:
    """Can the fused path serve these tensors (float32 on the CPU, a compiler, not disabled)?"""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)
            and _kernels() is not None and _routing_kernels() is not None)


def engine(rows: int, n_experts: int, d_in: int, d_hidden: int, d_out: int) -> str:
    """The GEMM engine for a layer: ``"native"`` at every size. Measured on this machine (one thread,
    ``python -m mpnn bench --only moe``), the register-blocked kernel reaches 165-200 GFLOP/s on
    8192 x 256 x 512 expert products against about 95 for ``grouped_mm`` (whose CPU kernel loops over
    ``torch.mm``), about 150 against 100 on a 1024^3 product, and wins on 16-row experts of 64 x 64
    too; ``"grouped"`` stays available for comparison."""
    return "native"


def _p(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _grouped_nn(a, w, starts, offs, how):
    """``C_e = A_e W_e`` for rows sorted by group: (M, K) x (E, K, N) -> (M, N)."""
    if how == "native":
        c = a.new_empty(a.shape[0], w.shape[-1])
        _kernels()[0](0, w.shape[0], _p(starts), w.shape[1], w.shape[2], _p(a), _p(w), None, 0, _p(c))
        return c
    return F.grouped_mm(a, w, offs=offs)


def _grouped_nt(a, w, starts, offs, how):
    """``C_e = A_e W_e^T`` for rows sorted by group: (M, N) x (E, K, N) -> (M, K)."""
    if how == "native":
        c = a.new_empty(a.shape[0], w.shape[1])
        _kernels()[0](2, w.shape[0], _p(starts), w.shape[2], w.shape[1], _p(a), _p(w), None, 0, _p(c))
        return c
    return F.grouped_mm(a, w.transpose(1, 2), offs=offs)


def _grouped_tn(a, b, starts, offs, n_groups, how):
    """``C_e = A_e^T B_e``: (M, K), (M, N) -> (E, K, N)."""
    if how == "native":
        c = a.new_empty(n_groups, a.shape[1], b.shape[1])
        _kernels()[0](1, n_groups, _p(starts), a.shape[1], b.shape[1], _p(a), _p(b), None, 0, _p(c))
        return c
    return F.grouped_mm(a.t(), b, offs=offs)


class _SortedExpertMLP(torch.autograd.Function):
    """See the module docstring. ``order`` (M,) assignment ids ``a = rank * T + token`` sorted by expert,
    ``token`` (M,) their tokens, ``weights`` (T, k) every assignment's combine weight, ``starts`` (E+1,)
    int64 group starts, ``ends`` (E,) int32 group ends."""

    @staticmethod
    def forward(ctx, x, order, token, weights, w1, b1, w2, b2, starts, ends, how):
        gemm, glue, _ = _kernels()
        T, d = x.shape
        M, k, E, h, o = token.shape[0], weights.shape[1], w1.shape[0], w1.shape[2], w2.shape[2]
        xs = x.new_empty(M, d)
        glue(0, T, M, E, _p(starts), d, _p(token), None, k, None, _p(x), None, _p(xs))
        if how == "native":
            hid = x.new_empty(M, h)
            gemm(0, E, _p(starts), d, h, _p(xs), _p(w1), _p(b1), 1, _p(hid))
            out = x.new_empty(M, o)
            gemm(0, E, _p(starts), h, o, _p(hid), _p(w2), _p(b2), 0, _p(out))
            bias2 = None
        else:
            hid = F.grouped_mm(xs, w1, offs=ends)
            glue(1, T, M, E, _p(starts), h, None, None, k, None, None, _p(b1), _p(hid))
            out = F.grouped_mm(hid, w2, offs=ends)
            bias2 = b2
        y = x.new_empty(T, o)
        glue(2, T, M, E, _p(starts), o, _p(token), _p(order), k, _p(weights), _p(out), _p(bias2), _p(y))
        ctx.save_for_backward(order, token, weights, w1, w2, xs, hid, out, starts, ends)
        ctx.how = how
        return y

    @staticmethod
    def backward(ctx, dy):
        order, token, weights, w1, w2, xs, hid, out, starts, ends = ctx.saved_tensors
        _, _, back = _kernels()
        how = ctx.how
        dy = dy.contiguous()
        T, k = weights.shape
        M, E, d, h, o = token.shape[0], w1.shape[0], w1.shape[1], w1.shape[2], w2.shape[2]
        need_x, _, _, need_w, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad[:8]
        dout, dweights, db2 = dy.new_empty(M, o), dy.new_empty(T, k), dy.new_empty(E, o)
        back(0, T, M, E, _p(starts), o, _p(token), _p(order), k, _p(weights), _p(dy), _p(out), _p(dout),
             _p(dweights), _p(db2))
        dhid = _grouped_nt(dout, w2, starts, ends, how)
        db1 = dy.new_empty(E, h)
        back(1, T, M, E, _p(starts), h, None, None, k, None, _p(hid), None, _p(dhid), None, _p(db1))
        dw2 = _grouped_tn(hid, dout, starts, ends, E, how) if need_w2 else None
        dw1 = _grouped_tn(xs, dhid, starts, ends, E, how) if need_w1 else None
        dx = None
        if need_x:
            dxs = _grouped_nt(dhid, w1, starts, ends, how)
            dx = dy.new_empty(T, d)
            back(2, T, M, E, _p(starts), d, _p(token), None, k, None, _p(dxs), None, _p(dx), None, None)
        return (dx, None, None, dweights if need_w else None, dw1, db1 if need_b1 else None, dw2,
                db2 if need_b2 else None, None, None, None)


@dataclass
class Plan:
    """A token-choice dispatch plan (see :func:`plan`)."""

    keep: torch.Tensor        # (k*N,) bool, assignment a = rank * N + token kept (within capacity)
    counts: torch.Tensor      # (R*E,) kept assignments per expert
    starts: torch.Tensor      # (R*E+1,) int64 first sorted row of each expert
    ends: torch.Tensor        # (R*E,) int32 end of each expert's rows (grouped_mm's offsets)
    order: torch.Tensor       # (M,) the kept assignments sorted by expert
    token: torch.Tensor       # (M,) their tokens
    assignment: torch.Tensor  # (N, E) 1.0 where token t was processed by its local expert e
    dropped: torch.Tensor     # (R,) share of each problem's assignments dropped


def plan(routes: torch.Tensor, n_problems: int, n_experts: int, cap: int | None) -> Plan:
    """The dispatch plan of ``n_problems`` problems of T tokens, ``routes`` (R*T, k) local expert ids
    < ``n_experts``, in one pass: the same keep/order/token/counts as
    :func:`~mpnn.moe.dispatch.plan_dispatch` + :func:`~mpnn.moe.dispatch.sorted_assignments` on the
    global ids ``r*E + e``. ``cap`` the buffer per expert, None: dropless."""
    routes = routes.contiguous()
    N, k = routes.shape
    G = n_problems * n_experts
    keep = torch.empty(k * N, dtype=torch.bool)
    counts, starts = torch.empty(G, dtype=torch.long), torch.empty(G + 1, dtype=torch.long)
    ends = torch.empty(G, dtype=torch.int32)
    order, token = torch.empty(k * N, dtype=torch.long), torch.empty(k * N, dtype=torch.long)
    assignment = torch.empty(N, n_experts, dtype=torch.float32)
    dropped = torch.empty(n_problems, dtype=torch.float32)
    M = _routing_kernels()[2](n_problems, N // n_problems, k, n_experts, -1 if cap is None else int(cap),
                              _p(routes), _p(keep), _p(counts), _p(starts), _p(ends), _p(order), _p(token),
                              _p(assignment), _p(dropped))
    return Plan(keep, counts, starts, ends, order[:M], token[:M], assignment, dropped)


def sorted_expert_mlp(x: torch.Tensor, weights: torch.Tensor, p: Plan, w1: torch.Tensor, b1: torch.Tensor,
                      w2: torch.Tensor, b2: torch.Tensor, how: str | None = None) -> torch.Tensor:
    """``y_t = sum_j keep_tj weights_tj f_{e_tj}(x_t)`` (T, d_out) for the kept assignments of plan ``p``.

    x (T, d_in) tokens, ``weights`` (T, k) combine weights; ``w1`` (E, d_in, h), ``b1`` (E, h), ``w2``
    (E, h, d_out), ``b2`` (E, d_out) with E the plan's global experts. Differentiable in x, weights and
    the four parameters. ``how``: ``"native"`` or ``"grouped"`` GEMMs (default :func:`engine`'s
    choice). Callers check :func:`usable` first.
    """
    E, d, h = w1.shape
    if x.shape[1] != d or weights.shape[0] != x.shape[0] or p.counts.numel() != E:
        raise ValueError(f"sorted_expert_mlp: x {tuple(x.shape)}, weights {tuple(weights.shape)} and a plan "
                         f"over {p.counts.numel()} experts do not fit w1 {tuple(w1.shape)}")
    how = how or engine(p.token.shape[0], E, d, h, w2.shape[2])
    if how not in ("native", "grouped"):
        raise ValueError(f"how must be 'native' or 'grouped', got {how!r}")
    if how == "grouped" and (d % 4 or h % 4 or w2.shape[2] % 4):
        how = "native"                        # grouped_mm needs 16-byte rows; the native GEMM does not
    return _SortedExpertMLP.apply(x.contiguous(), p.order, p.token, weights.contiguous(), w1.contiguous(),
                                  b1.contiguous(), w2.contiguous(), b2.contiguous(), p.starts, p.ends, how)

def _routing_kernels():
    """The routing and planning kernels, or None."""
    return _memo("routing", _load_routing)


def _load_routing():
    route = native.load("moe", SOURCE, "mpnn_moe_route", [_I64, _I64, _I64, _I32, _P, _P, _P, _P, _P])
    back = native.load("moe", SOURCE, "mpnn_moe_route_backward", [_I64, _I64, _I64, _I32, _P, _P, _P, _P, _P])
    plan = native.load("moe", SOURCE, "mpnn_moe_plan",
                       [_I64, _I64, _I64, _I64, _I64, _P, _P, _P, _P, _P, _P, _P, _P, _P], _I64)
    return None if route is None or back is None or plan is None else (route, back, plan)


class _TopKRoute(torch.autograd.Function):
    """Top-k routing of (T, E) scores in one pass: the chosen experts (T, k) and their differentiable
    combine weights (T, k), see ``mpnn_moe_route`` in :data:`SOURCE`."""

    @staticmethod
    def forward(ctx, logits, sel, k, normalize):
        T, E = logits.shape
        experts = torch.empty(T, k, dtype=torch.long)
        weights, probs = logits.new_empty(T, k), logits.new_empty(T, E)
        _routing_kernels()[0](T, E, k, int(normalize), _p(sel), _p(logits), _p(experts), _p(weights), _p(probs))
        ctx.save_for_backward(experts, weights, probs)
        ctx.normalize = normalize
        ctx.mark_non_differentiable(experts)
        return experts, weights

    @staticmethod
    def backward(ctx, _, grad):
        experts, weights, probs = ctx.saved_tensors
        T, E = probs.shape
        out = probs.new_empty(T, E)
        _routing_kernels()[1](T, E, experts.shape[1], int(ctx.normalize), _p(experts), _p(weights), _p(probs),
                              _p(grad.contiguous()), _p(out))
        return out, None, None, None


def routing_usable(logits: torch.Tensor) -> bool:
    """Can :func:`route_top_k` serve these scores (float32 on the CPU, a compiler)?"""
    return (logits.device.type == "cpu" and logits.dtype == torch.float32
            and _routing_kernels() is not None)


def route_top_k(logits: torch.Tensor, k: int, sel: torch.Tensor | None = None, *,
                normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The k experts of each token (T, k), best clean score first, and their combine weights (T, k):
    ``softmax`` over the k chosen logits (``normalize``) or their ``softmax(logits)`` probabilities.
    ``sel`` (T, E): the scores to select by (default the logits; the logits plus Gumbel noise in a
    Gumbel gate). Equals :func:`mpnn.moe.gates.route_top_k`'s experts and weights; ties are broken
    towards the lower expert index."""
    logits = logits.contiguous()
    sel = logits.detach() if sel is None else sel.detach().contiguous()
    return _TopKRoute.apply(logits, sel, int(k), bool(normalize))

