// moe.cpp: compiled at first use by mpnn.native (see mpnn/moe/fused.py).
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
